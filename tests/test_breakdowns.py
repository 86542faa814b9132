"""hatetune.breakdowns: whom a post targets, from the upstream columns through labels -> convert to the extra keys of
every Alpaca row (never into the prompt), on fixtures in the DynaHate and MHS upstream schemas."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hatetune import breakdowns, config, labels, prompts, records, sources
from hatetune.errors import HatetuneError
from upstream_fixtures import DYNAHATE_COLUMNS, dynahate_rows, mhs_rows, write_csv, write_dynahate, write_mhs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tasks():
    return {name: config.validate(config.compose([f"task={name}"])).task for name in ("dynahate", "mhs")}


def canonical(tmp_path, write, name, task):
    src = write(tmp_path / "src" / name)
    sources.fetch({"name": "x", "kind": "local", "path": str(src)}, tmp_path / "raw")
    return labels.canonical_table(records.read_raw_dir(tmp_path / "raw", labels.required_columns(task)), task, seed=0)


def test_dynahate_groups_follow_each_row_and_split_multi_target_cells(tmp_path, tasks):
    rows = dynahate_rows()
    table = canonical(tmp_path, lambda p: write_dynahate(p, rows), "d.csv", tasks["dynahate"]).table.set_index("id")
    for row in rows:
        got = table.loc[row["acl.id"]]
        assert got["target"] == [t.strip() for t in row["target"].split(",")]  # "bla, jew" -> both groups
        assert (got["type"], got["level"], got["round"]) == ([row["type"]], [row["level"]], [row["round"]])
    assert ["bla", "jew"] in table["target"].tolist()


def test_labels_csv_joins_groups_and_convert_writes_lists_and_strings(tmp_path, monkeypatch, tasks):
    from stages import convert, download, labels as labels_stage

    write_dynahate(tmp_path / "mirror" / "dynahate" / "d.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATETUNE_MIRROR", str(tmp_path / "mirror"))
    for stage in (download, labels_stage, convert):
        assert stage.main(["--params", str(ROOT / "params.yaml"), "data.max_examples.train=null",
                           "data.max_examples.dev=null", "data.max_examples.test=null"]) == 0
    table = labels.read_canonical("data/interim/dynahate/labels.csv")
    assert "bla|jew" in set(table["target"]) and set(table["level"]) == {"original", "perturbation"}
    written = [json.loads(line) for split in ("train", "dev", "test")
               for line in Path(f"data/processed/dynahate/{split}.jsonl").read_text().splitlines()]
    by_id = {r["acl.id"]: r for r in dynahate_rows()}
    for row in written:
        source = by_id[row["id"]]
        assert row["target"] == [t.strip() for t in source["target"].split(",")]  # a multi-group breakdown: a list
        assert (row["type"], row["level"], row["round"]) == (source["type"], source["level"], source["round"])
        assert prompts.extra_keys(row) == ["target", "type", "level", "round"]
    # extra keys never reach the prompt: the same user turn as the row without them
    row = written[0]
    plain = {k: row[k] for k in ("instruction", "input", "output", "system")}
    assert prompts.user_message(row) == prompts.user_message(plain)
    assert prompts.build_prompt(row, tasks["mhs"].prompt) == prompts.build_prompt(plain, tasks["mhs"].prompt)


def test_mhs_flags_count_for_a_comment_when_half_its_annotators_tick_them(tmp_path, tasks):
    rows = mhs_rows(n_comments=12)
    table = canonical(tmp_path, lambda p: write_mhs(p, rows), "m.parquet", tasks["mhs"]).table.set_index("id")
    for c in range(12):
        expected = [g for g, on in (("race", c % 2 == 0), ("religion", c % 3 == 0), ("gender", c % 5 == 0),
                                    ("age", c % 4 == 1)) if on]  # origin: 1 of 3 annotators, never a majority
        assert sorted(table.loc[str(20000 + c), "target"]) == sorted(expected), c


def test_mhs_csv_booleans_and_the_per_row_legacy_split(tmp_path, tasks):
    rows = mhs_rows(n_comments=10)
    for row in rows:  # a CSV spells booleans as text
        row["target_race"] = "True" if row["target_race"] else "False"
    task = config.validate(config.compose(["task=mhs", "task.split.strategy=legacy_row_split",
                                           "task.split.legacy_rows=30"])).task
    table = canonical(tmp_path, lambda p: write_mhs(p, rows), "m.csv", task).table
    for _, got in table.iterrows():  # one row per annotation: its own ticks
        comment, annotator = got["id"].split("-")
        source = next(r for r in rows if str(r["comment_id"]) == comment and str(r["annotator_id"]) == annotator)
        assert ("origin" in got["target"]) == source["target_origin"]
        assert ("race" in got["target"]) == (source["target_race"] == "True")


def test_a_flag_that_is_not_a_boolean_names_its_row_and_column(tmp_path, tasks):
    rows = mhs_rows(n_comments=6)
    rows[4]["target_gender"] = "maybe"
    with pytest.raises(HatetuneError) as err:
        canonical(tmp_path, lambda p: write_mhs(p, rows), "m.csv", tasks["mhs"])
    assert (err.value.row, err.value.field) == (6, "target_gender") and "not a boolean" in err.value.message


def test_a_group_name_holding_the_join_character_is_an_error(tmp_path, tasks):
    rows = dynahate_rows()
    rows[30]["target"] = "wom|bla"
    with pytest.raises(HatetuneError) as err:
        canonical(tmp_path, lambda p: write_dynahate(p, rows), "d.csv", tasks["dynahate"])
    assert err.value.field == "target" and "joins groups" in err.value.message
    lines = Path(err.value.file).read_text(encoding="utf-8").split("\n")
    assert "wom|bla" in lines[err.value.row - 1]  # the file line, as `sed -n` shows it


def test_a_missing_breakdown_column_is_a_missing_required_column(tmp_path, tasks):
    without_round = [c for c in DYNAHATE_COLUMNS if c != "round"]
    with pytest.raises(HatetuneError, match="missing required column.*round"):
        canonical(tmp_path, lambda p: write_csv(p, dynahate_rows(), without_round), "d.csv", tasks["dynahate"])


def test_decode_needs_the_breakdown_columns(tasks):
    table = pd.DataFrame({"id": ["1"], "target": ["wom|bla"], "type": [""], "level": ["original"], "round": ["1"]})
    decoded = breakdowns.decode(table, tasks["dynahate"].breakdowns.columns, "labels.csv")
    assert decoded.loc[0, "target"] == ["wom", "bla"] and decoded.loc[0, "type"] == ""
    with pytest.raises(HatetuneError, match="rerun the labels stage"):
        breakdowns.decode(table.drop(columns=["round"]), tasks["dynahate"].breakdowns.columns, "labels.csv")


@pytest.mark.parametrize("override, key", [
    ("task.breakdowns.columns.text={column: x}", "task.breakdowns.columns.text"),
    ("task.breakdowns.columns.target={column: target, flags: [a]}", "task.breakdowns.columns.target"),
    ("task.breakdowns.columns.target={flags: [a], separator: ','}", "task.breakdowns.columns.target"),
    ("task.breakdowns.gap=colour", "task.breakdowns.gap"),
    ("eval.min_group_size=0", "eval.min_group_size"),
])
def test_bad_breakdown_config_names_the_key(override, key):
    with pytest.raises(HatetuneError) as err:
        config.load([override], ROOT / "params.yaml")
    assert err.value.field == key
