"""labels: data/raw/<task>/ -> the canonical table data/interim/<task>/labels.csv (id,text,label,split,group).

Maps (DynaHate) or bins (MHS) the labels, checks every row (errors name file, row and column), splits
(task.split.strategy: upstream | auto | grouped | legacy_row_split; auto re-splits when the data lacks a split),
writes split.json (how it split) and metrics/data.json (rows and label counts per split, warnings). The table
and its counts are published together: a killed run never leaves new labels beside old counts.

    python -m stages.labels
    python -m stages.labels task=mhs task.split.strategy=legacy_row_split
"""
from __future__ import annotations

import sys

from hatetune import config, labels, paths, records
from hatetune.errors import exit_on_error
from hatetune.io import atomic_paths, write_json


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "labels", argv)
    task = cfg.task
    raw = records.read_raw_dir(paths.raw_dir(task.name), labels.required_columns(task))
    result = labels.canonical_table(raw, task, seed=cfg.seed)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = labels.data_metrics(result, task)
    with atomic_paths(paths.interim_dir(task.name), paths.DATA_METRICS) as (interim, metrics_file):
        labels.write_canonical(result, interim)
        write_json(metrics_file, metrics)
    print(f"labels: {metrics['rows']} ({metrics['split_strategy']} split)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
