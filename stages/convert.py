"""convert: the canonical table -> Alpaca JSONL data/processed/<task>/{train,dev,test}.jsonl.

One {instruction, input, output, system, id} object per line, with the task's prompt text (task.prompt), plus
the task's breakdown columns (task.breakdowns: DynaHate's target, type, level, round) as extra keys that no
prompt reads, for per-group results. data.max_examples.<split> takes a seeded, label-stratified subsample of
that split (null = every row).

    python -m stages.convert
    python -m stages.convert data.max_examples.train=null
"""
from __future__ import annotations

import sys

from hatetune import breakdowns, config, labels, paths, prompts
from hatetune.errors import exit_on_error
from hatetune.io import atomic_path, write_jsonl


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "convert", argv)
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
