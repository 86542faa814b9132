"""hatetune's trainer on the LLaMA-Factory speed anchor's work (../shared/bench/lf-anchor): the same 512 DynaHate
rows, model, LoRA (r 8 / alpha 16 / dropout, all linear layers), 4-bit nf4 + double quant, bf16, batch 8, one
epoch (64 steps), lr 2e-5 cosine with 10% warmup, no evaluation and no mid-run checkpoint. Called by
bench/bench_lf_anchor.sh as the anchor's OTHER_CMD; writes <out>/metrics.json with `train_runtime` (the training
loop, as the anchor reads it) and hatetune's own train metrics.

    python bench/lf_anchor_trainer.py --model $MODEL_DIR --data $DATA_DIR/dynahate512.json --out $OTHER_OUT \
        [--gc] [--packing shared_prefix|none] [--dropout 0.05]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face folder (the anchor's converted SmolLM2)")
    ap.add_argument("--data", required=True, help="the anchor's Alpaca JSON list (dynahate512.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing (LLaMA-Factory's default)")
    ap.add_argument("--packing", default="shared_prefix", choices=["shared_prefix", "none"])
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=None, help="for a smoke test (the anchor's LF_ARGS=max_steps=N)")
    args = ap.parse_args()

    from hatetune import config, training
    from hatetune.io import write_json, write_jsonl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="lf-anchor-data-"))
    write_jsonl(data / "train.jsonl", json.loads(Path(args.data).read_text(encoding="utf-8")))  # no dev: no eval
    cfg = config.load([f"model.path={args.model}", "model.chat_template=null", "lora.r=8", "lora.alpha=16",
                       f"lora.dropout={args.dropout}", "lora.target_modules=all-linear", "train.batch_size=8",
                       "train.grad_accum=1", "train.lr=2e-5", "train.scheduler=cosine", "train.warmup_ratio=0.1",
                       "train.warmup_steps=0", "train.epochs=1", f"train.max_steps={args.max_steps or 'null'}", "train.cutoff_len=1024",
                       "train.precision=bf16", f"train.gradient_checkpointing={args.gc}", "train.logging_steps=8",
                       "train.save_steps=100000", f"train.packing={args.packing}", "train.resume=false", "seed=42"],
                      ROOT / "params.yaml")
    metrics = training.train(cfg, args.model, data, out / "adapter", out / "ckpt")
    write_json(out / "metrics.json", {
        "train_runtime": metrics["train_runtime_s"], "train_loss": metrics["train_loss"],
        "train_samples_per_second": metrics["examples_per_s"], "num_input_tokens_seen": metrics["non_padding_tokens"],
        "effective_tokens_per_sec": metrics["non_padding_tokens_per_s"], "hatetune": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())
