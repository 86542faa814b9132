"""functional_suite: fetch and check the functional test suite (eval.functional; HateCheck by default).

Enabled (eval.functional.enabled=true): the suite's file from eval.functional.source (HTTPS at a pinned commit,
sha256 checked; a Hub dataset at a pinned revision; a local file; offline, <mirror>/<source name>/) goes to
data/raw/functional/ with its manifest, and its cases, checked (one error line naming file, row and column), to
data/interim/functional/cases.jsonl with suite.json (cases and gold label per functionality). evaluate,
evaluate_zeroshot and baseline then score every case with their own decision rule; for a generation task
(stophate) every system of evaluate and evaluate_zeroshot answers the cases instead, a stop counting as hateful.
Disabled (the default): nothing is fetched or read; both folders hold only suite.json saying so, and the stages
after it skip the suite.

    python -m stages.functional_suite eval.functional.enabled=true download.mirror=../shared/mirror
"""
from __future__ import annotations

import sys

from hatetune import config, functional, paths, records, sources
from hatetune.errors import exit_on_error


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "functional_suite", argv)
    suite = cfg.eval.functional
    if not suite.enabled:
        functional.write_disabled(paths.FUNCTIONAL_RAW_DIR, paths.FUNCTIONAL_DIR)
        print("functional_suite: disabled (eval.functional.enabled=false): nothing fetched", file=sys.stderr)
        return 0
    mirror = sources.mirror_root(cfg.download.mirror)
    manifest = sources.fetch(suite.source, paths.FUNCTIONAL_RAW_DIR, mirror=mirror, retries=cfg.download.retries,
                             timeout_s=cfg.download.timeout_s)
    cases = functional.canonical_cases(records.read_raw_dir(paths.FUNCTIONAL_RAW_DIR, functional.COLUMNS))
    info = functional.summary(cases, suite.source)
    functional.write_suite(cases, {**info, "files": manifest["files"]}, paths.FUNCTIONAL_DIR)
    print(f"functional_suite: {suite.source.name}: {info['cases']} cases in {len(info['functionalities'])} "
          f"functionalities ({info['gold']['hateful']} hateful, {info['gold']['non-hateful']} non-hateful)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
