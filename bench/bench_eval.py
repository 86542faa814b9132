"""Evaluation speed on SmolLM2-135M (CPU, 4-bit + LoRA adapter): the evaluate stage vs seed B's method, vs one
prompt at a time, and vs the floor (one plain batched forward pass over the same prompts).

Same model, same 512 DynaHate rows, one process, pinned threads; the model is loaded once and warmed up, and
every figure is a ratio within this one run (absolute numbers on a shared 2-core box swing 10x):
  - stage greedy (length-sorted batches of eval.batch_size, shared-prefix KV cache, stop at EOS) vs seed B's
    method (plain `generate` on unsorted batches of 8, 4 new tokens); predictions compared at equal batch size;
  - stage greedy and score modes (full label log-likelihood, and the first-token shortcut) vs one prompt at a
    time (batch 1, plain `generate` / one prompt pass + one label pass);
  - stage wall time / floor, where floor = one batched forward pass over the full prompts (length-sorted
    batches, last position's logits only).

Model: models/base/<model> (the base_model stage) and models/adapter/<task> (the train stage) when present;
otherwise --base (a HF folder) and a freshly initialised LoRA adapter (B = 0, so it behaves like the base model
but costs what an adapter costs), which the output says.
Usage: python bench/bench_eval.py [--threads 2] [--rows 512] [--out bench/results_eval.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def dynahate_rows(cfg, n: int) -> list[dict]:
    """The first n rows of the offline mirror's DynaHate file as Alpaca rows with the task's prompt."""
    from hatetune.prompts import alpaca_row

    mirror = Path(os.environ.get("HATETUNE_MIRROR") or ROOT.parent / "shared" / "mirror")
    path = next((mirror / "dynahate").glob("*.csv"))
    p = cfg.task.prompt
    with open(path, encoding="utf-8", newline="") as f:
        rows = [alpaca_row(p.instruction, r["text"], cfg.task.labels.map[r["label"]], p.system, r["acl.id"])
                for r in csv.DictReader(f)]
    return rows[:n]


def load(cfg, base_arg: str | None, adapter_arg: str | None):
    from hatetune import models, paths, training

    base = ROOT / paths.base_model_dir(cfg.model.name)
    if not base.exists():
        if not base_arg:
            sys.exit(f"{base} missing: run `dvc repro base_model` or pass --base <HF folder>")
        base = Path(base_arg)
    adapter = Path(adapter_arg) if adapter_arg else ROOT / paths.adapter_dir(cfg.task.name)
    note = f"trained adapter {adapter}"
    if not (adapter / "adapter_config.json").is_file():
        from peft import get_peft_model

        fresh = get_peft_model(models.load_model(cfg.model, base), training.lora_config(cfg))
        adapter = Path(tempfile.mkdtemp(prefix="bench-adapter-"))
        fresh.save_pretrained(adapter)
        note = "freshly initialised adapter (B = 0: base-model outputs, adapter costs)"
    return (models.load_tokenizer(base, cfg.model, padding_side="left"),
            models.load_model(cfg.model, base, adapter_dir=adapter), note)


def seed_b_generate(model, tokenizer, texts, batch_size: int, max_new_tokens: int) -> tuple[list[str], float]:
    """Seed B's evaluation loop: unsorted batches, tokenizer padding (left, pad = eos), plain greedy generate."""
    import torch

    start = time.perf_counter()
    outputs = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
            outputs += [t.strip() for t in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)]
    return outputs, time.perf_counter() - start


def one_at_a_time_score(model, tokenizer, prompt_ids, continuations) -> float:
    """Score mode without batching or prefix cache: one prompt (and its label continuations) at a time."""
    from hatetune import inference

    start = time.perf_counter()
    for ids in prompt_ids:
        inference.run(model, tokenizer, [ids], continuations, batch_size=1, prefix_cache=False, progress=False)
    return time.perf_counter() - start


def forward_only_seconds(model, tokenizer, prompt_ids, batch_size: int) -> float:
    """The floor: one plain batched forward pass over the full prompts (length-sorted batches, no cache, last
    position's logits only), what any evaluation that reads every prompt token once must pay."""
    import torch

    from hatetune import inference

    start = time.perf_counter()
    with torch.inference_mode():
        for batch in inference.length_sorted_batches([len(p) for p in prompt_ids], batch_size):
            input_ids, attention_mask, position_ids = inference.pad_left([prompt_ids[i] for i in batch],
                                                                         tokenizer.pad_token_id)
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                  logits_to_keep=inference.last_positions())
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--base", default=None, help="HF base model folder when models/base/<model> is missing")
    ap.add_argument("--adapter", default=None, help="a trained adapter folder (default: models/adapter/<task>)")
    ap.add_argument("--skip-single", action="store_true", help="skip the slow one-prompt-at-a-time runs")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_eval.json"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from hatetune import config, inference, parsing
    from hatetune.prompts import build_prompt

    cfg = config.load([], ROOT / "params.yaml")
    rows = dynahate_rows(cfg, args.rows)
    tokenizer, model, note = load(cfg, args.base, args.adapter)
    labels = list(cfg.task.labels.names)
    parse = parsing.get_parser(cfg.task.parser, labels)
    prompt_ids, _ = inference.encode_prompts(rows, cfg.task.prompt, tokenizer, cfg.train.cutoff_len, 3, labels[0])
    conts = inference.label_continuations(labels, rows[0], cfg.task.prompt, tokenizer)
    texts = [build_prompt(r, cfg.task.prompt, tokenizer) for r in rows]
    bs, new = cfg.eval.batch_size, cfg.eval.max_new_tokens
    prefix = inference.shared_prefix_length(prompt_ids)
    tokens = sum(map(len, prompt_ids))
    print(f"{len(rows)} rows, {tokens} prompt tokens ({prefix} shared by all), {args.threads} threads, {note}",
          flush=True)

    inference.run(model, tokenizer, prompt_ids[:16], conts, 4, 16, progress=False)  # warm-up, not timed
    seed_b_generate(model, tokenizer, texts[:8], 8, new)
    t = {}
    t["floor"] = forward_only_seconds(model, tokenizer, prompt_ids, bs)

    def stage(mode: str, batch_size: int = bs, **kw) -> dict:
        """What the evaluate stage runs for a split, timed from rows to parsed labels (tokenizing included)."""
        start = time.perf_counter()
        out = inference.classify(model, tokenizer, rows, cfg.task.prompt, labels, parse, mode=mode,
                                 max_new_tokens=new, batch_size=batch_size, cutoff_len=cfg.train.cutoff_len,
                                 progress=False, **kw)
        return {**out, "wall": time.perf_counter() - start}

    greedy = stage("greedy", agreement=False)
    t["stage_greedy"] = greedy["wall"]
    both = stage("greedy")  # greedy + full label scoring from the same prompt pass (the default)
    t["stage_greedy_and_score"] = both["wall"]
    score = stage("score", agreement=False)
    t["stage_score_full"] = score["wall"]
    t["stage_score_first_token"] = stage("score", agreement=False, score_method="first_token")["wall"]
    # label log-likelihood margins (bf16: a margin of 0 is an exact tie), to explain any flipped prediction
    margins = [abs(a - b) for a, b in both["log_probs"]]
    seed_b, t["seed_b"] = seed_b_generate(model, tokenizer, texts, 8, new)
    greedy8 = stage("greedy", 8, agreement=False)
    t["stage_greedy_bs8"] = greedy8["wall"]
    greedy8_nocache = stage("greedy", 8, agreement=False, prefix_cache=False)
    t["stage_greedy_bs8_no_prefix_cache"] = greedy8_nocache["wall"]
    # the stage's code on seed B's exact batches (unsorted, no cache): the same computation, so the same text
    same_batches = inference.run(model, tokenizer, prompt_ids, max_new_tokens=new, batch_size=8, sort=False,
                                 prefix_cache=False, progress=False)
    t["stage_code_on_seed_b_batches"] = same_batches.seconds
    if not args.skip_single:
        _, t["one_at_a_time_greedy"] = seed_b_generate(model, tokenizer, texts, 1, new)
        t["one_at_a_time_score"] = one_at_a_time_score(model, tokenizer, prompt_ids, conts)

    def same(a, b):
        return sum(x == y for x, y in zip(a, b))

    parsed = lambda outs: [parse(o) for o in outs]  # noqa: E731
    result = {
        "rows": len(rows), "threads": args.threads, "adapter": note, "batch_size": bs, "max_new_tokens": new,
        "prompt_tokens": tokens, "shared_prefix_tokens": prefix,
        "seconds": {k: round(v, 2) for k, v in t.items()},
        "speedup_stage_greedy_vs_seed_b": round(t["seed_b"] / t["stage_greedy"], 2),
        "speedup_stage_greedy_bs8_vs_seed_b": round(t["seed_b"] / t["stage_greedy_bs8"], 2),
        "stage_score_over_floor": round(t["stage_score_full"] / t["floor"], 3),
        "stage_greedy_over_floor": round(t["stage_greedy"] / t["floor"], 3),
        "identical_predictions_bs8_vs_seed_b": {
            "same_batches_text": same(same_batches.texts, seed_b),
            "no_prefix_cache_labels": same(greedy8_nocache["predicted"], parsed(seed_b)),
            "no_prefix_cache_text": same(greedy8_nocache["outputs"], seed_b),
            "prefix_cache_labels": same(greedy8["predicted"], parsed(seed_b)),
            "prefix_cache_text": same(greedy8["outputs"], seed_b), "of": len(rows)},
        "flipped_rows_max_margin": max([margins[i] for i in range(len(rows))
                                        if greedy8["predicted"][i] != parse(seed_b[i])], default=None),
        "rows_with_margin_at_most_0_25": sum(m <= 0.25 for m in margins),
        "stage_greedy_bs16_vs_bs8_labels_identical": same(greedy["predicted"], greedy8["predicted"]),
        "greedy_score_agreement": round(same(greedy["predicted"], score["predicted"]) / len(rows), 4),
        "score_full_vs_first_token_labels_identical": same(both["full_labels"], both["first_token_labels"]),
        "greedy_invalid": sum(p == parsing.INVALID for p in greedy["predicted"]),
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if not args.skip_single:
        result["speedup_stage_greedy_vs_one_at_a_time"] = round(t["one_at_a_time_greedy"] / t["stage_greedy"], 2)
        result["speedup_stage_score_vs_one_at_a_time"] = round(t["one_at_a_time_score"] / t["stage_score_full"], 2)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
