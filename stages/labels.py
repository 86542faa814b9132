"""labels: data/raw/<task>/ -> the canonical table data/interim/<task>/labels.csv (id,text,label,split,group).

Maps (DynaHate) or bins (MHS) the labels, checks every row (errors name file, row and column), splits
(task.split.strategy: upstream | auto | grouped | legacy_row_split; auto re-splits when the data lacks a split),
writes split.json (how it split) and metrics/data.json (rows and label counts per split, warnings). The table
and its counts are published together: a killed run never leaves new labels beside old counts.

A generation task (stophate) reads all its corpora instead (hatetune.corpora): one deduplicated post per line in
data/interim/<task>/posts.jsonl, split so that no text, CONAN pair or dialogue is in two splits.

    python -m stages.labels
    python -m stages.labels task=mhs task.split.strategy=legacy_row_split
"""
from __future__ import annotations

import sys

from hatetune import config, corpora, labels, paths, records
from hatetune.errors import exit_on_error
from hatetune.io import atomic_paths, write_json


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "labels", argv)
    task = cfg.task
    if task.kind == "generation":
        result = corpora.build_posts(task, paths.raw_dir(task.name), seed=cfg.seed)
        metrics = corpora.data_metrics(result, task)
        write_table = corpora.write_posts
    else:
        raw = records.read_raw_dir(paths.raw_dir(task.name), labels.required_columns(task))
        result = labels.canonical_table(raw, task, seed=cfg.seed)
        metrics = labels.data_metrics(result, task)
        write_table = labels.write_canonical
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with atomic_paths(paths.interim_dir(task.name), paths.DATA_METRICS) as (interim, metrics_file):
        write_table(result, interim)
        write_json(metrics_file, metrics)
    print(f"labels: {metrics['rows']} ({metrics['split_strategy']} split)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
