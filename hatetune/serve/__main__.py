"""python -m hatetune.serve [key=value ...]: serve what the pipeline trained (README: Serving).

Reads params.yaml plus `key=value` overrides, like the stages: serve.* (address, backend, adapter, limits, request
log), and the evaluate stage's settings the labels depend on (task, model, eval.*, train.cutoff_len). In score mode
the label goes through the decision rule evaluate fitted on dev (metrics/eval/calibration.json, or serve.calibration).
Examples:
  python -m hatetune.serve                                    # 127.0.0.1:5000, base + the trained adapter
  python -m hatetune.serve serve.adapter=null serve.port=5001 # the base model alone
  python -m hatetune.serve serve.backend=ollama eval.mode=greedy eval.calibration.method=none
                                                              # the export, served by Ollama (greedy only)
"""
from __future__ import annotations

import argparse
import sys

from .. import config
from ..errors import exit_on_error


@exit_on_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hatetune.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides on top of params.yaml")
    parser.add_argument("--params", default=config.PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = config.load(args.overrides, args.params)
    from .server import build_service, serve_forever

    serve_forever(build_service(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
