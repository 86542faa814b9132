"""Train / dev / test splits of the canonical table, and what makes a split unusable.

- `grouped_split`: seeded, rows of one group (an original and its perturbation, the annotations of one comment)
  in one split, groups stratified by their labels;
- `legacy_row_split`: seed C's leaky row-level sampling, for parity with the published numbers only;
- `check_splits`: an empty split, or a label the train split lacks, is an error naming the split; what a user may
  mean (a split whose fraction is 0, a label missing from dev or test) is a warning for metrics/data.json.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import HatetuneError
from .paths import SPLITS


def quota_sequence(n: int, fractions: Mapping[str, float]) -> list[str]:
    """n split names in proportion to `fractions`, interleaved (each next item goes to the split furthest below
    its quota): any run of consecutive items is split in close to the right proportions."""
    names = [s for s in SPLITS if s in fractions]
    counts = dict.fromkeys(names, 0)
    out = []
    for i in range(1, n + 1):
        name = max(names, key=lambda s: fractions[s] * i - counts[s])
        counts[name] += 1
        out.append(name)
    return out


def grouped_split(groups: Sequence[str], labels: Sequence[str], fractions: Mapping[str, float],
                  seed: int) -> np.ndarray:
    """A split per row, seeded: rows sharing a group stay in one split, groups stratified by their labels.

    Groups are shuffled within each stratum (the set of labels in the group), strata are laid end to end, and
    the interleaved quota sequence deals them out, so every stratum is split in the `fractions` proportions.
    """
    frame = pd.DataFrame({"group": list(map(str, groups)), "label": list(map(str, labels))})
    strata = (frame.drop_duplicates().sort_values(["group", "label"])
              .groupby("group", sort=True)["label"].agg("|".join))
    rng = np.random.default_rng(seed)
    ordered = []
    for stratum in sorted(strata.unique()):
        ordered.extend(rng.permutation(strata.index[strata == stratum].to_numpy()))
    assignment = dict(zip(ordered, quota_sequence(len(ordered), fractions)))
    return frame["group"].map(assignment).to_numpy()


def legacy_row_split(table: pd.DataFrame, rows: int, test_size: float, seed: int) -> pd.DataFrame:
    """Seed C's sampling: `rows` random annotation ROWS, then train_test_split(test_size). The same comment
    lands in train and test (a leak): for parity with the published numbers only."""
    from sklearn.model_selection import train_test_split

    sample = table.sample(n=min(rows, len(table)), random_state=seed)
    if len(sample) < 2:
        raise HatetuneError(f"split 'test' is empty: {len(sample)} row cannot be split into train and test",
                            field="task.split.legacy_rows")
    train_index, test_index = train_test_split(sample.index.to_numpy(), test_size=test_size, random_state=seed)
    sample["split"] = ""
    sample.loc[train_index, "split"] = "train"
    sample.loc[test_index, "split"] = "test"
    return sample.sort_index()


def check_splits(table: pd.DataFrame, names: Sequence[str], split_cfg: Mapping[str, Any],
                 strategy: str) -> list[str]:
    """Fail on a split that cannot be used; return warnings about what a user may mean.

    Errors: an empty split whose fraction is not 0 (too few rows or groups for the fractions), a label with no
    row in train (a model cannot learn what it never sees). Warnings: an empty split whose fraction is 0, a
    label missing from dev or test (its per-class scores are undefined there). Seed C's legacy split has no dev.
    """
    warnings = []
    sizes = {s: int((table["split"] == s).sum()) for s in SPLITS}
    for split in SPLITS:
        if sizes[split] or (strategy == "legacy_row_split" and split == "dev"):
            continue
        key = f"task.split.fractions.{split}"
        if strategy == "grouped" and split_cfg["fractions"][split] == 0:
            warnings.append(f"split '{split}' is empty ({key}=0)")
            continue
        fractions = ", ".join(f"{s} {split_cfg['fractions'][s]:g}" for s in SPLITS)
        raise HatetuneError(f"split '{split}' is empty: {len(table)} rows in {table['group'].nunique()} groups are "
                            f"too few to split {fractions}; add rows or change the fractions", field=key)
    for name in names:
        where = {s: int(((table["split"] == s) & (table["label"] == name)).sum()) for s in SPLITS}
        if not where["train"]:
            total = sum(where.values())
            found = (f"none of the data's {len(table)} rows has it" if not total else
                     f"its {total} rows all went to " + " and ".join(s for s in SPLITS if where[s]))
            raise HatetuneError(f"split 'train' has no row labelled {name!r} ({found}): a model cannot learn a "
                                "label it never sees; add such rows, or drop the label from task.labels.names")
        for split in ("dev", "test"):
            if sizes[split] and not where[split]:
                warnings.append(f"split '{split}' has no row labelled {name!r}: its per-class scores for {name!r} "
                                "are undefined there")
    return warnings
