"""Training throughput and memory on SmolLM2-135M (CPU): batching strategies, and 4-bit vs bf16 LoRA.

Every configuration trains on the SAME examples (one pass over the first --examples training rows in batches
of train.batch_size, so every mode does the same number of steps) with pinned threads. Reported as ratios:
absolute speed on a shared 2-core machine swings 10x with other load.

- Throughput: ONE process, one 4-bit QLoRA model (the default recipe); the three batching modes take turns
  step by step (length-grouped dynamic padding, plain dynamic padding, padding to train.cutoff_len), so
  whatever else runs on the machine slows all three alike. Non-padding tokens/s per mode.
- Memory: one process per precision (peak RSS is per process), 4-bit QLoRA vs bf16 LoRA, same grouped batches:
  the weights as stored, RSS after loading, and peak RSS.

Needs the outputs of `dvc repro base_model convert` (models/base/<model>, data/processed/<task>).
Usage: python bench/bench_train.py [--examples 256] [--threads 2] [--out bench/results_train.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCHING = {"grouped": ("group_by_length", False), "dynamic": ("random", False), "cutoff": ("random", True)}


def _setup(threads: int, examples: int):
    import torch

    from hatetune import config, models, paths, sft_data
    from hatetune.io import read_jsonl

    torch.set_num_threads(threads)
    cfg = config.load([], ROOT / "params.yaml")
    base = ROOT / paths.base_model_dir(cfg.model.name)
    tok = models.load_tokenizer(base, cfg.model, padding_side="right")
    rows = read_jsonl(ROOT / paths.split_file(cfg.task.name, "train"))[:examples]
    encoded, _ = sft_data.encode_rows(rows, cfg.task.prompt, tok, cfg.train.cutoff_len, cfg.train.loss_on)
    return cfg, base, tok, encoded


def _batches(cfg, tok, encoded, mode: str) -> list[dict]:
    """The batches of one pass over `encoded`, ordered and padded as `mode` does."""
    import torch
    from torch.utils.data import RandomSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from hatetune import sft_data

    sampler, pad_to_cutoff = BATCHING[mode]
    bs = cfg.train.batch_size
    generator = torch.Generator().manual_seed(cfg.seed)
    if sampler == "group_by_length":  # as the Trainer's train_sampling_strategy="group_by_length"
        order = list(LengthGroupedSampler(bs, lengths=[len(e["input_ids"]) for e in encoded], generator=generator))
    else:
        order = list(RandomSampler(encoded, generator=generator))
    collate = sft_data.PaddingCollator(tok.pad_token_id, pad_to=cfg.train.cutoff_len if pad_to_cutoff else None)
    return [collate([encoded[i] for i in order[s:s + bs]]) for s in range(0, len(order), bs)]


def _model_and_step(cfg, base, four_bit: bool):
    import torch

    from hatetune import models, sft_data, training

    model = training.attach_lora(models.load_model(cfg.model, base, quantize=four_bit, trainable=True,
                                                   dtype="bfloat16"), cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)

    def step(batch: dict) -> None:  # what the Trainer does per step (bf16 autocast, trimmed logits)
        batch = dict(batch)
        labels, keep = batch.pop("labels"), batch.pop("logits_to_keep", 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sft_data.completion_loss(model(**batch, logits_to_keep=keep), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, step


def throughput(examples: int, threads: int) -> dict:
    cfg, base, tok, encoded = _setup(threads, examples)
    batches = {mode: _batches(cfg, tok, encoded, mode) for mode in BATCHING}
    _, step = _model_and_step(cfg, base, four_bit=True)
    step(batches["grouped"][0])  # warm-up (allocator, kernels), not timed
    seconds = dict.fromkeys(BATCHING, 0.0)
    for i in range(len(batches["grouped"])):
        for mode in BATCHING:  # take turns, so background load hits every mode alike
            started = time.perf_counter()
            step(batches[mode][i])
            seconds[mode] += time.perf_counter() - started
    result = {}
    for mode, mode_batches in batches.items():
        tokens = sum(int(b["attention_mask"].sum()) for b in mode_batches)
        padded = sum(b["attention_mask"].numel() for b in mode_batches)
        result[mode] = {"steps": len(mode_batches), "seconds": round(seconds[mode], 1), "non_padding_tokens": tokens,
                        "padded_tokens": padded, "non_padding_share": round(tokens / padded, 3),
                        "non_padding_tokens_per_s": round(tokens / seconds[mode], 1)}
    return result


def memory(examples: int, threads: int, four_bit: bool) -> dict:
    from hatetune import training

    cfg, base, tok, encoded = _setup(threads, examples)
    batches = _batches(cfg, tok, encoded, "grouped")
    model, step = _model_and_step(cfg, base, four_bit)
    after_load = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    weights = model.get_base_model().get_memory_footprint() / 2**20  # parameters + buffers, as stored
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return {"weights_mb": round(weights, 1), "rss_after_load_mb": round(after_load, 1),
            "peak_rss_mb": training.peak_rss_mb(),
            "seconds": round(time.perf_counter() - started, 1)}


def _run_worker(kind: str, args, env) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--examples", str(args.examples),
                           "--threads", str(args.threads)], env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_train.json"))
    parser.add_argument("--worker", choices=["throughput", "memory_4bit", "memory_bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "throughput":
        print(json.dumps(throughput(args.examples, args.threads)))
        return 0
    if args.worker:
        print(json.dumps(memory(args.examples, args.threads, four_bit=args.worker == "memory_4bit")))
        return 0

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    results = {"throughput": _run_worker("throughput", args, env)}
    print(json.dumps(results["throughput"]), flush=True)
    results["memory_4bit"] = _run_worker("memory_4bit", args, env)
    results["memory_bf16"] = _run_worker("memory_bf16", args, env)
    tps = {mode: r["non_padding_tokens_per_s"] for mode, r in results["throughput"].items()}
    summary = {
        "settings": {"examples": args.examples, "threads": args.threads},
        "results": results,
        "tokens_per_s_grouped_vs_dynamic": round(tps["grouped"] / tps["dynamic"], 2),
        "tokens_per_s_grouped_vs_cutoff": round(tps["grouped"] / tps["cutoff"], 2),
        "tokens_per_s_dynamic_vs_cutoff": round(tps["dynamic"] / tps["cutoff"], 2),
        "peak_rss_4bit_vs_bf16": round(results["memory_4bit"]["peak_rss_mb"] / results["memory_bf16"]["peak_rss_mb"], 2),
        "weights_4bit_vs_bf16": round(results["memory_4bit"]["weights_mb"] / results["memory_bf16"]["weights_mb"], 2),
        "rss_after_load_4bit_vs_bf16": round(results["memory_4bit"]["rss_after_load_mb"] /
                                             results["memory_bf16"]["rss_after_load_mb"], 2),
    }
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
