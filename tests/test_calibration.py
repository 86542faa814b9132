"""hatetune.calibration: probabilities, the temperature, the decision threshold and its curves, on synthetic
scores whose right answers are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hatetune import calibration

LABELS = ["hate", "not hate"]


def _binary_log_probs(margins):
    """Log-likelihoods whose difference (hate - not hate) is each margin."""
    return [[m / 2, -m / 2] for m in margins]


def test_probabilities_are_a_softmax_over_the_labels():
    p = calibration.probabilities([[math.log(0.2), math.log(0.6)], [0.0, 0.0]])
    assert p.ravel().tolist() == pytest.approx([0.25, 0.75, 0.5, 0.5])
    assert calibration.probabilities([[2.0, 0.0]], temperature=2.0)[0, 0] == pytest.approx(1 / (1 + math.exp(-1)))


def test_decide_is_a_threshold_on_the_positive_label_then_argmax_of_the_rest():
    probs = np.array([[0.30, 0.70], [0.55, 0.45], [0.45, 0.55]])
    assert calibration.decide(probs, LABELS, "hate", 0.5) == ["not hate", "hate", "not hate"]
    assert calibration.decide(probs, LABELS, "hate", 0.25) == ["hate", "hate", "hate"]
    three = np.array([[0.30, 0.50, 0.20], [0.30, 0.20, 0.50], [0.60, 0.30, 0.10]])
    assert calibration.decide(three, ["Hate", "Neutral", "Supportive"], "Hate", 0.3) == ["Hate", "Hate", "Hate"]
    assert calibration.decide(three, ["Hate", "Neutral", "Supportive"], "Hate", 0.5) == \
        ["Neutral", "Supportive", "Hate"]


def test_temperature_is_recovered_from_overconfident_scores():
    rng = np.random.default_rng(0)
    margins = rng.normal(0, 3, 4000)  # the model's margins are 2.5x too confident
    p_true = 1 / (1 + np.exp(-margins / 2.5))
    gold_index = [0 if rng.random() < p else 1 for p in p_true]
    assert calibration.fit_temperature(_binary_log_probs(margins), gold_index) == pytest.approx(2.5, rel=0.1)


def test_threshold_for_macro_f1_sits_in_the_middle_of_the_best_plateau():
    # hate scores: the positives are the three highest; every threshold between 0.4 and 0.7 separates perfectly
    p_hate = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    probs = np.stack([p_hate, 1 - p_hate], axis=1)
    gold = ["hate"] * 3 + ["not hate"] * 3
    chosen = calibration.choose_threshold(probs, gold, LABELS, "hate")
    assert chosen["macro_f1"] == 1.0 and 0.4 < chosen["threshold"] <= 0.7
    assert chosen["threshold"] == pytest.approx(0.55)


def test_threshold_for_prevalence_flags_as_many_dev_rows_as_are_positive():
    p_hate = np.array([0.95, 0.9, 0.85, 0.8, 0.6, 0.5, 0.4, 0.2])
    probs = np.stack([p_hate, 1 - p_hate], axis=1)
    gold = ["hate", "not hate", "not hate", "hate", "hate", "not hate", "hate", "not hate"]  # 4 of 8
    chosen = calibration.choose_threshold(probs, gold, LABELS, "hate", objective="prevalence")
    assert 0.6 < chosen["threshold"] <= 0.8  # the 4 highest flagged, whatever the F1 curve does
    assert chosen["precision"] == chosen["recall"] == 0.5
    by_f1 = calibration.choose_threshold(probs, gold, LABELS, "hate")
    assert by_f1["threshold"] != chosen["threshold"]
    # ties: the flagged count closest to the positives' (here 2 or 6 of 8 can be flagged, never 4)
    tied = np.stack([np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1]), np.zeros(8)], axis=1)
    tied[:, 1] = 1 - tied[:, 0]
    found = calibration.choose_threshold(tied, ["hate"] * 3 + ["not hate"] * 5, LABELS, "hate", objective="prevalence")
    assert 0.5 < found["threshold"] <= 0.9 and found["recall"] == pytest.approx(2 / 3)


def test_threshold_for_a_target_precision_is_the_lowest_that_reaches_it():
    p_hate = np.array([0.95, 0.9, 0.85, 0.8, 0.6, 0.5, 0.4, 0.2])
    probs = np.stack([p_hate, 1 - p_hate], axis=1)
    gold = ["hate", "hate", "not hate", "hate", "hate", "not hate", "not hate", "not hate"]
    chosen = calibration.choose_threshold(probs, gold, LABELS, "hate", objective="precision", target_precision=0.75)
    assert chosen["target_reached"] and chosen["precision"] >= 0.75
    assert chosen["recall"] == 1.0 and 0.5 < chosen["threshold"] <= 0.6  # 4 of 5 flagged are hate
    unreachable = calibration.choose_threshold(probs, gold, LABELS, "hate", objective="precision",
                                               target_precision=1.01 - 1e-9)
    assert unreachable["target_reached"] is False or unreachable["precision"] == 1.0


def test_fit_and_apply_correct_a_model_that_says_hate_too_often():
    """The bias the default run had: every score leans to `hate`; the fitted threshold undoes it on dev."""
    rng = np.random.default_rng(1)
    gold = ["hate" if i % 2 else "not hate" for i in range(400)]
    margins = np.array([rng.normal(2.0 if g == "hate" else 0.5, 1.0) for g in gold])  # argmax: mostly hate
    log_probs = _binary_log_probs(margins)
    argmax = ["hate" if m > 0 else "not hate" for m in margins]
    rule = calibration.fit(log_probs, gold, LABELS, None)
    predicted, p_hate = calibration.apply(rule, log_probs)
    recall = {label: np.mean([p == g for p, g in zip(predicted, gold) if g == label]) for label in LABELS}
    assert rule["positive"] == "hate" and rule["threshold"] > 0.5 and min(recall.values()) > 0.7
    assert np.mean([p == "hate" for p in argmax]) > 0.8  # what the plain argmax did
    assert len(p_hate) == 400 and all(0 <= p <= 1 for p in p_hate)


def test_reliability_and_pr_curve():
    rng = np.random.default_rng(2)
    p = rng.random(5000)
    y = rng.random(5000) < p  # perfectly calibrated
    assert calibration.reliability(p, y)["ece"] < 0.03
    assert calibration.reliability(np.clip(p * 0.5, 0, 1), y)["ece"] > 0.2
    curve = calibration.pr_curve([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
    assert curve["average_precision"] == 1.0 and curve["recall"][0] == 1.0


def test_summarise_reports_per_split_curves_and_the_operating_point():
    log_probs = {"dev": _binary_log_probs([3, 2, -1, -2]), "test": _binary_log_probs([2, -3, 1, -1])}
    gold = {"dev": ["hate", "hate", "not hate", "not hate"], "test": ["hate", "not hate", "hate", "not hate"]}
    rule = calibration.fit(log_probs["dev"], gold["dev"], LABELS, "hate")
    summary = calibration.summarise(rule, log_probs, gold)
    assert set(summary["pr_curves"]) == {"dev", "test"}
    assert summary["metrics"]["test"]["threshold"] == rule["threshold"]
    assert summary["chosen_point"] == (rule["dev"]["recall"], rule["dev"]["precision"])
