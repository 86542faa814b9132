"""replies: a generation task's training rows, with the base model's own replies where the mode asks for them.

Stop-Hate (hatetune.targets) in mode stop_when_hateful or counter_speech trains the model to answer a non-hateful
post as the base model itself would: this stage answers each such train / dev row once with the base model (4-bit
as in training, the training prompt, greedy, at most task.targets.distill_max_new_tokens new tokens; a reply the
cap cut ends after its last full sentence), then resolves every row's output for task.targets.mode (the stop
message, the CONAN counter-narrative, or the reply). DVC caches the result: LoRA or training settings never
regenerate it, and the convert stage's rows (and so the base systems' evaluation) do not depend on the mode.

Writes data/replies/<task>/: train.jsonl and dev.jsonl (what the train stage trains on), replies.jsonl ({id,
reply, finished, raw}) and info.json (what was run, rows kept and dropped per target). A classification task
trains on data/processed/<task>/ and needs none of this: info.json says so. Energy: metrics/carbon/replies.json.
"""
from __future__ import annotations

import sys

from hatetune import carbon, config, generation, models, paths, targets
from hatetune.errors import exit_on_error
from hatetune.io import atomic_path, read_jsonl, write_json, write_jsonl


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "replies", argv)
    task = cfg.task
    out = paths.replies_dir(task.name)
    with carbon.track_emissions("replies", cfg.carbon.country_iso_code, paths.carbon_file("replies")):
        if task.kind != "generation":
            with atomic_path(out) as tmp:
                tmp.mkdir()
                write_json(tmp / "info.json", {"applicable": False, "reason": f"task {task.name} is a "
                                               "classification task: it trains on the convert stage's rows"})
            print(f"replies: not applicable ({task.name} is a classification task)", file=sys.stderr)
            return 0
        t = task.targets
        splits = {split: read_jsonl(paths.split_file(task.name, split)) for split in ("train", "dev")}
        asking = [row for rows in splits.values() for row in rows if targets.needs_reply(row, t.mode)]
        records, info = [], {"applicable": True, "mode": t.mode, "self_distilled": len(asking)}
        if asking:
            base_dir = paths.base_model_dir(cfg.model.name)
            tokenizer = models.load_tokenizer(base_dir, cfg.model, padding_side="left")
            model = models.load_model(cfg.model, base_dir, quantize=True)
            texts, finished, _ = generation.generate(
                model, tokenizer, asking, task.prompt, system=task.prompt.system or "",
                max_new_tokens=t.distill_max_new_tokens, cutoff_len=cfg.train.cutoff_len,
                batch_size=cfg.eval.batch_size, prefix_cache=cfg.eval.prefix_cache, desc="self-distilled replies")
            records = [{"id": row["id"], "reply": targets.trim_reply(text, done), "finished": done, "raw": text}
                       for row, text, done in zip(asking, texts, finished)]
            info.update({"base_model": str(base_dir), "decoding": "greedy", "max_new_tokens": t.distill_max_new_tokens,
                         "unfinished": sum(not done for done in finished)})
    replies = {r["id"]: r["reply"] for r in records}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, rows in splits.items():
            resolved, counts = targets.resolve(rows, t.mode, task.stop_message, replies)
            write_jsonl(tmp / paths.split_file(task.name, split).name, resolved)
            info[split] = counts
            print(f"replies: {split}: {len(resolved)} training rows {counts}", file=sys.stderr)
        write_jsonl(tmp / paths.REPLIES_FILE, records)
        write_json(tmp / "info.json", info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
