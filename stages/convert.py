"""convert: the canonical table -> Alpaca JSONL data/processed/<task>/{train,dev,test}.jsonl.

One {instruction, input, output, system, id} object per line, with the task's prompt text (task.prompt), plus
the task's breakdown columns (task.breakdowns: DynaHate's target, type, level, round) as extra keys that no
prompt reads, for per-group results. data.max_examples.<split> takes a seeded, label-stratified subsample of
that split (null = every row).

A generation task (stophate) writes, from data/interim/<task>/posts.jsonl (hatetune.targets): train and dev
candidate rows (output null: the replies stage resolves them per task.targets.mode, so nothing here depends on
the mode), balanced hate / not hate and capped by task.max_examples (null: data.max_examples); test.jsonl with
every test post and its evaluation set; judge_train.jsonl and judge_test.jsonl, the DynaHate posts of the judge's
TF-IDF fallback.

    python -m stages.convert
    python -m stages.convert data.max_examples.train=null
"""
from __future__ import annotations

import sys

from hatetune import breakdowns, config, corpora, labels, paths, prompts, targets
from hatetune.errors import exit_on_error
from hatetune.io import atomic_path, write_jsonl


def convert_generation(cfg) -> int:
    task, name = cfg.task, cfg.task.name
    posts = corpora.read_posts(paths.posts_file(name))
    caps = task.max_examples if task.max_examples is not None else cfg.data.max_examples
    out = paths.processed_dir(name)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split in ("train", "dev"):
            rows = targets.training_rows(posts, split, task, caps.get(split), seed=cfg.seed)
            write_jsonl(tmp / paths.split_file(name, split).name, rows)
            hateful = sum(r["label"] == "hate" for r in rows)
            print(f"convert: {split}: {len(rows)} rows ({hateful} hateful)", file=sys.stderr)
        n = write_jsonl(tmp / paths.split_file(name, "test").name, targets.test_rows(posts, task))
        print(f"convert: test: {n} posts", file=sys.stderr)
        for split in ("train", "dev", "test"):
            write_jsonl(tmp / paths.judge_data_file(name, split).name,
                        targets.judge_rows(posts, split, task.source.name))
    return 0


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "convert", argv)
    if cfg.task.kind == "generation":
        return convert_generation(cfg)
    source = paths.labels_csv(cfg.task.name)
    columns = cfg.task.breakdowns.columns
    table = breakdowns.decode(labels.read_canonical(source), columns, str(source))
    out = paths.processed_dir(cfg.task.name)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split in paths.SPLITS:
            part = labels.stratified_sample(table[table["split"] == split], cfg.data.max_examples.get(split),
                                            seed=cfg.seed)
            rows = prompts.alpaca_rows(part.to_dict("records"), cfg.task.prompt, extra_keys=list(columns))
            n = write_jsonl(tmp / paths.split_file(cfg.task.name, split).name, rows)
            print(f"convert: {split}: {n} of {int((table['split'] == split).sum())} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
