"""Scores users can act on: label probabilities, a temperature and a decision threshold fitted on the dev split.

Label scoring gives every post the log-likelihood of each label (answer + EOS). From those:
- probabilities: a softmax over the task's labels of log-likelihood / T, with the temperature T fitted on dev
  (minimum negative log-likelihood), so that "0.8" means right about 80% of the time (reliability curve, ECE);
- the decision: the positive label (`hate`, `Hate`) wins when its probability reaches the threshold, otherwise the
  most likely other label; for a binary task that is exactly a threshold on P(hate). The threshold is chosen on
  dev for macro-F1 (the middle of the best plateau, so it does not sit on one dev example's score) or as the
  lowest threshold that reaches a target precision. Evaluation and serving both call `decide`.
A fixed argmax (threshold = the point where P(hate) beats every other label) is one point of that curve; a
trust-and-safety team picks its own with `eval.calibration`.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

METHODS = ("none", "threshold")
OBJECTIVES = ("macro_f1", "precision")


def probabilities(log_probs: Sequence[Sequence[float]], temperature: float = 1.0) -> np.ndarray:
    """[n, labels] probabilities over the label set (softmax of log-likelihood / temperature)."""
    z = np.asarray(log_probs, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def decide(probs: np.ndarray, labels: Sequence[str], positive: str, threshold: float) -> list[str]:
    """The label of each row: `positive` when its probability >= threshold, else the most likely other label."""
    k = list(labels).index(positive)
    others = np.array(probs, dtype=np.float64, copy=True)
    others[:, k] = -np.inf
    chosen = np.where(probs[:, k] >= threshold, k, others.argmax(axis=1))
    return [labels[i] for i in chosen]


def fit_temperature(log_probs: Sequence[Sequence[float]], gold_index: Sequence[int]) -> float:
    """The temperature minimising the negative log-likelihood of the gold labels (golden-section search on log T)."""
    z = np.asarray(log_probs, dtype=np.float64)
    gold = np.asarray(gold_index)

    def nll(log_t: float) -> float:
        p = probabilities(z, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(gold)), gold], 1e-12, None)).mean())

    lo, hi = math.log(0.05), math.log(50.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return round(math.exp((lo + hi) / 2), 4)


def _macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(list(gold), list(predicted), labels=list(labels), average="macro", zero_division=0))


def choose_threshold(probs: np.ndarray, gold: Sequence[str], labels: Sequence[str], positive: str,
                     objective: str = "macro_f1", target_precision: float = 0.9) -> dict:
    """The decision threshold on P(positive) for `objective`, from the dev rows' probabilities: `macro_f1` (the
    middle of the widest best plateau), `precision` (the lowest reaching `target_precision`) or `prevalence` (the
    threshold that flags as many dev rows as are positive: a quantile of the scores, so it does not chase one
    dev example the way a maximum of the F1 curve can)."""
    k = list(labels).index(positive)
    scores = np.unique(probs[:, k])
    # candidates between consecutive scores (and below / above all): each gives a distinct decision
    cuts = np.concatenate([[0.0], (scores[1:] + scores[:-1]) / 2, [1.0 + 1e-9]])
    is_pos = np.asarray(gold) == positive
    rows = []
    for t in cuts:
        predicted = decide(probs, labels, positive, t)
        flagged = np.asarray(predicted) == positive
        tp = int((flagged & is_pos).sum())
        precision = tp / flagged.sum() if flagged.any() else 1.0
        recall = tp / is_pos.sum() if is_pos.any() else 0.0
        rows.append((float(t), _macro_f1(gold, predicted, labels), float(precision), float(recall),
                     int(flagged.sum())))
    if objective == "precision":
        reached = [r for r in rows if r[2] >= target_precision and r[3] > 0]
        if reached:
            best = min(reached, key=lambda r: r[0])  # the lowest threshold reaching it: the most recall
            return {"threshold": best[0], "macro_f1": best[1], "precision": best[2], "recall": best[3],
                    "target_reached": True}
        best = max(rows, key=lambda r: (r[2], r[3]))
        return {"threshold": best[0], "macro_f1": best[1], "precision": best[2], "recall": best[3],
                "target_reached": False}
    if objective == "prevalence":
        gap = [abs(r[4] - int(is_pos.sum())) for r in rows]
        plateau = [i for i, g in enumerate(gap) if g == min(gap)]
    else:
        top = max(r[1] for r in rows)
        plateau = [i for i, r in enumerate(rows) if r[1] >= top - 1e-12]
    # the middle of the longest run of best thresholds
    runs, start = [], plateau[0]
    for a, b in zip(plateau, plateau[1:] + [None]):
        if b != a + 1:
            runs.append((start, a))
            start = b
    first, last = max(runs, key=lambda r: r[1] - r[0])
    t = (rows[first][0] + rows[last][0]) / 2
    predicted = decide(probs, labels, positive, t)
    flagged, tp = np.asarray(predicted) == positive, 0
    tp = int((flagged & is_pos).sum())
    return {"threshold": t, "macro_f1": _macro_f1(gold, predicted, labels),
            "precision": tp / flagged.sum() if flagged.any() else 1.0, "recall": tp / is_pos.sum() if is_pos.any() else 0.0}


def fit(log_probs: Sequence[Sequence[float]], gold: Sequence[str], labels: Sequence[str], positive: Optional[str],
        objective: str = "macro_f1", target_precision: float = 0.9, temperature: bool = True) -> dict:
    """Everything `decide` needs, fitted on the dev rows: the positive label, temperature, threshold."""
    positive = positive or labels[0]
    gold_index = [list(labels).index(g) for g in gold]
    t = fit_temperature(log_probs, gold_index) if temperature else 1.0
    probs = probabilities(log_probs, t)
    chosen = choose_threshold(probs, gold, labels, positive, objective, target_precision)
    return {"positive": positive, "labels": list(labels), "temperature": t, "objective": objective,
            "target_precision": target_precision if objective == "precision" else None,
            "threshold": round(chosen["threshold"], 6),
            "dev": {k: round(v, 6) if isinstance(v, float) else v for k, v in chosen.items() if k != "threshold"},
            "dev_rows": len(gold)}


def apply(calibration: Mapping, log_probs: Sequence[Sequence[float]]) -> tuple[list[str], list[float]]:
    """(labels, P(positive)) of rows under a fitted calibration."""
    probs = probabilities(log_probs, calibration["temperature"])
    labels, positive = calibration["labels"], calibration["positive"]
    return decide(probs, labels, positive, calibration["threshold"]), probs[:, labels.index(positive)].tolist()


def reliability(p_positive: Sequence[float], is_positive: Sequence[bool], bins: int = 10) -> dict:
    """Reliability diagram data (mean predicted P vs observed frequency per equal-width bin) and the expected
    calibration error."""
    p, y = np.asarray(p_positive, dtype=np.float64), np.asarray(is_positive, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            table.append({"bin": b, "mean_p": float(p[mask].mean()), "frequency": float(y[mask].mean()),
                          "count": int(mask.sum())})
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return {"bins": table, "ece": round(float(ece), 6)}


def pr_curve(p_positive: Sequence[float], is_positive: Sequence[bool]) -> dict:
    """Precision-recall curve of P(positive) (scikit-learn), and its average precision."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(list(is_positive), list(p_positive))
    return {"precision": precision.tolist(), "recall": recall.tolist(),
            "average_precision": round(float(average_precision_score(list(is_positive), list(p_positive))), 6)}


def summarise(rule: Mapping, log_probs: Mapping[str, Sequence[Sequence[float]]],
              gold: Mapping[str, Sequence[str]]) -> dict:
    """What an evaluation run reports about its decision rule, per split: PR curves and reliability diagrams of
    P(positive) (dev also before the temperature), average precision and ECE, and the chosen operating point."""
    positive, labels = rule["positive"], rule["labels"]
    k = labels.index(positive)
    out = {"rule": dict(rule), "pr_curves": {}, "reliability": {}, "metrics": {}}
    for split, rows in log_probs.items():
        is_pos = [g == positive for g in gold[split]]
        p = probabilities(rows, rule["temperature"])[:, k]
        curve, diagram = pr_curve(p, is_pos), reliability(p, is_pos)
        out["pr_curves"][split] = curve
        if split == "dev" and rule["temperature"] != 1.0:
            out["reliability"]["dev, T = 1"] = reliability(probabilities(rows)[:, k], is_pos)
        out["reliability"][f"{split}, T = {rule['temperature']:g}"] = diagram
        out["metrics"][split] = {"threshold": rule["threshold"], "temperature": rule["temperature"],
                                 "average_precision": curve["average_precision"], "ece": diagram["ece"]}
    out["chosen_point"] = (rule["dev"]["recall"], rule["dev"]["precision"])
    return out
