"""Rows in, result files out: gold labels, clear errors on bad input, atomic result folders."""
from __future__ import annotations

import csv
import json

import pytest

from hatetune import evaluation
from hatetune.errors import HatetuneError
from hatetune.parsing import INVALID

LABELS = ["Hate", "Neutral", "Supportive"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(text, output):
    return {"instruction": "Classify:", "input": text, "output": output, "system": ""}


def test_gold_labels_match_the_task_spelling(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [_row("a", "hate"), _row("b", " Supportive "), _row("c", "NEUTRAL")])
    rows, gold = evaluation.load_rows(path, LABELS)
    assert gold == ["Hate", "Supportive", "Neutral"] and len(rows) == 3


@pytest.mark.parametrize("bad, field", [({"output": "spam"}, "output"), ({"input": None}, "input"),
                                        ({"instruction": 3}, "instruction")])
def test_bad_rows_name_file_row_and_field(tmp_path, bad, field):
    path = _jsonl(tmp_path / "rows.jsonl", [_row("a", "Hate"), {**_row("b", "Hate"), **bad}])
    with pytest.raises(HatetuneError) as err:
        evaluation.load_rows(path, LABELS)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 2, field)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(HatetuneError, match="convert stage"):
        evaluation.load_rows(tmp_path / "nope.jsonl", LABELS)


def test_results_are_written_together(tmp_path):
    rows = [{"input": "x", "id": "r1"}, {"input": "y"}]
    result = evaluation.score(rows, ["Hate", "Neutral"], ["Hate", INVALID], LABELS, outputs=["hate!", "dunno"],
                              columns={"score_label": ["Hate", "Hate"]},
                              extra_metrics={"agreement_greedy_score": 0.5, "truncated_prompts": 0})
    base = tmp_path / "metrics" / "eval"
    evaluation.write_results(base, {"test": result}, run_info={"mode": "greedy"}, title="fine-tuned")
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())["test"]
    assert metrics["accuracy"] == 0.5 and metrics["invalid_rate"] == 0.5 and metrics["agreement_greedy_score"] == 0.5
    assert metrics["truncated_prompts"] == 0
    records = [json.loads(line) for line in (base / "test" / "predictions.jsonl").read_text().splitlines()]
    assert records[0] == {"id": "r1", "text": "x", "gold": "Hate", "raw_output": "hate!", "predicted": "Hate",
                          "score_label": "Hate"}
    assert records[1]["id"] == "2"  # rows without id get their 1-based position
    with open(base / "test" / "confusion.csv") as f:
        assert list(csv.reader(f)) == [["actual", "predicted"], ["Hate", "Hate"], ["Neutral", INVALID]]
    assert (base / "test" / "confusion.png").read_bytes().startswith(b"\x89PNG")
    assert "Neutral" in (base / "test" / "classification_report.txt").read_text()
    assert not list(tmp_path.glob("metrics/.*.tmp"))  # no temporary left behind


def test_output_names(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"eval": {"output": None, "data": None, "adapter": True, "splits": ["test", "dev"],
                                     "calibration": {"method": "threshold"}}, "task": {"name": "mhs"}})
    assert str(evaluation.output_base(cfg)) == "metrics/eval" and evaluation.carbon_stage(cfg) == "evaluate"
    assert list(evaluation.eval_files(cfg)) == ["test", "dev"]
    cfg.eval.adapter = False
    assert str(evaluation.output_base(cfg)) == "metrics/zeroshot"
    assert evaluation.carbon_stage(cfg) == "evaluate_zeroshot"
    cfg.eval.data = "some/where/my_rows.jsonl"
    assert str(evaluation.output_base(cfg)) == "metrics/external/my_rows" and evaluation.carbon_stage(cfg) is None
    assert list(evaluation.eval_files(cfg)) == ["dev", "my_rows"]  # dev: where the threshold is fitted
    cfg.eval.calibration.method = "none"
    assert list(evaluation.eval_files(cfg)) == ["my_rows"]
