"""The base_model and train stages under real DVC, with a tiny local model and a generated DynaHate mirror:
`dvc repro train` trains, a second repro runs nothing, `dvc exp run -S lora.r=16 train` reruns only train."""
from __future__ import annotations

import json

import pytest

from integration.conftest import make_tiny_project, ran_stages, run  # tests/ is on sys.path


@pytest.fixture
def tiny_project(project_repo, tmp_path, tiny_model_dir):
    """The project with conf/ pointing at the tiny model and sized for seconds; params.yaml recomposed."""
    return make_tiny_project(project_repo, tmp_path, tiny_model_dir,
                             train={"max_steps": 4, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                                    "eval_examples": 4},
                             max_examples={"train": 24, "dev": 8, "test": 8})


def test_repro_train_then_nothing_then_exp_run_reruns_only_train(tiny_project):
    repo, env = tiny_project
    dvc_yaml = (repo / "dvc.yaml").read_text()

    first = run(["dvc", "repro", "train"], repo, env=env)
    assert ran_stages(first.stdout) == ["sources", "download", "labels", "convert", "base_model", "train"], \
        first.stdout
    adapter = repo / "models/adapter/dynahate"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert (adapter / "adapter_model.safetensors").is_file()
    metrics = json.loads((repo / "metrics/train.json").read_text())
    assert metrics["global_step"] == 4 and metrics["train_rows"] == 24
    record = json.loads((repo / "metrics/train_run.json").read_text())
    assert set(record["config"]) == {"seed", "task", "model", "lora", "train", "carbon", "privacy"}  # the stage's view
    assert record["cpu"] and record["versions"]["transformers"] and record["torch_threads"] == 1
    assert (repo / "metrics/train_curves/plots/metrics/loss.tsv").is_file()
    assert json.loads((repo / "metrics/carbon/train.json").read_text())["energy_kwh"] > 0
    assert (repo / "dvc.yaml").read_text() == dvc_yaml  # dvclive did not touch it
    assert "step 4/4" in first.stdout and "loss" in first.stdout  # one line per log step

    again = run(["dvc", "repro", "train"], repo, env=env)
    assert ran_stages(again.stdout) == ["sources"], again.stdout  # it always checks; nothing else reruns

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert any("metrics/train.json" in files.get("data", {}) for files in shown.values()), shown
    plots = run(["dvc", "plots", "show", "--json"], repo).stdout
    assert "metrics/train_curves/plots/metrics" in plots

    exp = run(["dvc", "exp", "run", "-S", "lora.r=16", "train"], repo, env=env)
    assert ran_stages(exp.stdout) == ["sources", "train"], exp.stdout
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32  # alpha null -> 2 x r
    assert json.loads((repo / "metrics/train.json").read_text())["resumed_from_step"] == 0  # r=8 checkpoints unused
