"""sources: resolve where this run's data and base model come from, cheaply, on every `dvc repro`.

An offline mirror ($HATETUNE_MIRROR or download.mirror) or the network decides which files are used, and DVC
cannot see an environment variable; so this stage always runs (`always_changed`) and writes what it found:
- data/raw/<task>.source.json: the mirror's files and their sha256 (checked against a pinned task.source.sha256),
  or the pinned URL / Hub revision;
- models/base/<model>.source.json: the mirror's GGUF and its sha256, the Hub commit, or the local folder;
- data/raw/functional.source.json: the same for the functional test suite (eval.functional) when it is enabled,
  else a record that it is not (so a mirror without the suite is no error while it is off).
download and base_model depend on these files: when the resolution changes (a switch between mirror and Hub,
an edited mirror file), they rerun, and so does everything after them; when it does not, nothing else does.
"""
from __future__ import annotations

import sys

from hatetune import config, model_sources, paths, sources
from hatetune.errors import exit_on_error
from hatetune.io import write_json


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "sources", argv)
    mirror = sources.mirror_root(cfg.download.mirror)
    data = sources.resolve(cfg.task.source, mirror)
    base = model_sources.resolve(cfg.model, mirror)
    suite = cfg.eval.functional
    suite_source = {"enabled": True, **sources.resolve(suite.source, mirror)} if suite.enabled else {"enabled": False}
    write_json(paths.data_source_file(cfg.task.name), data)
    write_json(paths.base_source_file(cfg.model.name), base)
    write_json(paths.FUNCTIONAL_SOURCE_FILE, suite_source)
    print(f"sources: data {sources.describe(data)}", file=sys.stderr)
    print(f"sources: base model {model_sources.describe(base)}", file=sys.stderr)
    if suite.enabled:
        print(f"sources: functional suite {sources.describe(suite_source)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
