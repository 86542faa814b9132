"""The typed config: params.yaml == composition of conf/, overrides, and one clear error per bad value."""
from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from hatetune import config
from hatetune.errors import ConfigError

from support import ROOT


def test_params_yaml_equals_composition_of_conf(monkeypatch):
    """dvc repro reads params.yaml as it is: it must never drift from conf/ (run `make params` to fix)."""
    monkeypatch.chdir(ROOT)
    composed = OmegaConf.to_container(config.compose(), resolve=True)
    committed = OmegaConf.to_container(OmegaConf.load(ROOT / "params.yaml"), resolve=True)
    assert committed == composed


def test_check_command_detects_drift(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    drifted = tmp_path / "params.yaml"
    cfg = config.compose()
    cfg.lora.r = 99
    drifted.write_text(config.to_yaml(cfg))
    assert config.main(["check", "--params", str(drifted)]) == 1
    drifted.write_text(config.to_yaml(config.compose()))
    assert config.main(["check", "--params", str(drifted)]) == 0


def test_default_composition_validates(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config.validate(config.compose())
    assert cfg.task.name == "dynahate" and cfg.model.name == "smollm2_135m_instruct"


@pytest.mark.parametrize("overrides, key", [
    (["lora.r=-1"], "lora.r"),
    (["lora.r=abc"], "lora.r"),
    (["task=foo"], "task"),
    (["task=mhs", "task.labels.binning.hate_above=abc"], "task.labels.binning.hate_above"),
    (["task=mhs", "task.labels.binning.hate_above=-2"], "task.labels.binning"),
    (["train.lr=0"], "train.lr"),
    (["eval.mode=sample"], "eval.mode"),
    (["task.split.fractions.train=0.5"], "task.split.fractions"),
    (["+lora.rank=8"], "lora.rank"),
    (["serve.port=0"], "serve.port"),
    (["serve.backend=vllm"], "serve.backend"),
    (["serve.log_text=all"], "serve.log_text"),
    (["serve.max_texts=1000"], "serve.max_texts"),
    (["serve.url=localhost:11434"], "serve.url"),
    (["export.qtype=Q4_0"], "export.qtype"),
    (["export.verify_rows=0"], "export.verify_rows"),
])
def test_bad_values_fail_naming_the_key(overrides, key, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as err:
        config.load(overrides)
    assert key in str(err.value), str(err.value)


def test_key_value_overrides_on_params(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config.load(["lora.r=32", "train.lr=1e-4"])
    assert cfg.lora.r == 32 and cfg.train.lr == pytest.approx(1e-4)
    assert config.lora_alpha(cfg) == 64  # alpha null -> 2 x r


def test_group_override_recomposes(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = config.load(["task=mhs", "lora.r=16"])
    assert cfg.task.name == "mhs" and cfg.task.labels.names == ["Hate", "Neutral", "Supportive"]
    assert cfg.lora.r == 16


def test_stage_cli_reports_bad_override_in_one_line():
    proc = subprocess.run([sys.executable, "-c", "import sys; from hatetune import config; "
                           "from hatetune.errors import exit_on_error; "
                           "exit_on_error(lambda: config.stage_config('doc', 'train', ['lora.r=-1']))()"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lora.r" in proc.stderr
