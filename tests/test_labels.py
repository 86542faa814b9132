"""hatetune.labels and the labels stage, on fixtures generated in the DynaHate and MHS upstream schemas."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hatetune import config, labels, paths, records, sources, splits
from hatetune.errors import HatetuneError
from upstream_fixtures import DYNAHATE_COLUMNS, dynahate_rows, mhs_rows, write_csv, write_dynahate, write_mhs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tasks():
    """The task configs as conf/ composes them (validated)."""
    return {name: config.validate(config.compose([f"task={name}"])).task for name in ("dynahate", "mhs")}


def raw_dir_with(tmp_path: Path, write, name: str) -> Path:
    """A data/raw/<task>/ folder holding one file, with its manifest, as the download stage makes it."""
    src = write(tmp_path / "src" / name)
    raw = tmp_path / "raw"
    sources.fetch({"name": "x", "kind": "local", "path": str(src)}, raw)
    return raw


def table_of(tmp_path, write, name, task, seed=42) -> labels.LabelledTable:
    raw = raw_dir_with(tmp_path, write, name)
    return labels.canonical_table(records.read_raw_dir(raw, labels.required_columns(task)), task, seed=seed)


def error_of(tmp_path, write, name, task) -> HatetuneError:
    with pytest.raises(HatetuneError) as err:
        table_of(tmp_path, write, name, task)
    return err.value


# --------------------------------------------------------------------------------------------- binning
@pytest.mark.parametrize("score, label", [(-1.0001, "Supportive"), (-1.0, "Neutral"), (0.0, "Neutral"),
                                          (0.5, "Neutral"), (0.5001, "Hate"), (-3.2, "Supportive"), (4.0, "Hate")])
def test_binning_boundaries(score, label):
    assert labels.bin_scores([score], -1.0, 0.5).tolist() == [label]


def test_binning_uses_the_configured_thresholds():
    assert labels.bin_scores([0.0, 0.2, 0.3], -0.1, 0.2).tolist() == ["Neutral", "Neutral", "Hate"]


# ------------------------------------------------------------------------------------------------ split
def test_linked_groups_keep_pairs_and_chains_together():
    ids = ["a3", "a1", "a2", "b1", "c1", "c2"]
    links = ["a1", "a3", "", "", "c2", ""]  # a1<->a3 pair; c1 -> c2 one-sided; a2, b1 alone
    assert labels.linked_groups(ids, links) == ["a1", "a1", "a2", "b1", "c1", "c1"]
    assert labels.linked_groups(["x", "y", "z"], ["y", "z", ""]) == ["x", "x", "x"]  # chain


def test_grouped_split_puts_no_group_in_two_splits_and_stratifies():
    rng = np.random.default_rng(0)
    groups = [f"g{i // 2}" if i < 400 else f"s{i}" for i in range(1000)]  # 200 pairs + 600 singles
    label_of = {g: rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1]) for g in set(groups)}
    row_labels = [label_of[g] for g in groups]
    split = splits.grouped_split(groups, row_labels, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=1)
    frame = pd.DataFrame({"group": groups, "label": row_labels, "split": split})
    assert frame.groupby("group")["split"].nunique().max() == 1
    share = frame.drop_duplicates("group")["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.8, abs=0.01) and share["test"] == pytest.approx(0.1, abs=0.01)
    for label, part in frame.drop_duplicates("group").groupby("label"):
        counts = part["split"].value_counts(normalize=True)
        assert counts["train"] == pytest.approx(0.8, abs=0.03), label
        assert counts.get("test", 0) == pytest.approx(0.1, abs=0.03), label


def test_grouped_split_is_seeded():
    groups, row_labels = [str(i) for i in range(200)], ["a", "b"] * 100
    fr = {"train": 0.8, "dev": 0.1, "test": 0.1}
    first = splits.grouped_split(groups, row_labels, fr, seed=3)
    assert (first == splits.grouped_split(groups, row_labels, fr, seed=3)).all()
    assert (first != splits.grouped_split(groups, row_labels, fr, seed=4)).any()


def test_quota_sequence_is_proportional_in_every_window():
    seq = splits.quota_sequence(20, {"train": 0.8, "dev": 0.1, "test": 0.1})
    for start in (0, 10):
        window = seq[start:start + 10]
        assert (window.count("train"), window.count("dev"), window.count("test")) == (8, 1, 1)


# -------------------------------------------------------------------------------------------- DynaHate
def test_dynahate_labels_and_upstream_split(tmp_path, tasks):
    rows = dynahate_rows(splits=("train", "dev", "test"))
    result = table_of(tmp_path, lambda p: write_dynahate(p, rows), "dyna.csv", tasks["dynahate"])
    table = result.table
    # the canonical columns, then the task's breakdowns (whom and how a post attacks; hatetune.breakdowns)
    assert list(table.columns) == labels.CANONICAL_COLUMNS + ["target", "type", "level", "round"]
    assert set(table["label"]) == {"hate", "not hate"}
    assert table["label"].tolist() == [{"hate": "hate", "nothate": "not hate"}[r["label"]] for r in rows]
    assert table["split"].tolist() == [r["split"] for r in rows]  # the upstream column, untouched
    assert table["text"].iloc[-1] == rows[-1]["text"] and "\n" in table["text"].iloc[-1]
    assert result.notes["strategy"] == "upstream" and result.warnings == []
    assert table.loc[table["id"] == "acl10025", "group"].item() == "acl10024"  # pair shares the key


def test_dynahate_auto_resplits_a_lone_dev_split_grouped_with_a_warning(tmp_path, tasks):
    result = table_of(tmp_path, write_dynahate, "dyna.csv", tasks["dynahate"])
    table = result.table
    assert set(table["split"]) == {"train", "dev", "test"}
    assert table.groupby("group")["split"].nunique().max() == 1
    # each original/perturbation pair (acl.id.matched) is one group
    assert table["group"].value_counts().value_counts().to_dict() == {1: 24, 2: 12}
    assert result.notes["strategy"] == "grouped" and result.notes["strategy_requested"] == "auto"
    assert len(result.warnings) == 1 and "dev" in result.warnings[0]
    metrics = labels.data_metrics(result, tasks["dynahate"])
    assert metrics["split_strategy"] == "grouped" and metrics["warnings"] == result.warnings
    assert sum(metrics["labels"]["train"].values()) == metrics["rows"]["train"]


def test_dynahate_missing_links_written_as_na_are_no_links(tmp_path, tasks):
    rows = dynahate_rows()
    for row in rows[:24]:
        row["acl.id.matched"] = "NA"  # how R writes a missing value
    result = table_of(tmp_path, lambda p: write_dynahate(p, rows), "dyna.csv", tasks["dynahate"])
    assert result.table["group"].value_counts().value_counts().to_dict() == {1: 24, 2: 12}


def test_dynahate_upstream_strategy_refuses_missing_splits(tmp_path, tasks):
    task = config.validate(config.compose(["task=dynahate", "task.split.strategy=upstream"])).task
    with pytest.raises(HatetuneError, match="no upstream split.*train, test.*auto"):
        table_of(tmp_path, write_dynahate, "dyna.csv", task)


# ------------------------------------------------------------------------------------------------- MHS
def test_mhs_one_row_per_comment_binned_and_grouped(tmp_path, tasks):
    result = table_of(tmp_path, write_mhs, "mhs.parquet", tasks["mhs"])
    table = result.table
    assert len(table) == 40 and table["id"].is_unique
    assert result.notes["scores_aggregated"] is False and result.warnings == []
    expected = {-2.3: "Supportive", -1.0001: "Supportive", -1.0: "Neutral", -0.4: "Neutral", 0.0: "Neutral",
                0.5: "Neutral", 0.5001: "Hate", 1.7: "Hate"}
    from upstream_fixtures import MHS_SCORES
    assert table["label"].tolist() == [expected[MHS_SCORES[c % 8]] for c in range(40)]
    assert table["id"].iloc[0] == "20000" and (table["group"] == table["id"]).all()
    assert set(table["split"]) == {"train", "dev", "test"} and result.notes["strategy"] == "grouped"


def test_mhs_varying_scores_are_averaged_and_reported(tmp_path, tasks):
    # per comment the 3 annotations score base, base+0.1, base+0.2: the mean is base+0.1
    result = table_of(tmp_path, lambda p: write_mhs(p, varying=True), "mhs.csv", tasks["mhs"])
    assert result.notes["scores_aggregated"] is True and result.notes["comments_with_varying_score"] == 40
    assert "mean" in result.warnings[0]
    by_id = result.table.set_index("id")["label"]
    assert by_id["20001"] == "Neutral"  # -1.0001 + 0.1 -> Neutral (a row alone would be Supportive)
    assert by_id["20005"] == "Hate"  # 0.5 + 0.1
    assert labels.data_metrics(result, tasks["mhs"])["scores_aggregated"] is True


def test_mhs_legacy_row_split_is_seed_c_sampling_and_never_the_default(tmp_path, tasks):
    assert tasks["mhs"].split.strategy != "legacy_row_split"
    assert tasks["dynahate"].split.strategy != "legacy_row_split"
    task = config.validate(config.compose(["task=mhs", "task.split.strategy=legacy_row_split",
                                           "task.split.legacy_rows=100"])).task
    result = table_of(tmp_path, write_mhs, "mhs.parquet", task)
    table = result.table
    assert len(table) == 100 and table["id"].is_unique  # annotation rows, not comments
    assert (table["split"] == "test").sum() == 20 and (table["split"] == "dev").sum() == 0
    assert result.notes["groups_in_two_splits"] > 0 and "leak" in result.warnings[0]


# ------------------------------------------------------------------------------------------- bad input
def dyna_with(change):
    rows = dynahate_rows()
    change(rows)
    return lambda p: write_dynahate(p, rows)


def test_rows_are_file_lines_even_after_multiline_texts(tmp_path, tasks):
    # row index 30 comes after 3 perturbed posts spanning two lines each -> line 30 + 2 (header, 1-based) + 3
    err = error_of(tmp_path, dyna_with(lambda rows: rows[30].update(text="   ")), "dyna.csv", tasks["dynahate"])
    assert (err.row, err.field) == (35, "text") and err.file.endswith("dyna.csv")
    lines = (tmp_path / "raw" / "dyna.csv").read_text().split("\n")
    assert lines[err.row - 1].startswith("acl10030,")


@pytest.mark.parametrize("case, change, row, field, pattern", [
    ("empty text", lambda r: r[4].update(text=""), 6, "text", "empty or whitespace"),
    ("whitespace text", lambda r: r[0].update(text=" \t "), 2, "text", "empty or whitespace"),
    ("unknown label", lambda r: r[7].update(label="maybe"), 9, "label", "'maybe' is not in the label set"),
    ("bad split", lambda r: r[2].update(split="validation"), 4, "split", "'validation' is not one of"),
    ("duplicate id", lambda r: r[9].update({"acl.id": "acl10003"}), 11, "acl.id", r"duplicate.*first in .*row 5"),
])
def test_dynahate_bad_rows(tmp_path, tasks, case, change, row, field, pattern):
    err = error_of(tmp_path, dyna_with(change), "dyna.csv", tasks["dynahate"])
    assert (err.row, err.field) == (row, field), case
    assert err.file.endswith("dyna.csv")
    assert re.search(pattern, err.message), err.message


def test_missing_required_columns(tmp_path, tasks):
    rows = dynahate_rows()
    columns = [c for c in DYNAHATE_COLUMNS if c != "label"]
    err = error_of(tmp_path, lambda p: write_csv(p, rows, columns), "dyna.csv", tasks["dynahate"])
    assert (err.row, err.field) == (1, "label") and "missing required column" in err.message


@pytest.mark.parametrize("content, row, pattern", [(b"", 1, "empty"), (b"\n \n", 1, "empty"),
                                                   (",".join(DYNAHATE_COLUMNS).encode() + b"\n", 2, "no data rows")])
def test_empty_files(tmp_path, tasks, content, row, pattern):
    def write(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        return p

    err = error_of(tmp_path, write, "dyna.csv", tasks["dynahate"])
    assert err.row == row and err.file.endswith("dyna.csv") and pattern in err.message


def test_non_utf8_bytes_name_row_and_column(tmp_path, tasks):
    def write(p):
        write_dynahate(p)
        data = p.read_bytes().replace(b"single post number 5 ", b"single post \xe9\xff number 5 ")
        p.write_bytes(data)
        return p

    err = error_of(tmp_path, write, "dyna.csv", tasks["dynahate"])
    assert (err.row, err.field) == (7, "text") and "not valid UTF-8" in err.message and "\\xe9\\xff" in err.message


def test_mhs_nan_and_non_numeric_scores(tmp_path, tasks):
    rows = mhs_rows()
    rows[7]["hate_speech_score"] = float("nan")
    err = error_of(tmp_path, lambda p: write_mhs(p, rows), "mhs.parquet", tasks["mhs"])
    assert (err.row, err.field) == (9, "hate_speech_score") and "not a number" in err.message

    rows = mhs_rows()
    rows[3]["hate_speech_score"] = "high"
    err = error_of(tmp_path / "csv", lambda p: write_mhs(p, rows), "mhs.csv", tasks["mhs"])
    assert (err.row, err.field) == (5, "hate_speech_score") and "'high'" in err.message


def test_mhs_duplicate_annotation_rows(tmp_path, tasks):
    rows = mhs_rows()
    rows.append(dict(rows[4]))
    err = error_of(tmp_path, lambda p: write_mhs(p, rows), "mhs.csv", tasks["mhs"])
    assert (err.row, err.field) == (len(rows) + 1, "annotator_id") and "first in" in err.message
    assert "row 6" in err.message


@pytest.mark.parametrize("column, where", [("text", 4), ("acl.id", 0)])
def test_a_nul_byte_is_rejected_naming_row_and_column(tmp_path, tasks, column, where):
    change = (lambda r: r[where].update(text="a\x00b")) if column == "text" else \
        (lambda r: r[where].update({"acl.id": "acl\x0010000"}))
    err = error_of(tmp_path, dyna_with(change), "dyna.csv", tasks["dynahate"])
    assert (err.row, err.field) == (where + 2, column) and "NUL byte" in err.message


def test_a_duplicate_header_names_the_column_twice(tmp_path, tasks):
    columns = [c if c != "level" else "text" for c in DYNAHATE_COLUMNS]
    err = error_of(tmp_path, lambda p: write_csv(p, dynahate_rows(), columns), "dyna.csv", tasks["dynahate"])
    assert (err.row, err.field) == (1, "text") and "columns 3 and 7" in err.message


def test_a_cell_over_the_limit_names_its_row_and_column(tmp_path, tasks, monkeypatch):
    monkeypatch.setattr(records, "CELL_LIMIT", 200)  # 16 MiB in earnest; a smaller one keeps the test quick
    err = error_of(tmp_path, dyna_with(lambda r: r[3].update(text="x" * 201)), "dyna.csv", tasks["dynahate"])
    assert (err.row, err.field) == (5, "text") and "201 characters" in err.message
    assert len(table_of(tmp_path / "ok", dyna_with(lambda r: r[3].update(text="x" * 200)), "dyna.csv",
                        tasks["dynahate"]).table) == 48


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_files_are_named_as_such(tmp_path, tasks, encoding):
    def write(p):
        write_dynahate(p)
        p.write_bytes(p.read_text(encoding="utf-8").encode(encoding))
        return p

    err = error_of(tmp_path, write, "dyna.csv", tasks["dynahate"])
    assert err.row == 1 and err.field is None and encoding[:6].upper() in err.message and "UTF-8" in err.message


def test_mhs_one_comment_id_with_two_texts_names_both_rows(tmp_path, tasks):
    rows = mhs_rows()
    rows[10]["text"] = "another post"  # comment 20003, its second annotation; its first is row 11
    err = error_of(tmp_path, lambda p: write_mhs(p, rows), "mhs.csv", tasks["mhs"])
    assert (err.row, err.field) == (12, "text") and "comment_id 20003" in err.message and "row 11" in err.message


def test_one_class_in_the_data_or_none_in_train_is_an_error_naming_train(tmp_path, tasks):
    err = error_of(tmp_path, dyna_with(lambda rows: [r.update(label="hate") for r in rows]), "dyna.csv",
                   tasks["dynahate"])
    assert "split 'train' has no row labelled 'not hate'" in err.message and "none of the data's 48" in err.message

    table = pd.DataFrame({"id": list("abcd"), "label": ["x", "x", "y", "x"], "split": ["train", "train", "test", "dev"],
                          "group": list("abcd")})
    with pytest.raises(HatetuneError, match="split 'train' has no row labelled 'y' .*all went to test"):
        splits.check_splits(table, ["x", "y"], {"fractions": {"train": .8, "dev": .1, "test": .1}}, "grouped")


def test_an_empty_split_is_an_error_unless_its_fraction_is_zero(tmp_path, tasks):
    few = dyna_with(lambda rows: rows.__delitem__(slice(3, None)))
    err = error_of(tmp_path, few, "dyna.csv", tasks["dynahate"])
    assert err.field == "task.split.fractions.dev" and "split 'dev' is empty: 3 rows in 3 groups" in err.message

    task = config.validate(config.compose(["task=dynahate", "task.split.fractions={train: 0.9, dev: 0.0, "
                                           "test: 0.1}"])).task
    result = table_of(tmp_path / "zero", dyna_with(lambda rows: None), "dyna.csv", task)
    assert (result.table["split"] == "dev").sum() == 0
    assert "split 'dev' is empty (task.split.fractions.dev=0)" in result.warnings
    assert "split 'dev' is empty (task.split.fractions.dev=0)" in labels.data_metrics(result, task)["warnings"]


def test_a_label_missing_from_dev_or_test_is_a_warning_in_data_metrics(tmp_path, tasks):
    table = pd.DataFrame({"id": list("abcdef"), "label": ["x", "y", "x", "x", "y", "y"],
                          "split": ["train", "train", "dev", "test", "test", "dev"], "group": list("abcdef")})
    found = splits.check_splits(table, ["x", "y"], {"fractions": {"train": .8, "dev": .1, "test": .1}}, "grouped")
    assert found == []
    table.loc[5, "split"] = "train"  # dev has no 'y' now
    found = splits.check_splits(table, ["x", "y"], {"fractions": {"train": .8, "dev": .1, "test": .1}}, "grouped")
    assert found == ["split 'dev' has no row labelled 'y': its per-class scores for 'y' are undefined there"]


# ---------------------------------------------------------------------------------------------- stage
def run_labels_stage(*overrides: str) -> None:
    from stages import labels as stage

    assert stage.main(["--params", str(ROOT / "params.yaml"), *overrides]) == 0


def test_labels_stage_writes_canonical_table_and_metrics_deterministically(tmp_path, monkeypatch):
    src = write_dynahate(tmp_path / "src" / "dyna.csv")
    monkeypatch.chdir(tmp_path)
    sources.fetch({"name": "dynahate", "kind": "local", "path": str(src)}, tmp_path / "data/raw/dynahate")
    run_labels_stage()
    out = tmp_path / "data/interim/dynahate"
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    metrics = (tmp_path / "metrics/data.json").read_bytes()
    assert first[paths.LABELS_FILE].split(b"\n")[0] == b"id,text,label,split,group,target,type,level,round"
    assert json.loads(first[paths.SPLIT_FILE])["strategy"] == "grouped"
    assert json.loads(metrics)["rows"]["total"] == 48

    run_labels_stage()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert (tmp_path / "metrics/data.json").read_bytes() == metrics


def test_labels_stage_bad_input_exits_non_zero_with_one_line_and_no_output(tmp_path, monkeypatch, capsys):
    from stages import labels as stage

    rows = dynahate_rows()
    rows[3]["label"] = "HATE?"
    src = write_dynahate(tmp_path / "src" / "dyna.csv", rows)
    monkeypatch.chdir(tmp_path)
    sources.fetch({"name": "dynahate", "kind": "local", "path": str(src)}, tmp_path / "data/raw/dynahate")
    with pytest.raises(SystemExit) as exit_:
        stage.main(["--params", str(ROOT / "params.yaml")])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: data/raw/dynahate/dyna.csv, row 5, field 'label': label 'HATE?' is not in the "
                       "label set (hate, nothate)")
    assert not (tmp_path / "data/interim").exists() and not (tmp_path / "metrics").exists()


def test_a_mapped_task_needs_its_label_column():
    from hatetune.errors import ConfigError

    with pytest.raises(ConfigError, match="task.columns.label"):
        config.validate(config.compose(["task=dynahate", "task.columns.label=null"]))


@pytest.mark.parametrize("killed_at", [1, 2])
def test_labels_stage_killed_while_publishing_never_leaves_new_labels_with_old_counts(tmp_path, monkeypatch,
                                                                                      killed_at):
    """The canonical table and metrics/data.json are published together: old ones are removed first, so a kill
    between the renames leaves an output missing (the stage reruns), never new labels beside old counts."""
    import os

    from hatetune import io

    src = write_dynahate(tmp_path / "src" / "dyna.csv")
    monkeypatch.chdir(tmp_path)
    sources.fetch({"name": "dynahate", "kind": "local", "path": str(src)}, tmp_path / "data/raw/dynahate")
    run_labels_stage()
    write_dynahate(src, dynahate_rows(n_single=30))  # new data: 54 rows instead of 48
    sources.fetch({"name": "dynahate", "kind": "local", "path": str(src)}, tmp_path / "data/raw/dynahate")
    finals, published, real = {Path(paths.interim_dir("dynahate")), Path(paths.DATA_METRICS)}, [], os.replace

    def replace(src_path, dst):
        if Path(dst) in finals:
            published.append(dst)
            if len(published) == killed_at:
                raise KeyboardInterrupt  # the kill
        real(src_path, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run_labels_stage()
    table, data = tmp_path / "data/interim/dynahate/labels.csv", tmp_path / "metrics/data.json"
    if table.exists() and data.exists():
        assert json.loads(data.read_text())["rows"]["total"] == len(pd.read_csv(table))
    assert not table.exists() or len(pd.read_csv(table)) == 54  # no old table beside anything new
