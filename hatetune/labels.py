"""The canonical table: raw upstream records (`hatetune.records`) -> one row per example with columns id, text,
label, split, group.

- checks: every id and text present, no NUL byte, ids unique, one text per comment (errors name file, row, column);
- labels: an upstream label mapped through `task.labels.map` (DynaHate) or a score binned (MHS);
- splits (`hatetune.splits`): the upstream split column, or a seeded split grouped so linked rows stay together
  and stratified by label, or seed C's leaky row-level sampling (`legacy_row_split`, for parity only); then
  checked: an empty split or a label missing from train is an error, what a user may mean a warning;
- `stratified_sample`: the seeded per-split subsample the convert stage takes for CPU runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from . import breakdowns
from .errors import ConfigError, HatetuneError
from .io import atomic_path, write_json
from .paths import LABELS_FILE, SPLIT_FILE, SPLITS
from .records import FILE, ROW, fail
from .splits import check_splits, grouped_split, legacy_row_split

CANONICAL_COLUMNS = ["id", "text", "label", "split", "group"]
# Score bins of the Measuring Hate Speech card, from low to high score.
SUPPORTIVE, NEUTRAL, HATE = "Supportive", "Neutral", "Hate"


# --------------------------------------------------------------------------------------------- checking
def _as_text(records: pd.DataFrame, column: str, what: str) -> pd.Series:
    """The column as strings; a missing or blank cell is an error naming its row."""
    values = records[column]
    text = values.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    blank = text.str.strip() == ""
    if blank.any():
        position = int(np.flatnonzero(blank.to_numpy())[0])
        fail(records, position, column, f"{what} is empty or whitespace only")
    # Rejected, not stripped: a NUL byte is no character of a post but a sign of a corrupt or binary file
    nul = text.str.contains("\x00", regex=False)
    if nul.any():
        position = int(np.flatnonzero(nul.to_numpy())[0])
        fail(records, position, column, f"{what} contains a NUL byte (\\x00, at character "
                                        f"{text.iat[position].index(chr(0)) + 1}): a corrupt file? remove it")
    return text


def _check_unique(records: pd.DataFrame, keys: Sequence[str]) -> None:
    key = records[keys[0]].astype(str)
    for k in keys[1:]:
        key = key + "\x1f" + records[k].astype(str)
    dup = key.duplicated()
    if dup.any():
        position = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((key == key.iat[position]).to_numpy())[0])
        shown = ", ".join(f"{k}={records[k].iat[position]}" for k in keys)
        fail(records, position, keys[-1], f"duplicate {shown} (first in {records[FILE].iat[first]}, row "
                                           f"{int(records[ROW].iat[first])})")


def numeric_scores(records: pd.DataFrame, column: str) -> pd.Series:
    """A score column as floats; a missing, NaN or non-numeric value is an error naming its row."""
    values = pd.to_numeric(records[column], errors="coerce").astype(float)
    bad = values.isna() | ~np.isfinite(values)
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        fail(records, position, column, f"score {records[column].iat[position]!r} is not a number")
    return values


# ---------------------------------------------------------------------------------------------- labels
def bin_scores(scores: Sequence[float] | pd.Series, supportive_below: float, hate_above: float) -> pd.Series:
    """The dataset card's bins: < supportive_below -> Supportive, > hate_above -> Hate, else Neutral (so the
    thresholds themselves are Neutral)."""
    scores = pd.Series(scores, dtype=float)
    labels = np.where(scores < supportive_below, SUPPORTIVE, np.where(scores > hate_above, HATE, NEUTRAL))
    return pd.Series(labels, index=scores.index, dtype=object)


def map_labels(records: pd.DataFrame, column: str, mapping: Mapping[str, str]) -> pd.Series:
    raw = records[column].map(lambda v: "" if v is None else str(v).strip())
    unknown = ~raw.isin(list(mapping))
    if unknown.any():
        position = int(np.flatnonzero(unknown.to_numpy())[0])
        fail(records, position, column, f"label {raw.iat[position]!r} is not in the label set "
                                         f"({', '.join(mapping)})")
    return raw.map(dict(mapping))


def _link(value: Any) -> str:
    """A link cell; the usual spellings of "missing" (R writes NA) are no link, not a link to a row called NA."""
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in ("", "na", "n/a", "nan", "none", "null") else text


def linked_groups(ids: Sequence[str], links: Sequence[Optional[str]]) -> list[str]:
    """Group key per row: rows linked through `links` (another row's id; empty = none) share one key, the
    smallest id among them. DynaHate's original and perturbation point at each other, so grouping by the
    link column alone would split every pair; this keeps each pair (or longer chain) together."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(ids, links):
        ra = root(a)
        if b:
            rb = root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [root(a) for a in ids]


# ---------------------------------------------------------------------------------------------- splits
@dataclass
class LabelledTable:
    """The canonical table and what was done to make it (for split.json and metrics/data.json)."""
    table: pd.DataFrame
    notes: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _assign_splits(result: LabelledTable, upstream: Optional[pd.Series], split_cfg: Mapping[str, Any],
                   seed: int, group_desc: str) -> None:
    table, strategy = result.table, split_cfg["strategy"]
    present = sorted(set(upstream), key=SPLITS.index) if upstream is not None else []
    result.notes.update({"strategy_requested": strategy, "seed": seed, "grouped_by": group_desc})
    if strategy in ("upstream", "auto") and len(present) == len(SPLITS):
        table["split"] = upstream.to_numpy()
        result.notes["strategy"] = "upstream"
        return
    if strategy == "upstream":
        raise HatetuneError(f"the data has no upstream split(s) {', '.join(s for s in SPLITS if s not in present)}"
                            " (set task.split.strategy=auto to re-split the rows that exist)",
                            field="task.split.strategy")
    table["split"] = grouped_split(table["group"], table["label"], split_cfg["fractions"], seed)
    result.notes.update({"strategy": "grouped", "fractions": dict(split_cfg["fractions"])})
    if strategy == "auto" and upstream is not None:
        result.warnings.append(
            f"the data has only the {', '.join(present)} split(s) of the upstream train/dev/test: re-split its "
            f"{len(table)} rows (grouped by {group_desc}, stratified by label, seed {seed}); scores are not "
            f"comparable with the published ones")


# ----------------------------------------------------------------------------------------------- tables
def required_columns(task: Mapping[str, Any]) -> list[str]:
    cols, binning = task["columns"], task["labels"].get("binning")
    names = [cols["id"], cols["text"], binning["score_column"] if binning else cols["label"],
             cols.get("split"), cols.get("linked_id"), cols.get("annotator")]
    names += breakdowns.required_columns(_breakdown_columns(task))
    return list(dict.fromkeys(n for n in names if n))


def _breakdown_columns(task: Mapping[str, Any]) -> Mapping[str, Any]:
    return task["breakdowns"]["columns"] or {}  # read, not .get(): a stage must declare task.breakdowns


def canonical_table(records: pd.DataFrame, task: Mapping[str, Any], seed: int) -> LabelledTable:
    """Raw records (from `read_raw_dir`) -> the canonical table of `task`, checked, labelled and split."""
    cols, labels_cfg, split_cfg = task["columns"], task["labels"], task["split"]
    ids = _as_text(records, cols["id"], "id")
    records = records.assign(**{cols["id"]: ids})
    text = _as_text(records, cols["text"], "text")
    _check_unique(records, [cols["id"]] + ([cols["annotator"]] if cols.get("annotator") else []))
    upstream = None
    if cols.get("split"):
        upstream = records[cols["split"]].map(lambda v: "" if v is None else str(v).strip())
        bad = ~upstream.isin(SPLITS)
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            fail(records, position, cols["split"], f"split {upstream.iat[position]!r} is not one of "
                                                    f"{', '.join(SPLITS)}")

    groups = breakdowns.record_groups(records, _breakdown_columns(task))
    if labels_cfg.get("binning"):
        result = _binned_table(records, ids, text, task, seed)
    else:
        result = _mapped_table(records, ids, text, upstream, task, seed)
    if len(groups.columns):  # whom each row targets (extra columns, kept through convert to the predictions)
        per_id = result.notes.get("unit") == "comment"
        result.table = breakdowns.attach(result.table, groups, list(ids), per_id=per_id)
        result.notes["breakdowns"] = list(groups.columns)
    result.warnings += check_splits(result.table, labels_cfg["names"], split_cfg, result.notes["strategy"])
    return result


def _mapped_table(records: pd.DataFrame, ids: pd.Series, text: pd.Series, upstream: Optional[pd.Series],
                  task: Mapping[str, Any], seed: int) -> LabelledTable:
    """DynaHate: one row per example, the upstream label mapped; linked rows grouped for splitting."""
    cols, split_cfg = task["columns"], task["split"]
    labels = map_labels(records, cols["label"], task["labels"]["map"])
    links = records[cols["linked_id"]].map(_link) if cols.get("linked_id") else [""] * len(records)
    table = pd.DataFrame({"id": ids.to_numpy(), "text": text.to_numpy(), "label": labels.to_numpy(), "split": "",
                          "group": linked_groups(list(ids), list(links))})
    result = LabelledTable(table)
    group_desc = f"{cols['linked_id']} (linked rows together)" if cols.get("linked_id") else f"{cols['id']}"
    if split_cfg["strategy"] == "legacy_row_split":
        result.table = legacy_row_split(table, split_cfg["legacy_rows"], split_cfg["legacy_test_size"], seed)
        result.notes.update({"strategy": "legacy_row_split", "strategy_requested": "legacy_row_split",
                             "seed": seed})
    else:
        _assign_splits(result, upstream, split_cfg, seed, group_desc)
    return result


def _check_one_text_per_id(records: pd.DataFrame, rows: pd.DataFrame, cols: Mapping[str, Any]) -> None:
    """The annotations of one comment share its text; two texts under one id are two posts mixed up (keeping
    either would label one post with the other's scores)."""
    texts = rows.groupby("id", sort=False)["text"].nunique()
    if not (texts > 1).any():
        return
    positions = np.flatnonzero((rows["id"] == texts.index[texts > 1][0]).to_numpy())
    first = positions[0]
    other = next(p for p in positions if rows["text"].iat[p] != rows["text"].iat[first])
    where = f"row {int(records[ROW].iat[first])}" + (f" of {records[FILE].iat[first]}" if
                                                     records[FILE].iat[first] != records[FILE].iat[other] else "")
    fail(records, other, cols["text"], f"{cols['id']} {rows['id'].iat[other]} has another text here than in "
                                       f"{where}: one id, two posts")


def _binned_table(records: pd.DataFrame, ids: pd.Series, text: pd.Series, task: Mapping[str, Any],
                  seed: int) -> LabelledTable:
    """MHS: one row per annotation; the score should be a property of the comment. Check that, take the mean
    per comment if it is not, bin it, and keep one row per comment (unless seed C's row sampling is asked)."""
    cols, binning, split_cfg = task["columns"], task["labels"]["binning"], task["split"]
    missing = {SUPPORTIVE, NEUTRAL, HATE} - set(task["labels"]["names"])
    if missing:
        raise ConfigError(f"binned labels need {', '.join(sorted(missing))} in the label set", field="task.labels.names")
    scores = numeric_scores(records, binning["score_column"])
    bins = (binning["supportive_below"], binning["hate_above"])
    rows = pd.DataFrame({"id": ids.to_numpy(), "text": text.to_numpy(), "score": scores.to_numpy()})
    _check_one_text_per_id(records, rows, cols)
    result = LabelledTable(pd.DataFrame())

    if split_cfg["strategy"] == "legacy_row_split":
        annotator = records[cols["annotator"]].astype(str).to_numpy() if cols.get("annotator") else None
        table = pd.DataFrame({"id": rows["id"] + ("-" + annotator if annotator is not None else ""),
                              "text": rows["text"], "label": bin_scores(rows["score"], *bins), "split": "",
                              "group": rows["id"]})
        result.table = legacy_row_split(table, split_cfg["legacy_rows"], split_cfg["legacy_test_size"], seed)
        leaked = result.table.groupby("group")["split"].nunique().gt(1).sum()
        result.notes.update({"strategy": "legacy_row_split", "strategy_requested": "legacy_row_split",
                             "seed": seed, "unit": "annotation row", "groups_in_two_splits": int(leaked)})
        result.warnings.append(f"legacy_row_split: {int(leaked)} comments have rows in both train and test "
                               f"(seed C's leak, kept for parity only)")
        return result

    per_comment = rows.groupby("id", sort=False).agg(text=("text", "first"), mean=("score", "mean"),
                                                     low=("score", "min"), high=("score", "max"),
                                                     annotations=("score", "size"))
    varying = per_comment["high"] - per_comment["low"] > 1e-9
    result.notes.update({"unit": "comment", "annotation_rows": len(rows), "comments": len(per_comment),
                         "scores_aggregated": bool(varying.any()),
                         "comments_with_varying_score": int(varying.sum())})
    if varying.any():
        result.warnings.append(
            f"{binning['score_column']} varies between the annotations of {int(varying.sum())} of "
            f"{len(per_comment)} comments (largest spread "
            f"{float((per_comment['high'] - per_comment['low']).max()):.3g}): binned the mean per comment")
    result.table = pd.DataFrame({"id": per_comment.index.to_numpy(), "text": per_comment["text"].to_numpy(),
                                 "label": bin_scores(per_comment["mean"].to_numpy(), *bins).to_numpy(),
                                 "split": "", "group": per_comment.index.to_numpy()})
    _assign_splits(result, None, split_cfg, seed, cols["id"])
    return result


# ------------------------------------------------------------------------------------------ write / read
def label_counts(table: pd.DataFrame, names: Sequence[str]) -> dict[str, dict[str, int]]:
    return {split: {name: int(((table["split"] == split) & (table["label"] == name)).sum()) for name in names}
            for split in SPLITS}


def data_metrics(result: LabelledTable, task: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/data.json: rows and label counts per split, the split strategy used, warnings."""
    table = result.table
    metrics = {"task": task["name"], "split_strategy": result.notes.get("strategy"),
               "rows": {"total": len(table), **{s: int((table["split"] == s).sum()) for s in SPLITS}},
               "labels": label_counts(table, task["labels"]["names"]),
               "warnings": list(result.warnings)}
    if task["labels"].get("binning"):
        metrics["scores_aggregated"] = bool(result.notes.get("scores_aggregated", False))
    return metrics


def write_canonical(result: LabelledTable, out_dir: str | Path) -> None:
    """labels.csv (id,text,label,split,group) and split.json (how the split was made), atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        extra = list(result.notes.get("breakdowns", []))
        breakdowns.encode(result.table, extra)[CANONICAL_COLUMNS + extra].to_csv(
            tmp / LABELS_FILE, index=False, lineterminator="\n", encoding="utf-8")
        write_json(tmp / SPLIT_FILE, {**result.notes, "warnings": list(result.warnings)})


def read_canonical(path: str | Path) -> pd.DataFrame:
    """labels.csv back, every cell a string (a post reading "NA" stays "NA"); breakdown columns follow the
    canonical ones."""
    path = Path(path)
    if not path.is_file():
        raise HatetuneError("no canonical table: run the labels stage first", file=str(path))
    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    if list(table.columns)[:len(CANONICAL_COLUMNS)] != CANONICAL_COLUMNS:
        raise HatetuneError(f"columns are {', '.join(table.columns)}, expected {', '.join(CANONICAL_COLUMNS)} "
                            "(then any breakdown columns)", file=str(path), row=1)
    return table


def stratified_sample(table: pd.DataFrame, n: Optional[int], seed: int, by: str = "label") -> pd.DataFrame:
    """At most `n` rows, seeded, label proportions kept (largest remainder), in the table's original order."""
    if n is None or n >= len(table):
        return table
    counts = table[by].value_counts().sort_index()
    exact = counts * n / len(table)
    take = np.floor(exact).astype(int)
    # hand the rows lost to rounding to the largest remainders (ties: label order), so exactly n are taken
    for label in (exact - take).sort_values(ascending=False, kind="stable").index[: n - int(take.sum())]:
        take[label] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero((table[by] == label).to_numpy()), size=int(k), replace=False)
              for label, k in take.items() if k > 0]
    return table.iloc[np.sort(np.concatenate(picked))] if picked else table.iloc[:0]
