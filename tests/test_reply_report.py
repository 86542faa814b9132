"""The Stop-Hate report section and model card: the four systems side by side with the paper's Table 5 as marked
reference rows, the judge and its own score, example replies under a content warning (never CONAN's), a plot."""
from __future__ import annotations

import pytest

from hatetune import config, reply_report

SETS = ("conan", "dynahate_hate", "dynahate_not_hate")


@pytest.fixture(scope="module")
def cfg():
    return config.validate(config.compose(["task=stophate"]))


def metrics(stop_conan, stop_dh, over):
    return {"conan": {"n": 4, "stop_rate": stop_conan}, "dynahate_hate": {"n": 4, "stop_rate": stop_dh},
            "dynahate_not_hate": {"n": 4, "stop_rate": over}, "stop_rate_hateful": (stop_conan + stop_dh) / 2,
            "over_refusal_rate": over}


def judged(conan, dh, normal):
    return {"conan": {"n": 4, "hateful_reply_rate": conan}, "dynahate_hate": {"n": 4, "hateful_reply_rate": dh},
            "dynahate_not_hate": {"n": 4, "hateful_reply_rate": normal}, "hateful_reply_rate_hateful_inputs": 0.5}


@pytest.fixture
def facts():
    systems = ["fine-tuned", "base", "base + stop prompt", "base + counter speech prompt"]
    records = [{"set": s, "input": f"{s} post {i}", "reply": f"reply {i}"} for s in SETS for i in range(3)]
    return {
        "reply_metrics": {s: {"sampled": metrics(0.75, 0.5, 0.25), "greedy": metrics(1.0, 1.0, 0.0)} for s in systems},
        "judged": {s: {"sampled": judged(0.25, 0.0, 0.0), "greedy": judged(0.0, 0.0, 0.0)} for s in systems},
        "judge": {"kind": "tfidf", "name": "TF-IDF + logistic regression (DynaHate train posts)",
                  "fallback_reason": "no adapter in models/adapter/dynahate", "test_macro_f1": 0.61,
                  "test_accuracy": 0.62, "test_hate_precision": 0.6, "test_hate_recall": 0.7, "test_n": 412,
                  "replies_judged": 30},
        "replies": {s: {"sampled": records} for s in systems},
        "systems": {"TF-IDF judge (baseline stage)": None}, "data": {}, "train": None, "measurements": {},
        "estimate": {"hours": 0.0, "device_power_w": 15, "pue": 1, "carbon_intensity_kg_per_kwh": 0.4,
                     "energy_kwh": 0, "emissions_kg": 0}, "base_source": None, "data_source": None,
    }


def test_rates_table_has_every_system_and_marked_reference_rows(cfg, facts):
    table = reply_report.rates_table(cfg, facts)
    assert "| fine-tuned | sampled | 4/4/4 | 75.0% | 50.0% | 25.0% | 25.0% | 0.0% | 0.0% |" in table
    assert "| base + stop prompt | greedy | 4/4/4 | 100.0% | 100.0% | 0.0% |" in table
    assert ("| *Llama-2-13b-chat fine-tuned (Stop-Hate) (paper, Table 5; reference)* | sampled | all | – | – | "
            "not measured | 0.94% | 0.55% | not measured |") in table
    assert table.count("(paper, Table 5; reference)") == len(reply_report.PAPER_TABLE_5)


def test_judge_note_names_the_judge_and_its_own_score(facts):
    note = reply_report.judge_note(facts)
    assert "TF-IDF" in note and "0.6100" in note and "no adapter in models/adapter/dynahate" in note
    assert "own domain" in note and "fitted on" not in note and "counts as not hateful" in note
    facts["judge"] = {**facts["judge"], "kind": "adapter", "name": "classifier adapter models/adapter/dynahate",
                      "fallback_reason": None, "decision_rule": {"positive": "hate", "threshold": 0.4757,
                                                                 "temperature": 1.2806, "dev_rows": 200}}
    note = reply_report.judge_note(facts)
    assert "P(hate) >= 0.4757 at temperature 1.2806, fitted on 200 DynaHate dev posts" in note


def test_examples_are_dynahate_only_under_a_content_warning(cfg, facts):
    text = reply_report.examples(cfg, facts)
    assert text.startswith("> **Content warning**")
    assert "conan post" not in text  # CONAN is research-only
    # eval.generation.examples = 2 replies per system (4) and DynaHate set
    assert text.count("dynahate_hate post 1") == 4 and "dynahate_hate post 2" not in text


def test_report_plot_and_card(cfg, facts, tmp_path):
    plots = reply_report.write_plots(facts, tmp_path)
    assert [p.split("/")[-1] for p in plots] == ["reply_rates.png"] and (tmp_path / "reply_rates.png").stat().st_size
    card = reply_report.model_card(cfg, facts, "<|im_start|>user\n...")
    assert card.startswith("---\n") and "Content warning" in card and "stop_when_hateful" in card
    assert "(paper, Table 5; reference)" in card and "research only" in card


# ------------------------------------------------------------------------------ the functional suite section
def test_the_stop_rate_per_functionality_section_from_the_stages_files(tmp_path, monkeypatch):
    """eval.json / zeroshot.json with a suite (written by generation.write_results from real scoring) -> the
    report's stop-rate section and heatmap; the suite is not taken for a system anywhere in the report."""
    from hatetune import evaluation, functional, generation, paths, records, sources
    from upstream_fixtures import write_hatecheck

    monkeypatch.chdir(tmp_path)
    cfg = config.validate(config.compose(["task=stophate", "eval.functional.enabled=true"]))
    sources.fetch({"name": "hatecheck", "kind": "local", "path": str(write_hatecheck(tmp_path / "c.csv"))},
                  tmp_path / "raw")
    cases = functional.canonical_cases(records.read_raw_dir(tmp_path / "raw", functional.COLUMNS))
    functional.write_suite(cases, functional.summary(cases, {"name": "hatecheck"}), paths.FUNCTIONAL_DIR)
    suite = functional.sample(functional.load(paths.FUNCTIONAL_DIR, "hatecheck", functional.STOP_LABELS), 2, 0)
    stop = cfg.task.stop_message

    def run(name, replies, base):
        """`name`'s greedy replies to the suite, beside one reply to a task post."""
        scored = evaluation.score_suite_replies(suite, replies, stop, 10)
        record = {"id": "1", "set": "dynahate_hate", "label": "hate", "source": "dynahate", "input": "p",
                  "reply": stop, "finished": True, "truncated": False, "stop": True, "stop_mentioned": True}
        generation.write_results(paths.results_base(base), {name: {"greedy": {
            "records": [record], "metrics": generation.set_metrics([record], ["dynahate_hate"])}}}, {},
            suite=("hatecheck", {name: {"greedy": scored}}))

    run("fine-tuned", [stop if g == "hateful" else "Sure." for g in suite.gold], paths.EVAL)  # all right
    run("base", [stop] * len(suite.gold), paths.ZEROSHOT)  # stops everything: every non-hateful case wrong
    facts = reply_report.gather(cfg)
    assert list(facts["reply_metrics"]) == ["fine-tuned", "base"]  # not "hatecheck"
    plots = reply_report.write_plots(facts, paths.REPORT_DIR)
    assert [p.split("/")[-1] for p in plots] == ["reply_rates.png", "functional.png"]
    text = reply_report.build_report(cfg, facts, plots)
    assert "## Functional tests (hatecheck): stop rate" in text
    assert "| fine-tuned | greedy | 58 | 1.000 | 1.00 | 0.00 |" in text
    assert f"| base | greedy | 58 | {36 / 58:.3f} | 1.00 | 1.00 | counter_quote_nh (non-hateful: 1.00) |" in text
    assert "| functionality | n | gold hateful | fine-tuned (greedy) stop rate | base (greedy) stop rate |" in text
    assert "| slur_h (should stop)† | 2 | 2 | 1.00 | 1.00 |" in text
    assert "| negate_neg_nh (should not stop)† | 2 | 0 | 0.00 | 1.00 |" in text
    assert "### Stop rate per target identity" in text and "| non-hateful | 22 | 0 | 0.00 | 1.00 |" in text
    assert "![functional](report/functional.png)" in text and text.count("functional.png") == 1
    assert "| hatecheck |" not in text
