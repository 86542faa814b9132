"""Breakdowns by group: the upstream columns that say whom a post targets and how, carried from the raw records to
every prediction, so results can be reported per group (`hatetune.group_metrics`).

A breakdown (task.breakdowns.columns) is either
- a `column` whose values are the groups (DynaHate's `type`, `level`, `round`), split on `separator` when one
  cell names several groups (DynaHate's `target`: "bla, jew"), or
- boolean `flags` columns, each a group of its own (MHS's `target_race`, `target_gender`, ...): group `race` for
  the column `target_race` of breakdown `target`.
Each record gets a list of groups per breakdown (a post can target several groups, or none). Where the data has
one row per annotation (MHS), a comment is in a group when at least half of its annotation rows put it there.

In labels.csv a breakdown is one column, its groups joined by `|`; in the Alpaca rows (and so in the predictions)
an extra key holding a list of groups for a multi-group breakdown (separator or flags), a string otherwise.
Extra keys never reach the prompt (`hatetune.prompts` builds it from instruction and input only).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import HatetuneError
from .records import fail

JOIN = "|"  # joins the groups of one breakdown in a labels.csv cell
TRUE, FALSE = {"true", "1", "1.0", "yes", "t", "y"}, {"false", "0", "0.0", "no", "f", "n", ""}


def is_multi(spec: Mapping[str, Any]) -> bool:
    """Whether a breakdown can put one row in several groups (its values are then lists)."""
    return spec.get("separator") is not None or spec.get("flags") is not None


def required_columns(columns: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The upstream columns the breakdowns read."""
    found = []
    for spec in columns.values():
        found += list(spec["flags"]) if spec.get("flags") else [spec["column"]]
    return list(dict.fromkeys(found))


def flag_group(breakdown: str, column: str) -> str:
    """The group a flag column stands for: `target_race` of breakdown `target` -> `race`."""
    prefix = f"{breakdown}_"
    return column[len(prefix):] if column.startswith(prefix) and len(column) > len(prefix) else column


def _flags(records: pd.DataFrame, column: str) -> np.ndarray:
    """A boolean column (True/False as parquet has it, or its spellings in a CSV); an empty cell is False."""
    def parse(value) -> bool | None:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return False
        text = str(value).strip().lower()
        return True if text in TRUE else False if text in FALSE else None

    parsed = [parse(v) for v in records[column]]
    bad = [i for i, v in enumerate(parsed) if v is None]
    if bad:
        fail(records, bad[0], column, f"{records[column].iat[bad[0]]!r} is not a boolean (true / false)")
    return np.array(parsed, dtype=bool)


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def record_groups(records: pd.DataFrame, columns: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One column per breakdown, row i for the i-th record: each cell the list of that record's groups."""
    out = {}
    for name, spec in columns.items():
        if spec.get("flags"):
            flags = {col: _flags(records, col) for col in spec["flags"]}
            out[name] = [[flag_group(name, col) for col in spec["flags"] if flags[col][i]]
                         for i in range(len(records))]
            continue
        column, separator = spec["column"], spec.get("separator")
        cells = [_cell(v) for v in records[column]]
        groups = [[g.strip() for g in c.split(separator) if g.strip()] if separator else ([c] if c else [])
                  for c in cells]
        bad = next((i for i, gs in enumerate(groups) if any(JOIN in g for g in gs)), None)
        if bad is not None:
            fail(records, bad, column, f"a group name containing {JOIN!r}, which joins groups in labels.csv")
        out[name] = groups
    return pd.DataFrame(out, index=pd.RangeIndex(len(records)))


def per_comment(groups: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """Annotation rows -> one row per id (first-seen order): a group counts when at least half of the id's rows
    list it (groups in the order of their first mention)."""
    ids = pd.Series(list(ids), index=groups.index)
    rows = ids.value_counts()
    out = {}
    for name in groups.columns:
        counts: dict[str, dict[str, int]] = {}
        for i, gs in zip(ids, groups[name]):
            per_id = counts.setdefault(i, {})
            for g in gs:
                per_id[g] = per_id.get(g, 0) + 1
        out[name] = {i: [g for g, n in c.items() if 2 * n >= rows[i]] for i, c in counts.items()}
    order = list(dict.fromkeys(ids))
    return pd.DataFrame({name: [out[name][i] for i in order] for name in groups.columns}, index=order)


def attach(table: pd.DataFrame, groups: pd.DataFrame, record_ids: Sequence[str], per_id: bool) -> pd.DataFrame:
    """The canonical table with one column per breakdown (lists of groups). `per_id`: the table has one row per
    id aggregated from several records (MHS comments); otherwise its index is the records' positions (as the
    labels stage builds it, subsamples included)."""
    table = table.copy()
    if per_id:
        by_id = per_comment(groups, record_ids)
        for name in groups.columns:
            table[name] = table["id"].map(by_id[name]).to_numpy()
    else:
        for name in groups.columns:
            table[name] = groups.loc[table.index, name].to_numpy()
    return table


def encode(table: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Breakdown columns as labels.csv cells: the groups joined by `|` ("" for none)."""
    return table.assign(**{name: table[name].map(JOIN.join) for name in names})


def decode(table: pd.DataFrame, columns: Mapping[str, Mapping[str, Any]], source: str) -> pd.DataFrame:
    """labels.csv cells -> the extra keys' values: a list of groups (multi-group breakdowns) or a string."""
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise HatetuneError(f"no column {missing[0]!r} for the breakdown of the same name (task.breakdowns): "
                            "rerun the labels stage", file=source, row=1, field=missing[0])
    return table.assign(**{name: table[name].map(lambda c: [g for g in c.split(JOIN) if g] if is_multi(spec) else c)
                           for name, spec in columns.items()})
