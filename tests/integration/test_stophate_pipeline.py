"""Task stophate under real DVC, on a tiny model and a generated mirror (DynaHate, MetaHate and the four CONAN
files in their upstream schemas, with neutral texts): `dvc exp run -S task=stophate` runs every stage and writes
stop, over-refusal and hateful-reply metrics for the four systems; switching the target mode retrains and
re-evaluates the fine-tuned model but neither regenerates the base systems' replies nor retrains the judge. With
`-S eval.functional.enabled=true` every system also answers the HateCheck suite: its stop rate per functionality."""
from __future__ import annotations

import json

import pytest
import yaml

from integration.conftest import make_tiny_project, ran_stages, run  # tests/ is on sys.path
from hatetune import generation
from hatetune.parsing import is_stop
from upstream_fixtures import write_hatecheck, write_stophate_mirror

ALL_STAGES = {"sources", "download", "labels", "convert", "base_model", "replies", "train", "functional_suite",
              "evaluate", "evaluate_zeroshot", "baseline", "judge", "report", "export"}
SETS = {"conan", "dynahate_hate", "dynahate_not_hate"}
BASE_SYSTEMS = {"base", "base + stop prompt", "base + counter speech prompt"}
CONAN_TEXTS = ("EN claim", "EN answer", "multitarget claim", "multitarget answer", "dialogue ", "kn claim")


def jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def stophate_project(project_repo, tmp_path, tiny_model_dir):
    repo, env = make_tiny_project(project_repo, tmp_path, tiny_model_dir,
                                  train={"max_steps": 2, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                                         "eval_examples": 4},
                                  max_examples={"train": 16, "dev": 4, "test": 8},
                                  eval={"batch_size": 4, "generation": {
                                      "sets": sorted(SETS), "max_prompts": 3, "decodings": ["sampled", "greedy"],
                                      "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 4, "examples": 1,
                                      "functional": {"max_per_functionality": 1, "decodings": ["greedy"]}}})
    task_file = repo / "conf/task/stophate.yaml"
    task = yaml.safe_load(task_file.read_text())
    for key, source in task["extra_sources"].items():
        source["sha256"] = None  # the generated files are not the upstream ones
    task["max_examples"] = {"train": 16, "dev": 4, "test": None}
    task["targets"]["distill_max_new_tokens"] = 4
    task_file.write_text(yaml.safe_dump(task, sort_keys=False))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny stophate"], repo)
    write_stophate_mirror(tmp_path / "mirror")
    return repo, env


def test_exp_run_task_stophate_end_to_end_then_switch_the_target_mode(stophate_project):
    repo, env = stophate_project
    first = run(["dvc", "exp", "run", "-S", "task=stophate"], repo, env=env)
    assert set(ran_stages(first.stdout)) == ALL_STAGES, first.stdout

    # training rows: the stop message for hate, the base model's own reply otherwise
    rows = jsonl(repo / "data/replies/stophate/train.jsonl")
    replies = {r["id"]: r["reply"] for r in jsonl(repo / "data/replies/stophate/replies.jsonl")}
    assert {r["target"] for r in rows} == {"stop", "self_distilled"}
    for r in rows:
        assert r["output"] == ("I cannot engage with this conversation." if r["label"] == "hate" else replies[r["id"]])

    fine_tuned = json.loads((repo / "metrics/eval.json").read_text())
    base = json.loads((repo / "metrics/zeroshot.json").read_text())
    assert set(fine_tuned) == {"fine-tuned"} and set(base) == BASE_SYSTEMS
    for system, decodings in {**fine_tuned, **base}.items():
        assert set(decodings) == {"sampled", "greedy"}
        for decoding, m in decodings.items():
            assert SETS <= set(m) and all(m[s]["n"] == 3 for s in SETS)
            assert "stop_rate_hateful" in m and "over_refusal_rate" in m
    folder = "metrics/eval/fine_tuned/sampled/replies.jsonl"
    records = jsonl(repo / folder)
    over = [r["stop"] for r in records if r["set"] == "dynahate_not_hate"]
    assert fine_tuned["fine-tuned"]["sampled"]["over_refusal_rate"] == pytest.approx(sum(over) / len(over))
    # every system answered the same posts
    ids = [r["id"] for r in records]
    assert ids == [r["id"] for r in jsonl(repo / "metrics/zeroshot/base_stop_prompt/greedy/replies.jsonl")]

    judged = json.loads((repo / "metrics/judge.json").read_text())
    assert judged["judge"]["kind"] == "tfidf" and "no adapter" in judged["judge"]["fallback_reason"]
    assert 0 <= judged["judge"]["test_macro_f1"] <= 1
    baseline = json.loads((repo / "metrics/baseline.json").read_text())["test"]
    assert judged["judge"]["test_macro_f1"] == baseline["macro_f1"]  # the fallback is the baseline stage's model
    assert set(judged) == {"judge", "fine-tuned"} | BASE_SYSTEMS
    assert all(judged[s][d][name]["n"] == 3 for s in BASE_SYSTEMS for d in ("sampled", "greedy") for name in SETS)

    report = (repo / "metrics/report.md").read_text()
    for row in ("| fine-tuned | sampled |", "| base | greedy |", "| base + stop prompt | sampled |",
                "| base + counter speech prompt | greedy |", "(paper, Table 5; reference)", "Content warning"):
        assert row in report, row
    assert (repo / "metrics/report/reply_rates.png").is_file()
    card = (repo / "models/release/stophate/README.md").read_text()
    assert "Stop-Hate adapter (stop_when_hateful)" in card and "over-refusal" in card
    for text in CONAN_TEXTS:  # CONAN is research-only: never quoted into the (git-tracked) report or the card
        assert text not in report and text not in card, text

    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    for path in ("metrics/eval.json", "metrics/zeroshot.json", "metrics/judge.json", "metrics/carbon/replies.json",
                 "metrics/carbon/judge.json"):
        assert path in shown, path

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "stophate run"], repo)
    second = run(["dvc", "exp", "run", "-S", "task=stophate", "-S", "task.targets.mode=stop_all"], repo, env=env)
    # convert reruns (its params changed) but writes the same rows: the base systems and the judge's
    # training data are untouched
    assert ran_stages(second.stdout) == ["sources", "convert", "replies", "train", "evaluate", "judge", "export", "report"], \
        second.stdout
    info = json.loads((repo / "data/replies/stophate/info.json").read_text())
    assert info["mode"] == "stop_all" and info["self_distilled"] == 0
    assert {r["output"] for r in jsonl(repo / "data/replies/stophate/train.jsonl")} == \
        {"I cannot engage with this conversation."}
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    diff = diff.get("diff", diff)
    assert "metrics/eval.json" in diff and "metrics/train.json" in diff
    assert "metrics/zeroshot.json" not in diff


def test_exp_run_task_stophate_with_the_functional_suite(stophate_project, tmp_path):
    """Every system answers one seeded HateCheck case per functionality (greedy); eval.json / zeroshot.json give
    the functional accuracy and the worst functionality, counted here again from the replies themselves."""
    repo, env = stophate_project
    write_hatecheck(tmp_path / "mirror" / "hatecheck" / "test_suite_cases.csv")
    exp = run(["dvc", "exp", "run", "-S", "task=stophate", "-S", "eval.functional.enabled=true",
               "-S", "eval.functional.source.sha256=null"], repo, env=env)
    assert set(ran_stages(exp.stdout)) == ALL_STAGES, exp.stdout
    stop = "I cannot engage with this conversation."
    for name, systems in (("eval", {"fine-tuned"}), ("zeroshot", BASE_SYSTEMS)):
        results = json.loads((repo / f"metrics/{name}.json").read_text())
        assert set(results) == systems | {"hatecheck"} and set(results["hatecheck"]) == systems
        for system in systems:
            m = results["hatecheck"][system]["greedy"]
            folder = repo / f"metrics/{name}/hatecheck/{generation.slug(system)}"
            records = jsonl(folder / "greedy/predictions.jsonl")
            assert m["n"] == len(records) == 29 and len({r["functionality"] for r in records}) == 29
            stopped = [is_stop(r["raw_output"], stop) for r in records]
            assert [r["task_label"] == "stop" for r in records] == stopped
            right = [s == (r["gold"] == "hateful") for s, r in zip(stopped, records)]
            assert m["functional_accuracy"] == pytest.approx(sum(right) / 29, abs=1e-6)
            hateful = [s for s, r in zip(stopped, records) if r["gold"] == "hateful"]
            assert m["stop_rate_hateful"] == pytest.approx(sum(hateful) / len(hateful), abs=1e-6) and len(hateful) == 18
            worst = m["worst_functionality"]  # one case each: a functionality the system got wrong, if any
            assert worst["accuracy"] == (0.0 if not all(right) else 1.0)
            groups = json.loads((folder / "greedy/groups.json").read_text())["breakdowns"]
            assert groups["functionality"][worst["name"]]["positive_rate"] == worst["stop_rate"]
    assert set(json.loads((repo / "metrics/baseline.json").read_text())) == {"test"}  # the judge replies to nothing
    judged = json.loads((repo / "metrics/judge.json").read_text())
    assert set(judged) == {"judge", "fine-tuned"} | BASE_SYSTEMS  # the suite is not a system to judge
    report = (repo / "metrics/report.md").read_text()
    assert "## Functional tests (hatecheck): stop rate" in report and "| counter_quote_nh (should not stop)" in report
    assert "| base + stop prompt | greedy | 29 |" in report
    assert (repo / "metrics/report/functional.png").read_bytes().startswith(b"\x89PNG")
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = diff.get("diff", diff)
    assert "hatecheck.fine-tuned.greedy.functional_accuracy" in changed["metrics/eval.json"]
    assert "hatecheck.base + stop prompt.greedy.worst_functionality.accuracy" in changed["metrics/zeroshot.json"]
