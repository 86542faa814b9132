"""A generation task's rows: the convert stage's candidates and the replies stage's training rows.

The convert stage writes rows that do not depend on `task.targets.mode` ({instruction, input, output: null,
system, id, label, source, counter_narrative[, history]}), so switching modes reruns neither it nor the
evaluation of the base systems. The replies stage then resolves each train / dev row (`resolve`), by `target`:
- `stop`: output = the stop message (hateful posts; every post in stop_all mode);
- `counter_narrative`: output = the post's first CONAN counter-narrative (counter_speech mode; a hateful post
  without one is not trained on);
- `self_distilled`: output = the base model's own reply to the post, which the replies stage generates once, so
  the model keeps answering normal posts as it did (a reply that came out empty: the row is not trained on).
Rows are subsampled per split, balanced hate / not hate (`balanced_sample`). Test rows: every test post, with its
evaluation `set` (`eval_set`). Judge rows: the DynaHate posts of a split as {id, instruction "", input, output
label, system ""}, what the judge's TF-IDF fallback (and the baseline stage) trains on and is scored on.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import pandas as pd

from .corpora import CONAN_FAMILY, HATE
from .labels import stratified_sample
from .prompts import alpaca_row

STOP, COUNTER_NARRATIVE, SELF_DISTILLED = "stop", "counter_narrative", "self_distilled"


def target(row: Mapping[str, Any], mode: str, stop_message: str,
           replies: Mapping[str, str]) -> tuple[Optional[str], Optional[str]]:
    """(target kind, output) of a candidate row in `mode`; (kind, None) when it is not trained on."""
    hateful = row["label"] == HATE
    if mode == "stop_all" or (mode == "stop_when_hateful" and hateful):
        return STOP, stop_message
    if hateful:  # counter_speech
        return COUNTER_NARRATIVE, row.get("counter_narrative") or None
    reply = replies.get(str(row["id"]), "")
    return SELF_DISTILLED, reply if reply.strip() else None


def resolve(rows: Sequence[Mapping[str, Any]], mode: str, stop_message: str,
            replies: Mapping[str, str]) -> tuple[List[dict], Dict[str, int]]:
    """Training rows with their outputs in `mode`, and how many rows each target kind kept or dropped."""
    out, counts = [], {}
    for row in rows:
        kind, output = target(row, mode, stop_message, replies)
        key = kind if output is not None else f"{kind} (dropped: nothing to answer)"
        counts[key] = counts.get(key, 0) + 1
        if output is not None:
            out.append({**row, "output": output, "target": kind})
    return out, counts


def eval_set(post: Mapping[str, Any], dynahate: str) -> Optional[str]:
    """The evaluation set of a post: `conan` (CONAN-family hate speech), `<dynahate>_hate`, `<dynahate>_not_hate`
    (the task's own source), else None (e.g. MetaHate: the paper's training corpus, not an evaluation input)."""
    if post["source"] in CONAN_FAMILY:
        return "conan" if post["label"] == HATE else None
    if post["source"] == dynahate:
        return f"{dynahate}_{post['label'].replace(' ', '_')}"
    return None


def balanced_sample(frame: pd.DataFrame, n: Optional[int], seed: int) -> pd.DataFrame:
    """At most `n` rows, seeded: half hateful, half not (what a label lacks goes to the other), each half
    stratified by source; in the frame's order."""
    if n is None or n >= len(frame):
        return frame
    sizes = frame["label"].value_counts().sort_index()
    quota = dict.fromkeys(sizes.index, 0)
    for _ in range(n):  # one row at a time to the label furthest below an even share that still has rows
        open_labels = [k for k in quota if quota[k] < sizes[k]]
        quota[min(open_labels, key=lambda k: (quota[k], k))] += 1
    parts = [stratified_sample(frame[frame["label"] == label], k, seed, by="source") for label, k in quota.items()]
    return frame.loc[sorted(pd.concat(parts).index, key=frame.index.get_loc)]


def _row(post: Mapping[str, Any], task: Mapping[str, Any], **extra) -> dict:
    p, t = task["prompt"], task["targets"]
    row = alpaca_row(p["instruction"], post["text"], "", p.get("system") or "", id=post["id"])
    row["output"] = None  # the replies stage resolves it (training rows) or the systems write it (test rows)
    if t["dialogues"] and len(post["history"]):
        row["history"] = [list(pair) for pair in post["history"]]
    return {**row, "label": post["label"], "source": post["source"], **extra}


def training_rows(posts: pd.DataFrame, split: str, task: Mapping[str, Any], n: Optional[int], seed: int) -> List[dict]:
    """The `split` posts of `task.targets.train_sources` (null: all) as candidate rows, balanced and capped."""
    part = posts[posts["split"] == split]
    sources = task["targets"].get("train_sources")
    if sources:
        part = part[part["source"].isin(list(sources))]
    part = balanced_sample(part, n, seed)
    return [_row(post, task, counter_narrative=post["counter_narratives"][0] if len(post["counter_narratives"])
                 else None) for post in part.to_dict("records")]


def test_rows(posts: pd.DataFrame, task: Mapping[str, Any]) -> List[dict]:
    """Every test post with its evaluation set."""
    dynahate = task["source"]["name"]
    return [_row(post, task, set=eval_set(post, dynahate)) for post in posts[posts["split"] == "test"].to_dict("records")]


def judge_rows(posts: pd.DataFrame, split: str, source: str) -> List[dict]:
    """The `source` (DynaHate) posts of `split` with their labels: the judge's own train / test data."""
    part = posts[(posts["split"] == split) & (posts["source"] == source)]
    return [alpaca_row("", post["text"], post["label"], "", id=post["id"]) for post in part.to_dict("records")]


# -------------------------------------------------------------------------------------- self-distillation
def needs_reply(row: Mapping[str, Any], mode: str) -> bool:
    """Whether `mode` trains this row on the base model's own reply."""
    return mode != "stop_all" and row["label"] != HATE


def trim_reply(text: str, finished: bool) -> str:
    """A self-distilled reply as a training target: whole when the model ended it, else cut after its last full
    sentence (a reply cut mid-word by the token cap would teach the model to stop mid-word)."""
    text = text.strip()
    if finished:
        return text
    ends = [i for i, ch in enumerate(text) if ch in ".!?" and (i + 1 == len(text) or text[i + 1].isspace())]
    return text[:ends[-1] + 1] if ends else text
