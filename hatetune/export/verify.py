"""The export's check: labels of the exported model against the merged model's (what rounding to Q8_0 / F16 changed)
and against the evaluate stage's predictions (what merging a QLoRA adapter into the unquantized base changed).

Rounding moves every label score a little, so it flips a label only where the merged model nearly tied: the
report gives the score differences and the largest merged-model margin among flipped rows, which tell rounding
(flips at margins about the size of the score error) from a broken export (large errors, flips at any margin).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .. import metrics

TARGET_AGREEMENT = 0.99


def top2_margin(scores: Sequence[float]) -> float:
    """How far the most likely label is ahead of the second (in log-likelihood)."""
    best = sorted(scores, reverse=True)
    return best[0] - best[1] if len(best) > 1 else float("inf")


def label_summary(predicted: Sequence[str], gold: Sequence[str], labels: Sequence[str]) -> dict:
    found = metrics.classification_metrics(gold, predicted, labels)
    return {"accuracy": found["accuracy"], "macro_f1": found["macro_f1"], "invalid_rate": found["invalid_rate"]}


def agreement(a: Optional[Sequence[str]], b: Optional[Sequence[str]]) -> Optional[float]:
    return metrics.agreement(a, b) if a is not None and b is not None else None


def compare(exported: Optional[Mapping], merged: Mapping, gold: Sequence[str], labels: Sequence[str],
            evaluated: Optional[Sequence[str]]) -> dict:
    """`exported` / `merged`: `inference.classify` results (with log_probs) on the same rows; `evaluated`: the
    evaluate stage's labels of those rows (None when it did not evaluate them). Deterministic numbers only."""
    found = {"rows": len(gold), "agreement_target": TARGET_AGREEMENT,
             "agreement_merged_evaluate": agreement(merged["predicted"], evaluated),
             "merged": label_summary(merged["predicted"], gold, labels),
             "agreement_exported_merged": None, "agreement_exported_evaluate": None, "exported": None,
             "flipped_rows": None, "max_merged_margin_of_flips": None, "score_abs_diff_mean": None,
             "score_abs_diff_max": None}
    if exported is None:
        return found
    found.update(agreement_exported_merged=agreement(exported["predicted"], merged["predicted"]),
                 agreement_exported_evaluate=agreement(exported["predicted"], evaluated),
                 exported=label_summary(exported["predicted"], gold, labels))
    flips = [i for i, (a, b) in enumerate(zip(exported["predicted"], merged["predicted"])) if a != b]
    found["flipped_rows"] = len(flips)
    if merged.get("log_probs") and exported.get("log_probs"):
        diffs = [abs(a - b) for x, y in zip(exported["log_probs"], merged["log_probs"]) for a, b in zip(x, y)]
        found.update(score_abs_diff_mean=round(sum(diffs) / len(diffs), 4), score_abs_diff_max=round(max(diffs), 4),
                     max_merged_margin_of_flips=round(max((top2_margin(merged["log_probs"][i]) for i in flips),
                                                          default=0.0), 4))
    return found
