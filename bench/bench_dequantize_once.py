"""4-bit layers computed through a kept dequantised weight (`hatetune.models.dequantize_once`) against
bitsandbytes' own CPU paths, in one process, threads pinned: training steps (its dequantise-at-every-call path:
gradients must be bitwise equal) and label scoring (its repacked inference kernel: labels may differ on near-ties,
the arithmetic differs). Needs a finished default run in this checkout (base model, processed data, adapter).

    python bench/bench_dequantize_once.py [--threads 2] [--rounds 2] [--rows 200] [--out bench/results_dequantize_once.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=200, help="test rows scored per leg")
    parser.add_argument("--out", default="bench/results_dequantize_once.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hatetune import config, evaluation, labeling, models, paths, training
    from hatetune.io import read_jsonl
    from hatetune.sft_data import PackedPrefixCollator, completion_loss, encode_rows

    cfg = config.load()
    task, base = cfg.task.name, paths.base_model_dir(cfg.model.name)
    adapter = paths.adapter_dir(task)

    # training: 8 batches of 8 rows spread over the length range, as group_by_length forms them
    tokenizer = models.load_tokenizer(base, cfg.model, padding_side="right")
    examples, _ = encode_rows(read_jsonl(paths.processed_dir(task) / "train.jsonl"), cfg.task.prompt, tokenizer,
                              cfg.train.cutoff_len, cfg.train.loss_on)
    examples.sort(key=lambda e: len(e["input_ids"]))
    collate = PackedPrefixCollator(tokenizer.pad_token_id)
    starts = [int(q * (len(examples) - 8)) for q in (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)]
    batches = [collate(examples[s:s + 8]) for s in starts]

    def trainable(once: bool):
        cfg.model.quantization.cpu_dequantize_once = once
        return training.attach_lora(models.load_model(cfg.model, base, quantize=True, trainable=True), cfg)

    def steps(model):
        grads, start = [], time.perf_counter()
        for batch in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(**{k: v for k, v in batch.items() if k != "labels"})
            completion_loss(out, batch["labels"]).backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
            model.zero_grad()
        return time.perf_counter() - start, grads

    own, once = trainable(False), trainable(True)
    train_legs = {"bitsandbytes": [], "dequantize_once": []}
    bitwise = True
    for _ in range(args.rounds):
        t_own, g_own = steps(own)
        t_once, g_once = steps(once)
        train_legs["bitsandbytes"].append(round(t_own, 2))
        train_legs["dequantize_once"].append(round(t_once, 2))
        bitwise &= all(torch.equal(a, b) for x, y in zip(g_own, g_once) for a, b in zip(x, y))
    del own, once

    # label scoring of test rows with the run's adapter, in eval mode
    labels = labeling.labels_of(cfg)
    rows, _ = evaluation.load_rows(paths.split_file(task, "test"), labels)
    rows = rows[:args.rows]
    eval_tokenizer = models.load_tokenizer(adapter, cfg.model, padding_side="left")
    score_legs, predicted = {"bitsandbytes_repacked": [], "dequantize_once": []}, {}
    for leg, flag in (("bitsandbytes_repacked", False), ("dequantize_once", True)):
        cfg.model.quantization.cpu_dequantize_once = flag
        model = models.load_model(cfg.model, base, quantize=True, adapter_dir=adapter)
        for _ in range(args.rounds):
            start = time.perf_counter()
            run = labeling.classify_rows(model, eval_tokenizer, rows, cfg)
            score_legs[leg].append(round(time.perf_counter() - start, 2))
        predicted[leg] = run["predicted"]
        del model
    agreement = sum(a == b for a, b in zip(*predicted.values())) / len(rows)

    def speedup(legs: dict, baseline: str) -> float:  # best of the rounds, each leg against the baseline leg
        return round(min(legs[baseline]) / min(legs["dequantize_once"]), 3)

    result = {
        "command": "python bench/bench_dequantize_once.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(), "threads": args.threads, "rounds": args.rounds,
        "train_steps": len(batches), "train_seconds": train_legs, "train_grads_bitwise_equal": bitwise,
        "train_speedup": speedup(train_legs, "bitsandbytes"),
        "scored_rows": len(rows), "score_seconds": score_legs,
        "score_speedup": speedup(score_legs, "bitsandbytes_repacked"),
        "label_agreement_with_repacked_kernel": round(agreement, 4),
        "peak_rss_mb_whole_script": round(training.peak_rss_mb()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
