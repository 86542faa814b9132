"""The base_model stage's GGUF conversion with and without `hatetune.gguf_reading.fast_gguf_reading`, in one
process, threads pinned: wall time of each leg and whether the two Hugging Face folders are byte-identical.
Needs the offline mirror's SmolLM2 GGUF ($HATETUNE_MIRROR or ../shared/mirror).

    python bench/bench_gguf_reading.py [--rounds 2] [--out bench/results_gguf_reading.json]
"""
from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_gguf_reading.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hatetune import config, model_sources

    mirror = Path(os.environ.get("HATETUNE_MIRROR") or ROOT.parent / "shared" / "mirror")
    cfg = config.load()
    gguf_path = mirror / cfg.model.mirror_name / cfg.model.gguf_file
    if not gguf_path.is_file():
        print(f"skipped: no {gguf_path}")
        return 0
    model_sources.convert_gguf(gguf_path, Path(tempfile.mkdtemp()) / "warm-up")  # imports, page cache
    fast_reading = model_sources.fast_gguf_reading
    seconds = {"fast_gguf_reading": [], "transformers_reading": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for leg, reading in (("transformers_reading", contextlib.nullcontext), ("fast_gguf_reading", fast_reading)):
                model_sources.fast_gguf_reading = reading
                start = time.perf_counter()
                model_sources.convert_gguf(gguf_path, Path(tmp) / f"{leg}{r}")
                seconds[leg].append(round(time.perf_counter() - start, 2))
        model_sources.fast_gguf_reading = fast_reading
        identical = same_tree(Path(tmp) / "fast_gguf_reading0", Path(tmp) / "transformers_reading0")
    result = {"command": "python bench/bench_gguf_reading.py " + " ".join(sys.argv[1:]), "threads": args.threads,
              "gguf": gguf_path.name, "convert_seconds": seconds, "folders_byte_identical": identical,
              "speedup": round(min(seconds["transformers_reading"]) / min(seconds["fast_gguf_reading"]), 3)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
