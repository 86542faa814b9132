"""evaluate, evaluate_zeroshot, baseline and report under real DVC, on a tiny model and a generated DynaHate mirror:
`dvc repro` runs everything; `dvc exp run -S lora.r=16` reruns train, evaluate and report but neither the zero-shot
evaluation nor the baseline; `dvc metrics show/diff` see the results; any Alpaca JSONL can be scored by hand."""
from __future__ import annotations

import json
import math

import pytest

from integration.conftest import make_tiny_project, ran_stages, run  # tests/ is on sys.path

ALL_STAGES = {"sources", "download", "labels", "convert", "base_model", "replies", "train", "functional_suite",
              "evaluate", "evaluate_zeroshot", "baseline", "judge", "report", "export"}


@pytest.fixture
def tiny_project(project_repo, tmp_path, tiny_model_dir):
    return make_tiny_project(project_repo, tmp_path, tiny_model_dir,
                             train={"max_steps": 2, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                                    "eval_examples": 4},
                             max_examples={"train": 16, "dev": 4, "test": 8},
                             eval={"batch_size": 4, "agreement": True})  # off by default: its path is tested here


def test_pipeline_evaluates_reports_and_keeps_zeroshot_on_lora_change(tiny_project):
    repo, env = tiny_project
    first = run(["dvc", "repro"], repo, env=env)
    assert set(ran_stages(first.stdout)) == ALL_STAGES, first.stdout

    test_rows = [json.loads(line) for line in (repo / "data/processed/dynahate/test.jsonl").read_text().splitlines()]
    predicted = {}
    for name in ("eval", "zeroshot", "baseline"):
        test = json.loads((repo / f"metrics/{name}.json").read_text())["test"]
        records = [json.loads(line) for line in (repo / f"metrics/{name}/test/predictions.jsonl").read_text().splitlines()]
        # the metrics are those of the predictions written beside them, for exactly the test rows
        assert [r["id"] for r in records] == [r["id"] for r in test_rows]
        assert [r["gold"] for r in records] == [r["output"] for r in test_rows]
        assert test["n"] == 8 and test["accuracy"] == pytest.approx(
            sum(r["gold"] == r["predicted"] for r in records) / 8), name
        assert test["per_class"]["hate"]["support"] == sum(r["gold"] == "hate" for r in records)
        predicted[name] = [r["predicted"] for r in records]
    fine_tuned = json.loads((repo / "metrics/eval.json").read_text())["test"]
    records = [json.loads(line) for line in (repo / "metrics/eval/test/predictions.jsonl").read_text().splitlines()]
    rule = json.loads((repo / "metrics/eval/calibration.json").read_text())
    # score mode: each record carries the label log-likelihoods, P(hate) at the dev-fitted temperature, the
    # decision at the dev-fitted threshold, and greedy's label for the agreement
    assert fine_tuned["threshold"] == rule["threshold"] and rule["dev_rows"] == 4
    for r in records:
        margin = (r["log_probs"]["hate"] - r["log_probs"]["not hate"]) / rule["temperature"]
        assert r["p_positive"] == pytest.approx(1 / (1 + math.exp(-margin)), abs=1e-3)
        assert r["predicted"] == ("hate" if r["p_positive"] >= rule["threshold"] else "not hate")
        assert r["score_label"] == max(r["log_probs"], key=r["log_probs"].get)
    assert fine_tuned["agreement_greedy_score"] == pytest.approx(
        sum(r["greedy_label"] == r["score_label"] for r in records) / 8)
    assert fine_tuned["truncated_prompts"] == 0 and "agreement_score_full_first_token" in fine_tuned
    assert {"pr_curve.png", "reliability.png", "calibration.json"} <= {p.name for p in (repo / "metrics/eval").iterdir()}
    report = (repo / "metrics/report.md").read_text()
    assert "| fine-tuned | 8 |" in report and "| zero-shot | 8 |" in report and "| TF-IDF + LR baseline | 8 |" in report
    assert {p.name for p in (repo / "metrics/report").iterdir()} == {"loss.png", "per_class_f1.png", "confusion.png"}
    assert json.loads((repo / "metrics/judge.json").read_text())["judge"]["kind"] == "not applicable"
    assert json.loads((repo / "data/replies/dynahate/info.json").read_text())["applicable"] is False
    release = repo / "models/release/dynahate"
    assert (release / "adapter_model.safetensors").read_bytes() == \
        (repo / "models/adapter/dynahate/adapter_model.safetensors").read_bytes()
    assert "Content warning" in (release / "README.md").read_text()
    peft_card = repo / "models/adapter/dynahate/README.md"  # peft writes a stub card; the train stage's output
    assert not peft_card.exists() or "Content warning" not in peft_card.read_text()  # ... stays untouched

    # a base without a source GGUF (here a local folder) is exported as the merged Hugging Face model
    exported = json.loads((repo / "metrics/export.json").read_text())
    assert exported["format"] == "merged_hf" and exported["agreement_merged_evaluate"] is not None
    assert (repo / "models/export/dynahate/merged/model.safetensors").is_file()
    assert (repo / "models/export/dynahate/Modelfile").is_file()

    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    for path in ("metrics/train.json", "metrics/eval.json", "metrics/zeroshot.json", "metrics/baseline.json",
                 "metrics/carbon/evaluate.json", "metrics/carbon/total.json"):
        assert path in shown, path
    assert run(["dvc", "plots", "show", "--json"], repo).returncode == 0
    assert ran_stages(run(["dvc", "repro"], repo, env=env).stdout) == ["sources"]

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    exp = run(["dvc", "exp", "run", "-S", "lora.r=16"], repo, env=env)
    # judge reads the evaluate stage's output: for a classifier it only writes "not applicable"
    assert ran_stages(exp.stdout) == ["sources", "train", "evaluate", "judge", "export", "report"], exp.stdout
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
