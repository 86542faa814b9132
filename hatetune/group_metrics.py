"""Results per group: where a model fails and whom it fails, not just how often.

Records are the prediction records of one evaluated set (`evaluation.score`): `gold`, `predicted` and the extra
keys of its rows (`hatetune.breakdowns`; a functional suite's functionality and target identity), each a group
name or a list of names (a post targeting two groups counts in both; an empty value is in no group). Per group:
- `n`, `accuracy` with its 95% Wilson interval (a group of 12 posts measures little: read the interval);
- `f1`: F1 of the positive label within the group, null when the group has no positive example and no positive
  prediction (DynaHate's `none` group holds only `not hate` rows: its accuracy is the share correctly not flagged);
- `positive_gold`: how many gold labels are positive; `positive_rate`: the share predicted positive (on a
  functional suite's non-hateful functionalities, the false-alarm rate; for a generation task such as Stop-Hate,
  whose stop counts as hateful, the stop rate: `evaluation.score_suite_replies`);
- `small`: fewer than `min_size` examples. Small groups are shown, flagged, and left out of the gap.
`gap`: the largest accuracy difference between the groups of one breakdown, over groups of at least `min_size`
that are not `not_groups` (values meaning "no group", e.g. DynaHate's `none`, `notgiven`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .metrics import DIGITS
from .prompts import extra_keys

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Breakdown:
    """What to break a set's results down by: `keys` (None: every extra key of its rows), the positive label, the
    smallest group that counts, and the breakdown whose gap between groups is a metric."""
    positive: str
    min_size: int
    gap: Optional[str] = None
    not_groups: Sequence[str] = ()
    keys: Optional[Sequence[str]] = None
    extra: Sequence[str] = field(default_factory=tuple)  # keys broken down besides the rows' (e.g. "gold")


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(float(x), DIGITS)


def groups_of(value: Any) -> List[str]:
    """The groups a record's value names: a name, a list of names, or nothing ("" / None / [])."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v)]
    return [str(value)] if str(value) else []


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct` / `n` (sensible for small n and rates near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def group_table(records: Iterable[Mapping], key: str, positive: str, min_size: int) -> Dict[str, dict]:
    """{group: n, accuracy, accuracy_ci95, f1, positive_gold, positive_rate, small} for one breakdown `key`."""
    counts: Dict[str, Dict[str, int]] = {}
    for record in records:
        gold, predicted = record["gold"], record["predicted"]
        for group in groups_of(record.get(key)):
            c = counts.setdefault(group, dict.fromkeys(("n", "correct", "tp", "fp", "fn", "gold_pos", "pred_pos"), 0))
            c["n"] += 1
            c["correct"] += gold == predicted
            c["tp"] += gold == positive and predicted == positive
            c["fp"] += gold != positive and predicted == positive
            c["fn"] += gold == positive and predicted != positive
            c["gold_pos"] += gold == positive
            c["pred_pos"] += predicted == positive
    table = {}
    for group, c in counts.items():
        f1_base = 2 * c["tp"] + c["fp"] + c["fn"]
        table[group] = {"n": c["n"], "accuracy": _r(c["correct"] / c["n"]),
                        "accuracy_ci95": [_r(x) for x in wilson(c["correct"], c["n"])],
                        "f1": _r(2 * c["tp"] / f1_base) if f1_base else None, "positive_gold": c["gold_pos"],
                        "positive_rate": _r(c["pred_pos"] / c["n"]), "small": c["n"] < min_size}
    return table


def group_tables(records: Sequence[Mapping], keys: Iterable[str], positive: str, min_size: int) -> Dict[str, dict]:
    return {key: group_table(records, key, positive, min_size) for key in keys}


def by_size(table: Mapping[str, Mapping]) -> List[str]:
    """Group names, largest first (ties by name): the order tables show them in."""
    return sorted(table, key=lambda g: (-table[g]["n"], g))


def extremes(table: Mapping[str, Mapping], not_groups: Sequence[str] = (), include_small: bool = False) -> dict:
    """The worst and best group by accuracy among those of full size (all, with `include_small`) that are real
    groups, and the gap between them (null when fewer than two groups qualify)."""
    eligible = {g: s for g, s in table.items() if (include_small or not s["small"]) and g not in set(not_groups)}
    found: Dict[str, Any] = {"groups_compared": len(eligible), "accuracy_gap": None, "worst_group": None,
                             "worst_accuracy": None, "worst_n": None, "best_group": None, "best_accuracy": None,
                             "best_n": None}
    if not eligible:
        return found
    worst = min(eligible, key=lambda g: (eligible[g]["accuracy"], g))
    best = max(eligible, key=lambda g: (eligible[g]["accuracy"], g))  # ties: worst first by name, best last
    found.update(worst_group=worst, worst_accuracy=eligible[worst]["accuracy"], worst_n=eligible[worst]["n"],
                 best_group=best, best_accuracy=eligible[best]["accuracy"], best_n=eligible[best]["n"])
    if len(eligible) >= 2:
        found["accuracy_gap"] = _r(eligible[best]["accuracy"] - eligible[worst]["accuracy"])
    return found


def breakdown_keys(rows: Sequence[Mapping], spec: Breakdown) -> List[str]:
    """The keys a set is broken down by: spec.keys, or every extra key of its rows, then spec.extra."""
    keys = list(spec.keys) if spec.keys is not None else list(dict.fromkeys(k for r in rows for k in extra_keys(r)))
    return keys + [k for k in spec.extra if k not in keys]
