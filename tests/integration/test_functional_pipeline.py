"""Per-group results and the opt-in functional suite under real DVC, on a tiny model and generated DynaHate and
HateCheck mirrors: the default `dvc repro` skips the suite (offline, no mirror entry needed) and reports per target
group; `dvc exp run -S eval.functional.enabled=true` fails in one clear line without the suite in the mirror, and
with it reruns exactly the suite's stages and the three evaluations, not training."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest

from integration.conftest import make_tiny_project, ran_stages, run  # tests/ is on sys.path
from upstream_fixtures import write_hatecheck


@pytest.fixture
def tiny_project(project_repo, tmp_path, tiny_model_dir):
    return make_tiny_project(project_repo, tmp_path, tiny_model_dir,
                             train={"max_steps": 2, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                                    "eval_examples": 4},
                             max_examples={"train": 16, "dev": 8, "test": 24}, eval={"batch_size": 8})


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def accuracy_by(records, key):
    """Accuracy per group, counted from the prediction records themselves."""
    right, total = defaultdict(int), defaultdict(int)
    for r in records:
        for group in (r[key] if isinstance(r[key], list) else [r[key]] if r[key] else []):
            total[group] += 1
            right[group] += r["gold"] == r["predicted"]
    return {g: right[g] / total[g] for g in total}


def test_per_group_results_by_default_and_the_functional_suite_on_demand(tiny_project, tmp_path):
    repo, env = tiny_project
    first = run(["dvc", "repro"], repo, env=env)
    assert "functional_suite" in ran_stages(first.stdout)
    for folder in ("data/raw/functional", "data/interim/functional"):  # disabled: a record saying so, nothing else
        assert json.loads((repo / folder / "suite.json").read_text())["enabled"] is False
    for name in ("eval", "zeroshot", "baseline"):
        results = json.loads((repo / f"metrics/{name}.json").read_text())
        assert set(results) == {"dev", "test"} and results["test"]["group_gap"]["breakdown"] == "target"
        records = jsonl(repo / f"metrics/{name}/test/predictions.jsonl")
        assert {"target", "type", "level", "round"} <= set(records[0])
        groups = json.loads((repo / f"metrics/{name}/test/groups.json").read_text())["breakdowns"]
        for key in ("target", "type", "round"):
            assert {g: s["accuracy"] for g, s in groups[key].items()} == pytest.approx(accuracy_by(records, key),
                                                                                       abs=1e-6), (name, key)
    report = (repo / "metrics/report.md").read_text()
    for heading in ("## Results per group", "### By target", "### By type", "### By round", "### By level"):
        assert heading in report, heading
    assert "## Functional tests" not in report
    assert ran_stages(run(["dvc", "repro"], repo, env=env).stdout) == ["sources"]  # nothing else to do
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "default run"], repo)

    # opt in without the suite in the mirror: one clear line, from the sources stage
    missing = run(["dvc", "exp", "run", "-S", "eval.functional.enabled=true"], repo, env=env, check=False)
    assert missing.returncode != 0
    assert "the offline mirror has no entry for source 'hatecheck': expected a folder" in missing.stderr

    write_hatecheck(tmp_path / "mirror" / "hatecheck" / "test_suite_cases.csv")
    exp = run(["dvc", "exp", "run", "-S", "eval.functional.enabled=true", "-S", "eval.functional.source.sha256=null"],
              repo, env=env)
    # not train; judge follows the evaluations it reads (for a classification task it writes "not applicable")
    assert set(ran_stages(exp.stdout)) == {"sources", "functional_suite", "evaluate", "evaluate_zeroshot", "baseline",
                                           "judge", "report", "export"}, exp.stdout
    rule = json.loads((repo / "metrics/eval/calibration.json").read_text())
    for name in ("eval", "zeroshot", "baseline"):
        suite = json.loads((repo / f"metrics/{name}.json").read_text())["hatecheck"]
        records = jsonl(repo / f"metrics/{name}/hatecheck/predictions.jsonl")
        assert suite["n"] == len(records) == 203
        assert suite["accuracy"] == pytest.approx(sum(r["gold"] == r["predicted"] for r in records) / 203, abs=1e-6)
        for r in records:  # the task label, then hateful / non-hateful through task.functional_labels
            assert r["predicted"] == {"hate": "hateful", "not hate": "non-hateful"}[r["task_label"]]
        by_functionality = accuracy_by(records, "functionality")
        assert len(by_functionality) == 29
        worst = suite["worst_functionality"]
        assert worst["accuracy"] == pytest.approx(min(by_functionality.values()), abs=1e-6)
        assert by_functionality[worst["name"]] == pytest.approx(worst["accuracy"], abs=1e-6)
        if name == "eval":  # the fine-tuned model's own decision rule, fitted on its dev split
            for r in records:
                assert r["task_label"] == ("hate" if r["p_positive"] >= rule["threshold"] else "not hate")
    report = (repo / "metrics/report.md").read_text()
    assert "## Functional tests (hatecheck)" in report and "(published, not run here)" in report
    assert "### Accuracy per functionality" in report and "| counter_quote_nh (non-hateful)" in report
    assert (repo / "metrics/report/functional.png").read_bytes().startswith(b"\x89PNG")
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    assert "hatecheck.worst_functionality.accuracy" in diff.get("diff", diff)["metrics/eval.json"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    fine_tuned = next(v["data"] for v in shown.values())["metrics/eval.json"]["data"]
    # (dvc leaves out null values: the 12-post test split has no target group large enough for a gap)
    assert fine_tuned["test"]["group_gap"]["breakdown"] == "target"
    assert fine_tuned["hatecheck"]["group_gap"]["accuracy_gap"] >= 0
