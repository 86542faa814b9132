"""download: fetch the task's dataset into data/raw/<task>/ with a manifest.json.

Sources (task.source.kind): an HTTPS file, a Hugging Face Hub dataset at a pinned revision (token from $HF_TOKEN,
never stored), or a local path. Offline: set download.mirror=<folder> or $HATETUNE_MIRROR and every source is read
from <folder>/<task.source.name>/. A pinned task.source.sha256 is checked against the file actually used, mirror
included (a mirror holding another file than the pinned one fails, saying so).
(Under DVC the `sources` stage records which of these this run uses; a switch reruns this stage.)

    python -m stages.download                    # as in params.yaml
    python -m stages.download task=mhs download.mirror=../shared/mirror
"""
from __future__ import annotations

import sys

from hatetune import config, paths, sources
from hatetune.errors import exit_on_error


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "download", argv)
    mirror = sources.mirror_root(cfg.download.mirror)
    raw_dir = paths.raw_dir(cfg.task.name)
    print(f"download: {cfg.task.source.name} ({cfg.task.source.kind}) -> {raw_dir}"
          + (f" from the mirror {mirror}" if mirror else ""), file=sys.stderr)
    manifest = sources.fetch(cfg.task.source, raw_dir, mirror=mirror, retries=cfg.download.retries,
                             timeout_s=cfg.download.timeout_s)
    for entry in manifest["files"]:
        print(f"  {entry['path']}: {entry['rows']} rows, {entry['bytes']} bytes, sha256 {entry['sha256']}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
