"""Metrics in both seed conventions, computed from constructed predictions (never hard-coded results)."""
from __future__ import annotations

import pytest

from hatetune.metrics import (agreement, classification_metrics, classification_report_text, confusion_counts,
                              label_order)
from hatetune.parsing import INVALID

MHS = ["Hate", "Neutral", "Supportive"]


def _from_confusion(names, counts):
    """gold / predicted lists realising a confusion matrix (rows actual, columns predicted)."""
    gold, pred = [], []
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            gold += [names[i]] * n
            pred += [names[j]] * n
    return gold, pred


def _f1(counts, k):
    tp = counts[k][k]
    fp = sum(counts[i][k] for i in range(len(counts))) - tp
    fn = sum(counts[k]) - tp
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# Seed C's published situation: three real classes plus "Unknown" answers that are always wrong.
NAMES = MHS + [INVALID]
COUNTS = [[130, 30, 5, 15],    # Hate
          [25, 40, 20, 35],    # Neutral
          [5, 10, 160, 5],     # Supportive
          [0, 0, 0, 0]]        # invalid is never a gold label


def test_seed_c_convention_averages_invalid_in():
    gold, pred = _from_confusion(NAMES, COUNTS)
    m = classification_metrics(gold, pred, MHS)
    per_class = [_f1(COUNTS, k) for k in range(4)]
    assert per_class[3] == 0.0
    assert m["macro_f1_with_invalid"] == pytest.approx(sum(per_class) / 4, abs=1e-6)   # (a + b + c + 0) / 4
    assert m["macro_f1"] == pytest.approx(sum(per_class[:3]) / 3, abs=1e-6)            # over the real labels
    assert m["macro_f1"] > m["macro_f1_with_invalid"]
    n = sum(map(sum, COUNTS))
    assert m["accuracy"] == pytest.approx(sum(COUNTS[k][k] for k in range(3)) / n, abs=1e-6)
    assert m["invalid_rate"] == pytest.approx(sum(row[3] for row in COUNTS) / n, abs=1e-6)
    for k, name in enumerate(NAMES):
        assert m["per_class"][name]["f1"] == pytest.approx(per_class[k], abs=1e-6)
        assert m["per_class"][name]["support"] == sum(COUNTS[k])


def test_without_invalid_answers_the_conventions_agree():
    counts = [[8, 2], [3, 7]]
    gold, pred = _from_confusion(["hate", "not hate"], counts)
    m = classification_metrics(gold, pred, ["hate", "not hate"])
    assert m["macro_f1"] == m["macro_f1_with_invalid"] == pytest.approx((_f1(counts, 0) + _f1(counts, 1)) / 2,
                                                                        abs=1e-6)
    assert INVALID not in m["per_class"] and m["invalid_rate"] == 0


def test_seed_b_invalid_counts_wrong_but_is_not_a_class():
    gold = ["hate", "hate", "not hate", "not hate"]
    pred = ["hate", INVALID, "not hate", "not hate"]
    m = classification_metrics(gold, pred, ["hate", "not hate"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["hate"]["recall"] == 0.5 and m["per_class"]["hate"]["precision"] == 1.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2, abs=1e-6)
    assert m["macro_f1_with_invalid"] == pytest.approx((2 / 3 + 1.0 + 0) / 3, abs=1e-6)


def test_report_text_confusion_and_agreement():
    gold, pred = ["hate", "not hate", "hate"], ["hate", INVALID, "not hate"]
    text = classification_report_text(gold, pred, ["hate", "not hate"])
    assert "hate" in text and INVALID in text and "macro avg" in text
    names, counts = confusion_counts(gold, pred, ["hate", "not hate"])
    assert names == label_order(["hate", "not hate"], pred) == ["hate", "not hate", INVALID]
    assert counts == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert agreement(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == 0.75
    with pytest.raises(ValueError):
        classification_metrics(["hate"], [], ["hate"])
