"""hatetune.group_metrics and evaluation.score's breakdown: results per group, small groups flagged, the gap between
groups, on records whose numbers can be counted by hand."""
from __future__ import annotations

import json

import pytest

from hatetune import evaluation, group_metrics, paths
from hatetune.group_metrics import Breakdown

LABELS = ["hate", "not hate"]


def _rows_and_predictions():
    """12 posts: `wom` 6 (5 right), `bla` 4 (2 right), one post in both, `none` 3 not-hate (1 false alarm)."""
    spec = [  # (target, gold, predicted)
        (["wom"], "hate", "hate"), (["wom"], "hate", "hate"), (["wom"], "hate", "hate"), (["wom"], "hate", "hate"),
        (["wom", "bla"], "hate", "hate"), (["wom"], "hate", "not hate"),
        (["bla"], "hate", "not hate"), (["bla"], "hate", "hate"), (["bla"], "hate", "not hate"),
        (["none"], "not hate", "not hate"), (["none"], "not hate", "hate"), (["none"], "not hate", "not hate"),
    ]
    rows = [{"instruction": "i", "input": f"post {i}", "output": gold, "system": "", "id": str(i), "target": target,
             "round": "1" if i % 2 else "2a"} for i, (target, gold, _) in enumerate(spec)]
    return rows, [g for _, g, _ in spec], [p for _, _, p in spec]


def test_per_group_accuracy_f1_and_rates_count_multi_group_posts_in_each_group():
    rows, gold, predicted = _rows_and_predictions()
    records = [{**r, "gold": g, "predicted": p} for r, g, p in zip(rows, gold, predicted)]
    table = group_metrics.group_table(records, "target", "hate", min_size=5)
    assert table["wom"]["n"] == 6 and table["wom"]["accuracy"] == pytest.approx(5 / 6, abs=1e-6)
    assert table["bla"]["n"] == 4 and table["bla"]["accuracy"] == 0.5  # the two-target post counts here too
    assert table["wom"]["f1"] == pytest.approx(2 * 5 / (2 * 5 + 0 + 1), abs=1e-6)
    assert table["none"]["accuracy"] == pytest.approx(2 / 3, abs=1e-6) and table["none"]["f1"] == 0.0
    assert table["none"]["positive_gold"] == 0 and table["none"]["positive_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert (table["wom"]["small"], table["bla"]["small"], table["none"]["small"]) == (False, True, True)
    lo, hi = table["wom"]["accuracy_ci95"]
    assert lo < 5 / 6 < hi and (lo, hi) == pytest.approx((0.4365, 0.9699), abs=1e-4)  # Wilson, 5 of 6
    assert group_metrics.by_size(table) == ["wom", "bla", "none"]


def test_f1_is_null_where_a_group_has_no_positive_gold_and_no_positive_prediction():
    records = [{"gold": "not hate", "predicted": "not hate", "target": "none"}]
    assert group_metrics.group_table(records, "target", "hate", 1)["none"]["f1"] is None


@pytest.mark.parametrize("value, groups", [("wom", ["wom"]), (["a", "b"], ["a", "b"]), ("", []), (None, []),
                                           ([], [])])
def test_a_value_names_one_group_a_list_several_and_empty_none(value, groups):
    assert group_metrics.groups_of(value) == groups


def test_the_gap_leaves_out_small_groups_and_values_that_are_no_group():
    table = {"a": {"n": 30, "accuracy": 0.9, "small": False}, "b": {"n": 20, "accuracy": 0.6, "small": False},
             "c": {"n": 3, "accuracy": 0.0, "small": True}, "none": {"n": 90, "accuracy": 0.2, "small": False}}
    gap = group_metrics.extremes(table, not_groups=["none"])
    assert (gap["accuracy_gap"], gap["worst_group"], gap["best_group"], gap["groups_compared"]) == (0.3, "b", "a", 2)
    assert (gap["worst_n"], gap["best_accuracy"]) == (20, 0.9)
    lone = group_metrics.extremes({"a": table["a"], "c": table["c"]})
    assert lone["accuracy_gap"] is None and lone["groups_compared"] == 1 and lone["worst_group"] == "a"
    assert group_metrics.extremes({})["worst_group"] is None


def test_score_breaks_down_by_every_extra_key_and_writes_groups_json(tmp_path):
    rows, gold, predicted = _rows_and_predictions()
    spec = Breakdown(positive="hate", min_size=5, gap="target", not_groups=["none"])
    result = evaluation.score(rows, gold, predicted, LABELS, breakdown=spec)
    assert set(result["groups"]["breakdowns"]) == {"target", "round"}
    assert result["records"][4]["target"] == ["wom", "bla"] and result["records"][0]["round"] == "2a"
    gap = result["metrics"]["group_gap"]
    # bla (4 posts) is small at min_size 5, none is no group: only wom is left, so no gap
    assert gap["breakdown"] == "target" and gap["accuracy_gap"] is None and gap["worst_group"] == "wom"
    looser = evaluation.score(rows, gold, predicted, LABELS, breakdown=Breakdown("hate", 4, "target", ["none"]))
    assert looser["metrics"]["group_gap"]["accuracy_gap"] == pytest.approx(5 / 6 - 0.5, abs=1e-6)
    evaluation.write_results(tmp_path / "eval", {"test": result}, run_info={}, title="t")
    written = json.loads((tmp_path / "eval" / "test" / paths.GROUPS_FILE).read_text())
    assert written["min_size"] == 5 and written["breakdowns"]["target"]["wom"]["n"] == 6
    assert json.loads((tmp_path / "eval.json").read_text())["test"]["group_gap"]["worst_group"] == "wom"


def test_without_a_breakdown_nothing_is_broken_down_but_records_keep_their_extra_keys(tmp_path):
    rows, gold, predicted = _rows_and_predictions()
    result = evaluation.score(rows, gold, predicted, LABELS)
    assert "groups" not in result and "group_gap" not in result["metrics"]
    assert result["records"][4]["target"] == ["wom", "bla"]
    evaluation.write_results(tmp_path / "eval", {"test": result}, run_info={}, title="t")
    assert not (tmp_path / "eval" / "test" / paths.GROUPS_FILE).exists()


def test_rows_without_group_keys_get_no_breakdown_even_when_asked():
    rows = [{"instruction": "i", "input": "x", "output": "hate", "system": ""}]  # a hand-made eval.data row
    result = evaluation.score(rows, ["hate"], ["hate"], LABELS, breakdown=Breakdown("hate", 10, "target"))
    assert "groups" not in result and "group_gap" not in result["metrics"]
