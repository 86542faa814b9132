"""The convert stage and `labels.stratified_sample`: Alpaca JSONL per split, subsampled, deterministic."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hatetune import labels
from upstream_fixtures import write_dynahate, write_mhs

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["instruction", "input", "output", "system", "id"]


def test_stratified_sample_keeps_proportions_order_and_seed():
    table = pd.DataFrame({"id": [str(i) for i in range(100)], "label": ["a"] * 70 + ["b"] * 20 + ["c"] * 10})
    sample = labels.stratified_sample(table, 10, seed=0)
    assert sample["label"].value_counts().to_dict() == {"a": 7, "b": 2, "c": 1}
    assert sample.index.is_monotonic_increasing  # the table's order
    assert sample.equals(labels.stratified_sample(table, 10, seed=0))
    assert not sample.equals(labels.stratified_sample(table, 10, seed=1))
    assert len(labels.stratified_sample(table, 7, seed=0)) == 7  # rounding remainders are handed out
    assert labels.stratified_sample(table, None, seed=0) is table
    assert labels.stratified_sample(table, 500, seed=0) is table


def prepare(tmp_path: Path, monkeypatch, task: str) -> None:
    """data/raw and data/interim for `task`, made by the real download (local mirror) and labels stages."""
    from stages import download, labels as labels_stage

    if task == "dynahate":
        write_dynahate(tmp_path / "mirror" / "dynahate" / "dynahate_v0.2.2_dev.csv")
    else:
        write_mhs(tmp_path / "mirror" / "measuring-hate-speech" / "train.parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATETUNE_MIRROR", str(tmp_path / "mirror"))
    for stage in (download, labels_stage):
        assert stage.main(["--params", str(ROOT / "params.yaml"), f"task={task}"]) == 0


def run_convert(*overrides: str) -> dict[str, bytes]:
    from stages import convert

    assert convert.main(["--params", str(ROOT / "params.yaml"), *overrides]) == 0
    return {s: Path(f"data/processed/{overrides[0].split('=')[1]}/{s}.jsonl").read_bytes() for s in labels.SPLITS}


def test_convert_writes_alpaca_jsonl_per_split(tmp_path, monkeypatch):
    prepare(tmp_path, monkeypatch, "dynahate")
    canonical = labels.read_canonical("data/interim/dynahate/labels.csv").set_index("id")
    outputs = run_convert("task=dynahate", "data.max_examples.train=null", "data.max_examples.dev=null",
                          "data.max_examples.test=null")
    seen = []
    for split, data in outputs.items():
        lines = data.decode().splitlines()
        assert lines, split
        for line in lines:
            row = json.loads(line)
            assert list(row) == KEYS + ["target", "type", "level", "round"]  # extra keys: the breakdowns
            source = canonical.loc[row["id"]]
            assert (row["input"], row["output"], source["split"]) == (source["text"], source["label"], split)
            assert row["system"] == "Strictly respond only with the label: 'hate' or 'not hate'."
            seen.append(row["id"])
    assert sorted(seen) == sorted(canonical.index)  # null max_examples keeps every row


def test_convert_subsamples_per_split_deterministically(tmp_path, monkeypatch):
    prepare(tmp_path, monkeypatch, "mhs")
    overrides = ("task=mhs", "data.max_examples.train=10", "data.max_examples.dev=2", "data.max_examples.test=3")
    first = run_convert(*overrides)
    assert [len(first[s].splitlines()) for s in labels.SPLITS] == [10, 2, 3]
    rows = [json.loads(line) for line in first["train"].splitlines()]
    assert {r["output"] for r in rows} == {"Hate", "Neutral", "Supportive"}
    assert rows[0]["system"] == "" and rows[0]["instruction"].startswith("Below is a short text")
    assert run_convert(*overrides) == first  # byte-identical on rerun


def test_convert_without_labels_exits_non_zero(tmp_path, monkeypatch, capsys):
    from stages import convert

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        convert.main(["--params", str(ROOT / "params.yaml")])
    assert exit_.value.code != 0
    assert "run the labels stage first" in capsys.readouterr().err
    assert not (tmp_path / "data" / "processed").exists()
