"""The report's per-group and functional sections and the heatmap, from result files alone (no model)."""
from __future__ import annotations

import json

import pytest

from hatetune import config, evaluation, functional, paths, records, report, sources
from hatetune.group_metrics import Breakdown
from support import ROOT
from upstream_fixtures import hatecheck_rows, write_hatecheck

LABELS = ["hate", "not hate"]
MAP = {"hateful": "hate", "non-hateful": "not hate"}
SYSTEMS = ("eval", "zeroshot", "baseline")


def _test_split():
    """20 test posts: 12 about `wom` (all hate), 6 about `bla` (hate), 2 `none` (not hate); type and round."""
    targets = [["wom"]] * 12 + [["bla"]] * 6 + [["none"]] * 2
    rows = [{"instruction": "i", "input": f"post {i}", "output": "hate" if t != ["none"] else "not hate",
             "system": "", "id": str(i), "target": t, "type": "derogation" if i % 2 else "animosity", "round": "1"}
            for i, t in enumerate(targets)]
    return rows, [r["output"] for r in rows]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """metrics/ of three systems with results per group on test and on a 203-case HateCheck-schema suite."""
    monkeypatch.chdir(tmp_path)
    cfg = config.load(["eval.functional.enabled=true"], ROOT / "params.yaml")
    rows, gold = _test_split()
    src = write_hatecheck(tmp_path / "src" / "cases.csv")
    sources.fetch({"name": "hatecheck", "kind": "local", "path": str(src)}, tmp_path / "raw")
    cases = functional.canonical_cases(records.read_raw_dir(tmp_path / "raw", functional.COLUMNS))
    functional.write_suite(cases, functional.summary(cases, {"name": "hatecheck"}), paths.FUNCTIONAL_DIR)
    suite = functional.load(paths.FUNCTIONAL_DIR, "hatecheck", MAP)
    spec = Breakdown(positive="hate", min_size=10, gap="target", not_groups=["none"])
    for k, key in enumerate(SYSTEMS):
        # system k misses k+1 of the wom posts and all of the bla posts but the first; flags every HateCheck case
        # except those of functionality number k
        predicted = ["not hate" if (i < k + 1 or 12 < i < 18) else g for i, g in enumerate(gold)]
        test = evaluation.score(rows, gold, predicted, LABELS, breakdown=spec)
        on_suite = ["not hate" if c["functionality"] == cases[7 * k]["functionality"] else "hate" for c in cases]
        results = {"test": test, "hatecheck": evaluation.score_suite(suite, on_suite, MAP, 10)}
        evaluation.write_results(paths.results_base(key), results, run_info={}, title=key)
    return cfg


def test_report_shows_groups_functionalities_reference_rows_and_heatmap(project, tmp_path):
    facts = report.gather(project)
    assert facts["suite"] == "hatecheck" and set(facts["suite_groups"]) == {"fine-tuned", "zero-shot",
                                                                           "TF-IDF + LR baseline"}
    plots = report.write_plots(facts, paths.REPORT_DIR)
    heatmap = paths.REPORT_DIR / "functional.png"
    assert str(heatmap) in plots and heatmap.read_bytes().startswith(b"\x89PNG")
    first = heatmap.read_bytes()
    report.write_plots(facts, paths.REPORT_DIR)
    assert heatmap.read_bytes() == first  # the same numbers give the same bytes
    text = report.build_report(project, facts, plots)

    assert "## Results per group" in text and "### By target" in text and "### By type" in text
    # wom: 12 posts, fine-tuned misses 1 -> 11/12; bla: 6 posts (small at min_size 10), 1 right
    assert "| wom | 12 | 12 | 0.92 / 0.96 | 0.83 / 0.91 | 0.75 / 0.86 |" in text
    assert "| bla† | 6 | 6 | 0.17 / 0.29 |" in text
    assert "Groups marked † have fewer than 10 examples" in text and "Not compared as groups: none." in text
    # only wom is large enough and a real group: no gap, said so
    assert "- fine-tuned: no gap (1 group large enough to compare)" in text

    assert "## Functional tests (hatecheck)" in text
    for system, acc, f1 in functional.REFERENCE:
        assert f"| *{system} (published, not run here)* | *3728* | *{acc:.3f}* | *{f1:.3f}* | |" in text
    # all 7-case functionalities are small at min_size 10: flagged, and the worst is then taken over all of them
    assert "| derog_neg_emote_h (hateful)† | 7 | 7 | 0.00 / 0.00 | 1.00 / 1.00 | 1.00 / 1.00 |" in text
    assert "| counter_quote_nh (non-hateful)† | 7 | 0 | 0.00 / 0.00 |" in text
    fine_tuned = json.loads(paths.results_json(paths.results_base("eval")).read_text())["hatecheck"]
    assert fine_tuned["worst_functionality"] == {"name": "counter_quote_nh", "accuracy": 0.0, "n": 7}
    assert f"| fine-tuned | 203 | {fine_tuned['accuracy']:.3f} | {fine_tuned['macro_f1']:.3f} | counter_quote_nh" \
           f" (0.00) |" in text
    assert "### Accuracy per target identity" in text and "| women |" in text
    assert "### Accuracy per gold label" in text and "| hateful | 126 | 126 |" in text
    assert "![functional](report/functional.png)" in text
    table = text.split("### Accuracy per functionality")[1].split("###")[0]
    order = [line.split(" (")[0][2:] for line in table.splitlines() if line.startswith("| ") and "hateful)" in line]
    assert order == [r["functionality"] for r in hatecheck_rows()][::7]  # HateCheck's order, not alphabetical


def test_without_a_suite_there_is_no_functional_section(project):
    cfg = config.load([], ROOT / "params.yaml")  # eval.functional.enabled=false
    facts = report.gather(cfg)
    assert "suite" not in facts
    text = report.build_report(cfg, facts, report.write_plots(facts, paths.REPORT_DIR))
    assert "## Functional tests" not in text and "## Results per group" in text
    assert not (paths.REPORT_DIR / "functional.png").exists()


def test_the_model_card_names_the_measured_gap_and_weakest_functionality(project):
    from hatetune import model_card

    facts = report.gather(project)
    facts["systems"]["fine-tuned"]["group_gap"] = {"breakdown": "target", "accuracy_gap": 0.3, "worst_group": "mus",
                                                   "worst_accuracy": 0.5, "worst_n": 40, "best_group": "wom",
                                                   "best_accuracy": 0.8, "best_n": 60}
    lines = model_card.measured_unevenness(facts)
    assert lines[0].startswith("- Measured on the `test` split, accuracy ranges from 0.50 (mus, n 40) to 0.80 (wom")
    assert lines[1] == "- On the hatecheck functional tests its weakest functionality is `counter_quote_nh` " \
                       "(accuracy 0.00)."
    facts["systems"]["fine-tuned"]["group_gap"]["accuracy_gap"] = None
    assert len(model_card.measured_unevenness(facts)) == 1
