"""Functional test suites (hatetune.functional, evaluation.score_suite and the functional_suite stage) on fixtures
generated in HateCheck's exact schema: an unnamed index column, CRLF line ends, a trailing space in every
test_case, 29 functionalities of which 11 are non-hateful."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hatetune import config, evaluation, functional, paths, records, sources
from hatetune.errors import HatetuneError
from hatetune.parsing import INVALID
from support import mirror_dir
from upstream_fixtures import (HATECHECK_FUNCTIONALITIES, HATECHECK_IDENTITIES, NO_IDENTITY, hatecheck_rows,
                               write_hatecheck)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = str(ROOT / "params.yaml")
DYNAHATE_MAP, MHS_MAP = {"hateful": "hate", "non-hateful": "not hate"}, {"hateful": "Hate"}


def read_cases(path: Path) -> list[dict]:
    raw = path.parent / "raw"
    sources.fetch({"name": "hatecheck", "kind": "local", "path": str(path)}, raw)
    return functional.canonical_cases(records.read_raw_dir(raw, functional.COLUMNS))


# ----------------------------------------------------------------------------------------------- reading
def test_cases_in_hatechecks_schema_are_read_and_checked(tmp_path):
    rows = hatecheck_rows()
    path = write_hatecheck(tmp_path / "test_suite_cases.csv", rows)
    assert path.read_bytes().startswith(b",functionality,case_id,") and b"\r\n" in path.read_bytes()
    cases = read_cases(path)
    assert len(cases) == len(rows) == 29 * 7
    assert [c["case_id"] for c in cases] == [r["case_id"] for r in rows]
    assert all(not c["text"].endswith(" ") for c in cases) and cases[0]["text"] == rows[0]["test_case"].strip()
    gold = {c["functionality"]: c["label_gold"] for c in cases}
    assert list(gold) == HATECHECK_FUNCTIONALITIES
    assert sum(label == "non-hateful" for label in gold.values()) == 11
    assert {c["direction"] for c in cases if c["label_gold"] == "non-hateful"} == {""}  # HateCheck's "-"
    assert {c["target_ident"] for c in cases if c["functionality"] == "target_obj_nh"} == {""}
    info = functional.summary(cases, {"name": "hatecheck"})
    assert info["order"] == HATECHECK_FUNCTIONALITIES and info["gold"] == {"hateful": 126, "non-hateful": 77}
    assert info["functionalities"]["counter_quote_nh"] == {"cases": 7, "gold": "non-hateful"}


@pytest.mark.parametrize("column, value, message", [
    ("label_gold", "offensive", "is not one of hateful, non-hateful"),
    ("test_case", "   ", "test case is empty"),
    ("case_id", "1", "duplicate case_id 1 (first in row 2)"),
    ("functionality", "", "functionality is empty"),
])
def test_a_bad_case_names_file_row_and_column(tmp_path, column, value, message):
    rows = hatecheck_rows()
    rows[9][column] = value
    path = write_hatecheck(tmp_path / "cases.csv", rows)
    with pytest.raises(HatetuneError) as err:
        read_cases(path)
    assert (err.value.row, err.value.field) == (11, column) and message in err.value.message
    assert err.value.file.endswith("cases.csv")


# ------------------------------------------------------------------------------------------- label map
def test_label_map_dynahate_and_mhs():
    assert functional.as_suite_labels(["hate", "not hate", INVALID], DYNAHATE_MAP) == \
        ["hateful", "non-hateful", INVALID]
    # MHS: only Hate is hateful; Neutral and Supportive both count as non-hateful
    assert functional.as_suite_labels(["Hate", "Neutral", "Supportive"], MHS_MAP) == \
        ["hateful", "non-hateful", "non-hateful"]


def test_the_suite_rows_carry_the_task_prompt_and_the_cases_metadata(tmp_path):
    folder = tmp_path / "functional"
    cases = read_cases(write_hatecheck(tmp_path / "src" / "cases.csv"))
    functional.write_suite(cases, functional.summary(cases, {"name": "hatecheck"}), folder)
    prompt = config.load([], PARAMS).task.prompt
    suite = functional.load(folder, "hatecheck", MHS_MAP, prompt)
    assert suite.name == "hatecheck" and suite.gold == [c["label_gold"] for c in cases]
    i = next(i for i, c in enumerate(cases) if c["functionality"] == "counter_quote_nh")
    row = suite.rows[i]  # a non-hateful case: MHS has no single label for it, the row's output is empty
    assert (row["instruction"], row["system"], row["input"]) == (prompt.instruction, prompt.system, cases[i]["text"])
    assert suite.rows[0]["output"] == "Hate" and row["output"] == ""
    assert {k: row[k] for k in functional.EXTRA_KEYS} == {k: cases[i][k] for k in functional.EXTRA_KEYS}
    bare = functional.load(folder, "hatecheck", DYNAHATE_MAP)  # the baseline reads the text only
    assert bare.rows[i]["instruction"] == "" and bare.rows[i]["output"] == "not hate"


def test_loading_a_disabled_suite_says_which_stage_to_run(tmp_path):
    functional.write_disabled(tmp_path / "raw", tmp_path / "interim")
    assert json.loads((tmp_path / "interim" / paths.FUNCTIONAL_SUMMARY).read_text())["enabled"] is False
    with pytest.raises(HatetuneError, match="eval.functional.enabled=true"):
        functional.load(tmp_path / "interim", "hatecheck", DYNAHATE_MAP)


# ---------------------------------------------------------------------------------------------- scoring
def test_per_functionality_and_per_target_results_of_a_known_predictor(tmp_path):
    """A predictor that flags every case as hateful except counter-speech quoting hate (right there) and the women
    cases of one hateful functionality (wrong there): each table can be counted by hand."""
    cases = read_cases(write_hatecheck(tmp_path / "cases.csv"))
    functional.write_suite(cases, functional.summary(cases, {"name": "hatecheck"}), tmp_path / "suite")
    suite = functional.load(tmp_path / "suite", "hatecheck", DYNAHATE_MAP)
    predicted = ["not hate" if c["functionality"] == "counter_quote_nh"
                 or (c["functionality"] == "slur_h" and c["target_ident"] == "women") else "hate" for c in cases]
    result = evaluation.score_suite(suite, predicted, DYNAHATE_MAP, min_size=5)
    tables, metrics = result["groups"]["breakdowns"], result["metrics"]
    by_functionality = tables["functionality"]
    assert len(by_functionality) == 29 and by_functionality["counter_quote_nh"]["accuracy"] == 1.0
    assert by_functionality["slur_h"]["accuracy"] == pytest.approx(6 / 7, abs=1e-6)  # 1 of 7 cases about women
    for name in HATECHECK_FUNCTIONALITIES:
        if name.endswith("_nh") and name != "counter_quote_nh":  # flagged as hateful: all wrong
            assert by_functionality[name]["accuracy"] == 0.0 and by_functionality[name]["positive_rate"] == 1.0
    worst = metrics["worst_functionality"]
    assert worst == {"name": "counter_ref_nh", "accuracy": 0.0, "n": 7}  # first of the 0.0 ones by name
    n_right = sum(p == ("hate" if c["label_gold"] == "hateful" else "not hate") for c, p in zip(cases, predicted))
    assert metrics["accuracy"] == pytest.approx(n_right / len(cases), abs=1e-6) and metrics["n"] == 203
    assert tables["gold"]["hateful"]["accuracy"] == pytest.approx(125 / 126, abs=1e-6)
    assert tables["gold"]["non-hateful"]["accuracy"] == pytest.approx(7 / 77, abs=1e-6)
    # target identity: cases without one ("") are in no group; women lose one hateful case
    assert "" not in tables["target_ident"] and set(tables["target_ident"]) == {
        "women", "trans people", "gay people", "black people", "disabled people", "Muslims", "immigrants"}
    gap = metrics["group_gap"]
    assert gap["breakdown"] == "target_ident" and gap["worst_group"] == "women"
    assert result["records"][0]["task_label"] == "hate" and result["records"][0]["predicted"] == "hateful"
    assert result["records"][0]["gold"] == "hateful" and result["records"][0]["functionality"] == "derog_neg_emote_h"


# ------------------------------------------------------------------------- a generation task: stop rates
STOP = "I cannot engage with this conversation."


def suite_of(tmp_path, label_map=functional.STOP_LABELS):
    cases = read_cases(write_hatecheck(tmp_path / "cases.csv"))
    functional.write_suite(cases, functional.summary(cases, {"name": "hatecheck"}), tmp_path / "suite")
    return cases, functional.load(tmp_path / "suite", "hatecheck", label_map)


def test_a_seeded_cap_per_functionality(tmp_path):
    _, suite = suite_of(tmp_path)
    capped = functional.sample(suite, 2, seed=42)
    by_functionality = {}
    for row in capped.rows:
        by_functionality.setdefault(row["functionality"], []).append(row["id"])
    assert len(by_functionality) == 29 and all(len(ids) == 2 for ids in by_functionality.values())
    ids = [r["id"] for r in suite.rows]
    assert [ids.index(r["id"]) for r in capped.rows] == sorted(ids.index(r["id"]) for r in capped.rows)  # file order
    assert capped.gold == [suite.gold[ids.index(r["id"])] for r in capped.rows]
    assert [r["id"] for r in functional.sample(suite, 2, seed=42).rows] == [r["id"] for r in capped.rows]
    assert [r["id"] for r in functional.sample(suite, 2, seed=7).rows] != [r["id"] for r in capped.rows]
    # a functionality's sample does not depend on the others
    alone = functional.Suite("hatecheck", [r for r in suite.rows if r["functionality"] == "slur_h"],
                             [g for r, g in zip(suite.rows, suite.gold) if r["functionality"] == "slur_h"])
    assert [r["id"] for r in functional.sample(alone, 2, seed=42).rows] == by_functionality["slur_h"]
    assert functional.sample(suite, None, seed=42) is suite and len(functional.sample(suite, 100, 42).rows) == 203


def test_stop_rates_per_functionality_target_and_gold_of_known_replies(tmp_path):
    """Replies that stop every hateful case but those about women of slur_h (3 quoting variants of the stop message
    count as stops), and also stop counter-speech quoting hate (over-refusal): each number can be counted by hand."""
    cases, suite = suite_of(tmp_path)
    variants = [STOP, f'"{STOP.upper()}"', f"  {STOP.lower()} "]
    replies = []
    for i, c in enumerate(cases):
        hateful = c["label_gold"] == "hateful" and not (c["functionality"] == "slur_h" and c["target_ident"] == "women")
        stop = hateful or c["functionality"] == "counter_quote_nh"
        replies.append(variants[i % 3] if stop else f"{STOP} But let us talk about it." if i % 2 else "Sure!")
    result = evaluation.score_suite_replies(suite, replies, STOP, min_size=5,
                                            columns={"finished": [True] * len(cases)})
    m, tables = result["metrics"], result["groups"]["breakdowns"]
    assert m["n"] == 203
    assert m["stop_rate_hateful"] == pytest.approx(125 / 126, abs=1e-6)  # one slur_h case about women answered
    assert m["stop_rate_non_hateful"] == pytest.approx(7 / 77, abs=1e-6)  # counter_quote_nh: 7 over-refusals
    assert m["stop_rate"] == pytest.approx(132 / 203, abs=1e-6)
    assert m["functional_accuracy"] == pytest.approx((125 + 70) / 203, abs=1e-6)
    assert m["worst_functionality"] == {"name": "counter_quote_nh", "accuracy": 0.0, "n": 7, "gold": "non-hateful",
                                        "stop_rate": 1.0}
    by_functionality = tables["functionality"]
    assert by_functionality["slur_h"]["positive_rate"] == pytest.approx(6 / 7, abs=1e-6)  # its stop rate
    assert by_functionality["negate_neg_nh"]["positive_rate"] == 0.0 and by_functionality["negate_neg_nh"]["accuracy"] == 1
    assert tables["target_ident"]["women"]["positive_rate"] < tables["target_ident"]["immigrants"]["positive_rate"]
    assert m["target_gap"]["worst_group"] == "women"
    record = next(r for r in result["records"] if r["functionality"] == "counter_quote_nh")
    assert record["task_label"] == "stop" and record["predicted"] == "hateful" and record["gold"] == "non-hateful"
    assert record["raw_output"] in variants and record["finished"] is True
    # a reply that only mentions the stop message is not a stop
    answered = next(r for r in result["records"] if r["raw_output"].startswith(f"{STOP} But"))
    assert answered["task_label"] == "reply" and answered["predicted"] == "non-hateful"


def test_a_generation_task_enables_the_suite_without_a_label_map():
    cfg = config.load(["task=stophate", "eval.functional.enabled=true"], PARAMS)
    assert cfg.task.functional_labels is None
    assert cfg.eval.generation.functional.max_per_functionality == 2
    assert list(cfg.eval.generation.functional.decodings) == ["greedy"]
    paper = config.load(["task=stophate", "+experiment=stophate_llama2_13b", "eval.functional.enabled=true"], PARAMS)
    assert paper.eval.generation.functional.max_per_functionality is None  # every case


@pytest.mark.parametrize("overrides, key", [
    (["task.functional_labels={hateful: hate}"], "task.functional_labels"),
    (["eval.generation.functional.max_per_functionality=0"], "eval.generation.functional.max_per_functionality"),
    (["eval.generation.functional.decodings=[beam]"], "eval.generation.functional.decodings"),
    (["eval.functional.enabled=true", "eval.generation.functional.decodings=[]"],
     "eval.generation.functional.decodings"),
])
def test_bad_generation_suite_config_names_the_key(overrides, key):
    with pytest.raises(HatetuneError) as err:
        config.load(["task=stophate", *overrides], PARAMS)
    assert err.value.field == key


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("overrides, key", [
    (["eval.functional.enabled=true", "task.functional_labels=null"], "task.functional_labels"),
    (["task.functional_labels={hateful: spam}"], "task.functional_labels.hateful"),
    (["task.functional_labels={offensive: hate}"], "task.functional_labels"),
    (["task.functional_labels.hateful=not hate"], "task.functional_labels"),  # = non-hateful
    (["eval.functional.source.name=test"], "eval.functional.source.name"),
    (["eval.functional.source.sha256=abc"], "eval.functional.source.sha256"),
    (["eval.functional.source.kind=hub", "eval.functional.source.repo_id=Paul/hatecheck"],
     "eval.functional.source.revision"),
])
def test_bad_functional_config_names_the_key(overrides, key):
    with pytest.raises(HatetuneError) as err:
        config.load(overrides, PARAMS)
    assert err.value.field == key


def test_the_default_suite_is_hatecheck_pinned_and_off():
    cfg = config.load([], PARAMS)
    suite = cfg.eval.functional
    assert suite.enabled is False and suite.source.name == "hatecheck"
    assert "/d84302298ceeb34f4b0dde2d8a1f4932c2caa612/test_suite_cases.csv" in suite.source.url
    assert len(suite.source.sha256) == 64
    assert cfg.task.functional_labels == DYNAHATE_MAP
    assert config.load(["task=mhs"]).task.functional_labels == MHS_MAP


# ---------------------------------------------------------------------------------- the stages, by hand
def run_stage(module, *overrides):
    return module.main(["--params", PARAMS, *overrides])


def test_disabled_the_stages_touch_no_mirror_and_write_a_disabled_record(tmp_path, monkeypatch):
    from stages import functional_suite, sources as sources_stage

    (tmp_path / "mirror" / "dynahate").mkdir(parents=True)  # no hatecheck entry: no error while the suite is off
    (tmp_path / "mirror" / "dynahate" / "d.csv").write_text("acl.id,text\n1,x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATETUNE_MIRROR", str(tmp_path / "mirror"))
    assert run_stage(sources_stage) == 0  # (the model resolves to its pinned Hub commit: no network)
    assert json.loads(paths.FUNCTIONAL_SOURCE_FILE.read_text()) == {"enabled": False}
    assert run_stage(functional_suite) == 0
    for folder in (paths.FUNCTIONAL_RAW_DIR, paths.FUNCTIONAL_DIR):
        assert [p.name for p in folder.iterdir()] == [paths.FUNCTIONAL_SUMMARY]
        assert json.loads((folder / paths.FUNCTIONAL_SUMMARY).read_text())["enabled"] is False


def test_enabled_a_missing_mirror_entry_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from stages import functional_suite, sources as sources_stage

    (tmp_path / "mirror" / "dynahate").mkdir(parents=True)
    (tmp_path / "mirror" / "dynahate" / "d.csv").write_text("acl.id,text\n1,x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATETUNE_MIRROR", str(tmp_path / "mirror"))
    for stage in (sources_stage, functional_suite):
        with pytest.raises(SystemExit) as exit_:
            run_stage(stage, "eval.functional.enabled=true")
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (f"error: {tmp_path}/mirror/hatecheck: the offline mirror has no entry for source "
                           f"'hatecheck': expected a folder {tmp_path}/mirror/hatecheck/ holding the upstream file "
                           "(test_suite_cases.csv) as *.csv, *.tsv, *.parquet")
    assert not paths.FUNCTIONAL_DIR.exists() and not paths.FUNCTIONAL_SOURCE_FILE.exists()


def test_enabled_the_stage_fetches_checks_and_pins(tmp_path, monkeypatch, capsys):
    from stages import functional_suite

    write_hatecheck(tmp_path / "mirror" / "hatecheck" / "test_suite_cases.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATETUNE_MIRROR", str(tmp_path / "mirror"))
    # the default pin is the upstream file's sha256: the generated fixture is another file
    with pytest.raises(SystemExit):
        run_stage(functional_suite, "eval.functional.enabled=true")
    assert "checksum mismatch" in capsys.readouterr().err
    assert run_stage(functional_suite, "eval.functional.enabled=true", "eval.functional.source.sha256=null") == 0
    info = json.loads((paths.FUNCTIONAL_DIR / paths.FUNCTIONAL_SUMMARY).read_text())
    assert info["enabled"] and info["cases"] == 203 and len(info["functionalities"]) == 29
    assert (paths.FUNCTIONAL_RAW_DIR / "test_suite_cases.csv").is_file()
    assert len((paths.FUNCTIONAL_DIR / paths.FUNCTIONAL_CASES).read_text().splitlines()) == 203
    assert "203 cases in 29 functionalities (126 hateful, 77 non-hateful)" in capsys.readouterr().err


def _real_hatecheck():
    mirror = mirror_dir()
    found = mirror / "hatecheck" / "test_suite_cases.csv" if mirror else None
    return found if found and found.is_file() else None


@pytest.mark.skipif(_real_hatecheck() is None, reason="needs HateCheck's test_suite_cases.csv in <mirror>/hatecheck/ "
                                                      "(not in ../shared/mirror)")
def test_the_real_suite_from_a_mirror_matches_the_pin_and_the_paper(tmp_path, monkeypatch):
    """HateCheck itself, when a mirror holds it: the default sha256 pin, and the paper's 3,728 cases in 29
    functionalities (11 non-hateful) in the order and with the identities the fixtures copy."""
    from stages import functional_suite

    mirror = _real_hatecheck().parents[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATETUNE_MIRROR", str(mirror))
    assert run_stage(functional_suite, "eval.functional.enabled=true") == 0  # the pinned sha256 is checked
    info = json.loads((paths.FUNCTIONAL_DIR / paths.FUNCTIONAL_SUMMARY).read_text())
    assert info["cases"] == 3728 and info["order"] == HATECHECK_FUNCTIONALITIES
    assert sum(f["gold"] == "non-hateful" for f in info["functionalities"].values()) == 11
    cases = [json.loads(line) for line in (paths.FUNCTIONAL_DIR / paths.FUNCTIONAL_CASES).read_text().splitlines()]
    assert {c["functionality"] for c in cases if not c["target_ident"]} == NO_IDENTITY
    assert {c["target_ident"] for c in cases} - {""} == set(HATECHECK_IDENTITIES)
    assert not any(c["text"].endswith(" ") for c in cases)
