"""A generation task's posts (Stop-Hate): DynaHate, MetaHate and the CONAN family -> one table, deduplicated and
split so that no text, no CONAN hate-speech / counter-narrative pair and no DIALOCONAN dialogue is in two splits.

- DynaHate is the task's `source`, read, labelled and split exactly as the classification task `dynahate` does it
  (`labels.canonical_table` with the same columns, labels, split and seed): its posts land in the same split as
  there, so a DynaHate judge trained by that task never saw the test posts it judges here.
- Every other corpus (`task.extra_sources`) is read by the reader of its key (READERS), in its upstream schema.
- Deduplication: posts whose `parsing.normalise_text` agree (case, whitespace, quotes) are one post, kept from the
  first source in config order (DynaHate first); the others are listed in its `sources`.
- Groups: a post is linked to its text, its counter-narratives, its DIALOCONAN dialogue and its DynaHate pair;
  whatever is linked, directly or through others, is one group.
- Splits: a group holding DynaHate posts takes their split (test before dev before train, should they disagree);
  the other groups are split by `splits.grouped_split` (seeded, stratified by source and label, task.split.fractions).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

import numpy as np
import pandas as pd

from . import labels as L
from . import records as R
from .errors import HatetuneError
from .io import atomic_path, read_jsonl, write_json, write_jsonl
from .parsing import normalise_text
from .paths import POSTS_FILE, SPLIT_FILE, SPLITS

HATE, NOT_HATE = "hate", "not hate"
CONAN_FAMILY = ("conan", "multitarget_conan", "dialoconan", "kn_conan")


# ------------------------------------------------------------------------------------------------ readers
def _post(source: str, uid: Any, text: str, label: str, counter_narrative: str = "", history=(),
          links=()) -> dict:
    return {"source": source, "id": f"{source}:{uid}", "text": text, "label": label,
            "counter_narratives": [counter_narrative] if counter_narrative.strip() else [],
            "history": [list(pair) for pair in history], "links": list(links)}


def _column(records: pd.DataFrame, column: str) -> List[str]:
    """A column as strings (a missing cell: "")."""
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in records[column].tolist()]


def _where(records: pd.DataFrame, i: int) -> dict:
    return {"file": records[R.FILE].iat[i], "row": int(records[R.ROW].iat[i])}


def read_metahate(records: pd.DataFrame, key: str) -> List[dict]:
    """MetaHate (label 0 = no hate speech, 1 = hate speech; text)."""
    posts = []
    labels = {"0": NOT_HATE, "1": HATE, "0.0": NOT_HATE, "1.0": HATE}  # a parquet file may hold them as floats
    for i, (raw, text, row) in enumerate(zip(_column(records, "label"), _column(records, "text"), records[R.ROW])):
        if raw.strip() not in labels:
            raise HatetuneError(f"label {raw!r} is not 0 or 1", field="label", **_where(records, i))
        posts.append(_post(key, row, text, labels[raw.strip()]))
    return posts


def _pairs(id_column: str | None, hs: str, cn: str, keep: Callable[[str], bool] = lambda uid: True):
    """A reader of hate speech / counter-narrative pairs, one per row (`keep`: which ids to read)."""
    def read(records: pd.DataFrame, key: str) -> List[dict]:
        ids = _column(records, id_column) if id_column else [str(r) for r in records[R.ROW]]
        return [_post(key, uid, text, HATE, counter)
                for uid, text, counter in zip(ids, _column(records, hs), _column(records, cn)) if keep(uid)]
    return read


def read_dialoconan(records: pd.DataFrame, key: str) -> List[dict]:
    """DIALOCONAN: every hate-speech (HS) turn is a post; the turn after it, a counter-narrative (CN), is its
    counter-narrative; the dialogue's earlier turns are its history, as [HS, CN] pairs (consecutive turns of one
    type are joined by a newline; a last HS turn without a CN answer is left out of the history)."""
    dialogues: Dict[str, list] = {}
    columns = zip(_column(records, "dialogue_id"), _column(records, "turn_id"), _column(records, "type"),
                  _column(records, "text"))
    for i, (dialogue, turn, kind, text) in enumerate(columns):
        if not turn.strip().isdigit():
            raise HatetuneError(f"turn_id {turn!r} is not a number", field="turn_id", **_where(records, i))
        if kind.strip() not in ("HS", "CN"):
            raise HatetuneError(f"type {kind!r} is not HS or CN", field="type", **_where(records, i))
        dialogues.setdefault(dialogue.strip(), []).append((int(turn), kind.strip(), text))
    posts = []
    for dialogue, turns in dialogues.items():
        turns.sort(key=lambda t: t[0])
        merged: List[list] = []  # [type, text], consecutive same-type turns joined
        for k, (turn, kind, text) in enumerate(turns):
            if kind == "HS":
                cn = turns[k + 1][2] if k + 1 < len(turns) and turns[k + 1][1] == "CN" else ""
                history = [(merged[j][1], merged[j + 1][1]) for j in range(0, len(merged) - 1, 2)
                           if merged[j][0] == "HS" and merged[j + 1][0] == "CN"]
                posts.append(_post(key, f"{dialogue}-{turn}", text, HATE, cn, history,
                                   links=[f"dialogue:{key}:{dialogue}"]))
            if merged and merged[-1][0] == kind:
                merged[-1][1] += "\n" + text
            else:
                merged.append([kind, text])
    return posts


# key -> (upstream columns it needs, reader)
READERS: Dict[str, tuple] = {
    "metahate": (["label", "text"], read_metahate),
    # CONAN.csv holds English, French and Italian rows (and translations): the English ones' cn_id starts EN
    "conan": (["cn_id", "hateSpeech", "counterSpeech"],
              _pairs("cn_id", "hateSpeech", "counterSpeech", keep=lambda uid: uid.startswith("EN"))),
    "multitarget_conan": (["INDEX", "HATE_SPEECH", "COUNTER_NARRATIVE"],
                          _pairs("INDEX", "HATE_SPEECH", "COUNTER_NARRATIVE")),
    "dialoconan": (["text", "dialogue_id", "turn_id", "type"], read_dialoconan),
    "kn_conan": (["hate_speech", "counter_narrative"], _pairs(None, "hate_speech", "counter_narrative")),
}


def read_dynahate(raw_dir: Path, task: Mapping[str, Any], seed: int) -> tuple[List[dict], L.LabelledTable]:
    """The task's own source, as the classification task reads, labels and splits it (with its pairs' links)."""
    result = L.canonical_table(R.read_raw_dir(raw_dir, L.required_columns(task)), task, seed)
    name = task["source"]["name"]
    posts = []
    for row in result.table.itertuples():
        post = _post(name, row.id, row.text, row.label, links=[f"pair:{name}:{row.group}"])
        post["upstream_split"] = row.split
        posts.append(post)
    return posts, result


# ------------------------------------------------------------------------------------------ building
def weighted_grouped_split(groups, strata, fractions: Mapping[str, float], seed: int):
    """A split per row, seeded: rows of one group in one split, every stratum split in close to `fractions` of its
    ROWS.

    `splits.grouped_split` deals whole groups in proportion to their number; CONAN's groups reach hundreds of
    posts (dialogues and counter-narratives reused across hate speech), which would skew the rows' proportions.
    Here the groups come in a seeded random order, and each goes to the split where it leaves the rows dealt so
    far closest to `fractions` in every stratum it touches (the squared error summed over its strata; for a
    group of one row: the split furthest below its share)."""
    frame = pd.DataFrame({"group": list(map(str, groups)), "stratum": list(map(str, strata))})
    counts = frame.groupby(["group", "stratum"], sort=True).size()
    rng = np.random.default_rng(seed)
    names = [s for s in SPLITS if s in fractions]
    dealt: Dict[tuple, int] = {}
    total: Dict[str, int] = {}
    assignment = {}

    def error(stratum: str, split: str, n: int) -> float:
        return (dealt.get((stratum, split), 0) + n - fractions[split] * total[stratum]) ** 2

    for group in rng.permutation(counts.index.get_level_values(0).unique().to_numpy()):
        own = counts.loc[group]
        for stratum, n in own.items():
            total[stratum] = total.get(stratum, 0) + int(n)
        split = min(names, key=lambda s: sum(error(st, t, int(n) * (t == s)) for st, n in own.items() for t in names))
        for stratum, n in own.items():
            dealt[(stratum, split)] = dealt.get((stratum, split), 0) + int(n)
        assignment[group] = split
    return frame["group"].map(assignment).to_numpy()


class _Groups:
    """Union-find over link keys."""

    def __init__(self):
        self.parent: Dict[str, str] = {}

    def root(self, x: str) -> str:
        while self.parent.setdefault(x, x) != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, keys: List[str]) -> None:
        first = self.root(keys[0])
        for key in keys[1:]:
            other = self.root(key)
            if other != first:
                self.parent[other] = first


def build_posts(task: Mapping[str, Any], raw_dir: str | Path, seed: int) -> L.LabelledTable:
    """Every corpus of `task` read from `raw_dir`/<key>/ (the download stage's layout), deduplicated, grouped and
    split. Returns the posts as a table (one row per post) with notes and warnings for split.json and data.json."""
    raw_dir = Path(raw_dir)
    dynahate, canonical = read_dynahate(raw_dir / task["source"]["name"], task, seed)
    raw = list(dynahate)
    for key in task.get("extra_sources") or {}:
        columns, reader = READERS[key]
        raw += reader(R.read_raw_dir(raw_dir / key, columns), key)
    empty = sum(1 for p in raw if not p["text"].strip())
    posts: Dict[str, dict] = {}  # text key -> post
    groups, conflicts = _Groups(), 0
    for p in raw:
        if not p["text"].strip():
            continue
        text_key = "text:" + normalise_text(p["text"])
        groups.join([text_key] + ["cn:" + normalise_text(cn) for cn in p["counter_narratives"]] + p["links"])
        kept = posts.get(text_key)
        if kept is None:
            posts[text_key] = {**p, "sources": [p["source"]], "splits": {p.get("upstream_split")} - {None}}
            continue
        conflicts += kept["label"] != p["label"]
        kept["sources"] += [p["source"]] if p["source"] not in kept["sources"] else []
        kept["counter_narratives"] += [cn for cn in p["counter_narratives"] if cn not in kept["counter_narratives"]]
        kept["splits"] |= {p.get("upstream_split")} - {None}
    table = pd.DataFrame([{"key": k, **p} for k, p in posts.items()])
    table["group"] = [groups.root(k) for k in table["key"]]
    names = {g: f"g{i}" for i, g in enumerate(dict.fromkeys(table["group"]))}  # stable, short group ids
    table["group"] = table["group"].map(names)

    # a group with DynaHate posts keeps their split; the others are dealt out like any grouped split
    fixed: Dict[str, set] = {}
    for group, splits in zip(table["group"], table["splits"]):
        if splits:
            fixed.setdefault(group, set()).update(splits)
    fixed = {g: next(x for x in ("test", "dev", "train") if x in s) for g, s in fixed.items()}
    table["split"] = table["group"].map(fixed)
    free = table["split"].isna()
    if free.any():
        strata = table.loc[free, "source"] + "|" + table.loc[free, "label"]
        table.loc[free, "split"] = weighted_grouped_split(table.loc[free, "group"], strata,
                                                          task["split"]["fractions"], seed)
    split_of = dict(zip(table["key"], table["split"]))
    moved = sum(1 for p in dynahate if p["text"].strip()
                and split_of["text:" + normalise_text(p["text"])] != p["upstream_split"])

    result = L.LabelledTable(table.drop(columns=["key", "splits", "links", "upstream_split"], errors="ignore"))
    sizes = table.groupby("group").size()
    result.notes = {**canonical.notes, "strategy": f"{canonical.notes.get('strategy')} (DynaHate) + grouped",
                    "posts_read": len(raw), "empty_posts_dropped": empty, "duplicates_merged": len(raw) - empty - len(table),
                    "label_conflicts": conflicts, "groups": int(len(sizes)), "largest_group": int(sizes.max()),
                    "dynahate_posts_moved": moved}
    result.warnings = list(canonical.warnings)
    if moved:
        result.warnings.append(f"{moved} DynaHate posts share a group with posts of another split and moved there: "
                               f"a DynaHate judge may have seen them in training")
    if empty:
        result.warnings.append(f"{empty} posts with an empty text were dropped")
    if conflicts:
        result.warnings.append(f"{conflicts} duplicate posts disagree on the label: the first source's label is kept")
    return result


# --------------------------------------------------------------------------------------- write / read
POST_FIELDS = ["id", "text", "label", "source", "sources", "split", "group", "counter_narratives", "history"]


def write_posts(result: L.LabelledTable, out_dir: str | Path) -> None:
    """posts.jsonl (one post per line, POST_FIELDS) and split.json (how it was split), atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_jsonl(tmp / POSTS_FILE, result.table[POST_FIELDS].to_dict("records"))
        write_json(tmp / SPLIT_FILE, {**result.notes, "warnings": list(result.warnings)})


def read_posts(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise HatetuneError("no posts table: run the labels stage first", file=str(path))
    return pd.DataFrame(read_jsonl(path), columns=POST_FIELDS)


def data_metrics(result: L.LabelledTable, task: Mapping[str, Any]) -> dict:
    """metrics/data.json: what `labels.data_metrics` reports, plus posts per source and split and the dedup."""
    table = result.table
    metrics = L.data_metrics(result, task)
    metrics["sources"] = {source: {s: int(((table["source"] == source) & (table["split"] == s)).sum())
                                   for s in SPLITS} for source in dict.fromkeys(table["source"])}
    metrics.update({k: result.notes[k] for k in ("duplicates_merged", "label_conflicts", "groups", "largest_group",
                                                 "dynahate_posts_moved", "empty_posts_dropped")})
    return metrics
