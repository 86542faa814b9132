"""evaluate, evaluate_zeroshot, baseline and report under real DVC, on a tiny model and a generated DynaHate mirror:
`dvc repro` runs everything; `dvc exp run -S lora.r=16` reruns train, evaluate and report but neither the zero-shot
evaluation nor the baseline; `dvc metrics show/diff` see the results; any Alpaca JSONL can be scored by hand."""
from __future__ import annotations

import json

import pytest

from integration.conftest import make_tiny_project, ran_stages, run  # tests/ is on sys.path

ALL_STAGES = {"download", "labels", "convert", "base_model", "train", "evaluate", "evaluate_zeroshot", "baseline",
              "report"}


@pytest.fixture
def tiny_project(project_repo, tmp_path, tiny_model_dir):
    return make_tiny_project(project_repo, tmp_path, tiny_model_dir,
                             train={"max_steps": 2, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                                    "eval_examples": 4},
                             max_examples={"train": 16, "dev": 4, "test": 8}, eval={"batch_size": 4})


def test_pipeline_evaluates_reports_and_keeps_zeroshot_on_lora_change(tiny_project):
    repo, env = tiny_project
    first = run(["dvc", "repro"], repo, env=env)
    assert set(ran_stages(first.stdout)) == ALL_STAGES, first.stdout

    for name in ("eval", "zeroshot", "baseline"):
        test = json.loads((repo / f"metrics/{name}.json").read_text())["test"]
        assert test["n"] == 8 and 0 <= test["accuracy"] <= 1, name
        records = (repo / f"metrics/{name}/test/predictions.jsonl").read_text().splitlines()
        assert len(records) == 8 and set(json.loads(records[0])) >= {"id", "text", "gold", "raw_output", "predicted"}
    assert "agreement_greedy_score" in json.loads((repo / "metrics/eval.json").read_text())["test"]
    report = (repo / "metrics/report.md").read_text()
    assert "| fine-tuned | 8 |" in report and "| zero-shot | 8 |" in report and "| TF-IDF + LR baseline | 8 |" in report
    assert {p.name for p in (repo / "metrics/report").iterdir()} == {"loss.png", "per_class_f1.png", "confusion.png"}
    release = repo / "models/release/dynahate"
    assert (release / "adapter_model.safetensors").read_bytes() == \
        (repo / "models/adapter/dynahate/adapter_model.safetensors").read_bytes()
    assert "Content warning" in (release / "README.md").read_text()
    peft_card = repo / "models/adapter/dynahate/README.md"  # peft writes a stub card; the train stage's output
    assert not peft_card.exists() or "Content warning" not in peft_card.read_text()  # ... stays untouched

    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    for path in ("metrics/train.json", "metrics/eval.json", "metrics/zeroshot.json", "metrics/baseline.json",
                 "metrics/carbon/evaluate.json", "metrics/carbon/total.json"):
        assert path in shown, path
    assert run(["dvc", "plots", "show", "--json"], repo).returncode == 0
    assert ran_stages(run(["dvc", "repro"], repo, env=env).stdout) == []

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    exp = run(["dvc", "exp", "run", "-S", "lora.r=16"], repo, env=env)
    assert ran_stages(exp.stdout) == ["train", "evaluate", "report"], exp.stdout
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    train_diff = diff.get("diff", diff)["metrics/train.json"]  # the workspace (experiment) against HEAD
    assert train_diff["trainable_params"]["new"] == 2 * train_diff["trainable_params"]["old"], train_diff


def test_any_alpaca_jsonl_can_be_scored_by_hand(tiny_project):
    repo, env = tiny_project
    run(["dvc", "repro", "train"], repo, env=env)
    rows = [{"instruction": "Classify the post:", "input": f"post {i}", "output": ["hate", "not hate"][i % 2],
             "system": ""} for i in range(5)]
    (repo / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(["python", "-m", "stages.evaluate", "eval.data=mine.jsonl", "eval.mode=score"], repo, env=env)
    result = json.loads((repo / "metrics/external/mine.json").read_text())["mine"]
    assert result["n"] == 5 and result["invalid_rate"] == 0  # score mode: always a real label
    assert (repo / "metrics/external/mine/mine/predictions.jsonl").is_file()

    rows[3]["output"] = "spam"
    (repo / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = run(["python", "-m", "stages.evaluate", "eval.data=bad.jsonl"], repo, env=env, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: bad.jsonl, row 4, field 'output': gold label 'spam'")
    assert not (repo / "metrics/external/bad.json").exists()
