"""Classification metrics (scikit-learn) in both seed conventions, and confusion matrices.

Two macro-F1s, because the seeds disagree on what to do with unparseable answers (`invalid`):
- `macro_f1`: averaged over the task's real labels only (`labels=task.labels.names`, seed B). An invalid
  answer still counts as wrong for the recall of its gold class.
- `macro_f1_with_invalid`: sklearn's default label set, the union of gold and predicted labels (seed C, who
  passed no `labels=`), so `invalid` ("Unknown", support 0, F1 0) is averaged in whenever it was predicted.
  Seed C's published 0.52 = (0.82 + 0.41 + 0.84 + 0) / 4 is this number; over the real classes it is ~0.69.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from .parsing import INVALID

DIGITS = 6  # rounding of the JSON metrics: stable diffs, far below any meaningful difference


def _r(x) -> float:
    return round(float(x), DIGITS)


def label_order(labels: Sequence[str], predicted: Sequence[str]) -> List[str]:
    """The task's labels, plus `invalid` when something was unparseable (rows/columns of tables and plots)."""
    return list(labels) + ([INVALID] if INVALID in set(predicted) else [])


def classification_metrics(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> Dict:
    """accuracy, both macro-F1 conventions, invalid rate and per-class precision / recall / F1 / support."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if not gold:
        raise ValueError("no examples to score")
    gold, predicted, labels = list(gold), list(predicted), list(labels)
    rows = label_order(labels, predicted)
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=rows, zero_division=0)
    return {
        "n": len(gold),
        "accuracy": _r(accuracy_score(gold, predicted)),
        "macro_f1": _r(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)),
        "macro_f1_with_invalid": _r(f1_score(gold, predicted, average="macro", zero_division=0)),
        "invalid_rate": _r(sum(p == INVALID for p in predicted) / len(predicted)),
        "per_class": {label: {"precision": _r(p), "recall": _r(r), "f1": _r(f), "support": int(s)}
                      for label, p, r, f, s in zip(rows, precision, recall, f1, support)},
    }


def classification_report_text(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> str:
    """scikit-learn's text report (as seed B prints it), with an `invalid` row when there were any."""
    from sklearn.metrics import classification_report

    return classification_report(list(gold), list(predicted), labels=label_order(labels, predicted), digits=4,
                                 zero_division=0)


def confusion_counts(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> tuple[List[str], list]:
    """(row/column names, counts[actual][predicted]) over `label_order`."""
    from sklearn.metrics import confusion_matrix

    names = label_order(labels, predicted)
    return names, confusion_matrix(list(gold), list(predicted), labels=names).tolist()


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of examples on which two prediction lists agree (e.g. greedy vs score mode)."""
    if len(a) != len(b) or not a:
        raise ValueError("agreement needs two non-empty lists of equal length")
    return _r(sum(x == y for x, y in zip(a, b)) / len(a))
