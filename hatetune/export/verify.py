"""The export's check: labels of the exported model against the merged model's (what rounding to Q8_0 / F16 changed)
and against the evaluate stage's predictions (what merging a QLoRA adapter into the unquantized base changed).

Rounding moves every label score a little, so it flips a label only where the merged model was near its decision
boundary (a near-tie, or in calibrated score mode P(positive) near the threshold): the report gives the score
differences and the largest merged-model margin among flipped rows, in log-likelihood units, which tell rounding
(flips at margins about the size of the score error) from a broken export (large errors, flips at any margin).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from .. import metrics

TARGET_AGREEMENT = 0.99


def top2_margin(scores: Sequence[float]) -> float:
    """How far the most likely label is ahead of the second (in log-likelihood)."""
    best = sorted(scores, reverse=True)
    return best[0] - best[1] if len(best) > 1 else float("inf")


def decision_margin(scores: Sequence[float], labels: Sequence[str], rule: Optional[Mapping] = None) -> float:
    """How far a row's label log-likelihoods are from changing its label, in log-likelihood units: the top-2 gap
    (argmax), or under a decision rule how far the positive label's log-likelihood is from the threshold,
    T * |ln S + logit(threshold)| with S = sum over the other labels of exp((lp_other - lp_positive) / T)
    (and, for a row given another label, the gap between the other labels too)."""
    if rule is None:
        return top2_margin(scores)
    k, t, temp = list(labels).index(rule["positive"]), rule["threshold"], rule["temperature"]
    if not 0 < t < 1:
        return float("inf")  # every row falls on the same side of the threshold
    others = np.array([s for i, s in enumerate(scores) if i != k], dtype=np.float64)
    z = (others - scores[k]) / temp
    log_s = float(z.max() + np.log(np.exp(z - z.max()).sum()))
    to_threshold = temp * abs(log_s + math.log(t / (1 - t)))
    positive = log_s + math.log(t / (1 - t)) <= 0
    return to_threshold if positive or len(others) < 2 else min(to_threshold, top2_margin(others.tolist()))


def label_summary(predicted: Sequence[str], gold: Sequence[str], labels: Sequence[str]) -> dict:
    found = metrics.classification_metrics(gold, predicted, labels)
    return {"accuracy": found["accuracy"], "macro_f1": found["macro_f1"], "invalid_rate": found["invalid_rate"]}


def agreement(a: Optional[Sequence[str]], b: Optional[Sequence[str]]) -> Optional[float]:
    return metrics.agreement(a, b) if a is not None and b is not None else None


def compare(exported: Optional[Mapping], merged: Mapping, gold: Sequence[str], labels: Sequence[str],
            evaluated: Optional[Sequence[str]], rule: Optional[Mapping] = None, tie_margin: float = 0.25) -> dict:
    """`exported` / `merged`: `labeling.classify_rows` results (with log_probs) on the same rows, under `rule` (the
    decision rule both went through, None: none); `evaluated`: the evaluate stage's labels of those rows (None when
    it did not evaluate them). `agreement_beyond_ties`: the agreement on the rows the merged model decides by more
    than `tie_margin`, where rounding cannot explain a flip. Deterministic numbers only."""
    found = {"rows": len(gold), "agreement_target": TARGET_AGREEMENT,
             "agreement_merged_evaluate": agreement(merged["predicted"], evaluated),
             "merged": label_summary(merged["predicted"], gold, labels),
             "agreement_exported_merged": None, "agreement_exported_evaluate": None, "exported": None,
             "flipped_rows": None, "max_merged_margin_of_flips": None, "score_abs_diff_mean": None,
             "score_abs_diff_max": None, "tie_margin": tie_margin, "rows_beyond_ties": None,
             "agreement_beyond_ties": None}
    if exported is None:
        return found
    found.update(agreement_exported_merged=agreement(exported["predicted"], merged["predicted"]),
                 agreement_exported_evaluate=agreement(exported["predicted"], evaluated),
                 exported=label_summary(exported["predicted"], gold, labels))
    flips = [i for i, (a, b) in enumerate(zip(exported["predicted"], merged["predicted"])) if a != b]
    found["flipped_rows"] = len(flips)
    if merged.get("log_probs") and exported.get("log_probs"):
        diffs = [abs(a - b) for x, y in zip(exported["log_probs"], merged["log_probs"]) for a, b in zip(x, y)]
        margins = [decision_margin(scores, labels, rule) for scores in merged["log_probs"]]
        decided = [i for i, margin in enumerate(margins) if margin > tie_margin]
        found.update(score_abs_diff_mean=round(sum(diffs) / len(diffs), 4), score_abs_diff_max=round(max(diffs), 4),
                     max_merged_margin_of_flips=round(max((margins[i] for i in flips), default=0.0), 4),
                     rows_beyond_ties=len(decided),
                     agreement_beyond_ties=agreement([exported["predicted"][i] for i in decided],
                                                     [merged["predicted"][i] for i in decided]) if decided else None)
    return found
