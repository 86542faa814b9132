"""The typed config: params.yaml == composition of conf/, overrides, and one clear error per bad value."""
from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from hatetune import config
from hatetune.errors import ConfigError, HatetuneError

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
    (["seed=-1"], "seed"),
    (["seed=4294967296"], "seed"),
    (["train.seed=-3"], "train.seed"),
    (["train.lr=nan"], "train.lr"),
    (["train.lr=inf"], "train.lr"),
    (["carbon.pue=nan"], "carbon.pue"),
    (["task=mhs", "task.labels.binning.hate_above=nan"], "task.labels.binning.hate_above"),
    (["lora.alpha=-inf"], "lora.alpha"),
    (["task.split.fractions={train: 0.0, dev: 0.5, test: 0.5}"], "task.split.fractions.train"),
    (["task.source.sha256=abc"], "task.source.sha256"),
    (["task.source.sha256=" + "g" * 64], "task.source.sha256"),
    (["task=stophate", "task.extra_sources.conan.sha256=abc"], "task.extra_sources.conan.sha256"),
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


@pytest.mark.parametrize("digits", ["1" * 64, "0" * 64, "0123" + "4" * 60, "1" * 10 + "e" + "1" * 53,
                                    "1" * 10 + "e" + "0" * 53, "7" * 63 + "0"])
@pytest.mark.parametrize("recompose", [False, True])
def test_an_all_digit_sha256_override_stays_the_text_it_was(digits, recompose, monkeypatch):
    """YAML reads 0123... as octal, 1e5... as a float (inf): a string key keeps what was typed."""
    monkeypatch.chdir(ROOT)
    cfg = config.load((["task=dynahate"] if recompose else []) + [f"task.source.sha256={digits}"])
    assert cfg.task.source.sha256 == digits


def test_string_keys_are_found_in_the_schema():
    assert config.is_string_key("task.source.sha256") and config.is_string_key("model.revision")
    assert config.is_string_key("task.labels.map.nothate")  # Dict[str, str] values
    assert config.is_string_key("task.extra_sources.conan.sha256")  # Dict[str, SourceConf] values
    assert not config.is_string_key("lora.r") and not config.is_string_key("train.lr")
    assert not config.is_string_key("no.such.key")
    assert config.keep_strings(["task.source.sha256=0123", "lora.r=8", "task.source.sha256=null"]) == \
        ["task.source.sha256='0123'", "lora.r=8", "task.source.sha256=null"]


@pytest.mark.parametrize("content, message", [
    ("seed: 42\ntask:\n  name: [dynahate\n", "row 3: not valid YAML (while parsing a flow sequence"),
    ("seed: 1\nseed: 2\n", "row 2: not valid YAML"),
    ("- a\n- b\n", "row 1: expected a mapping of config keys"),
])
def test_a_malformed_params_file_fails_naming_file_and_line(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    with pytest.raises(HatetuneError) as err:
        config.load([], bad)
    assert str(err.value).startswith(f"{bad}, {message}"), str(err.value)
    bad.write_bytes("seed: 42\n".encode("utf-16"))
    with pytest.raises(HatetuneError, match="UTF-16-LE"):
        config.load([], bad)


def test_stage_config_makes_the_stage_owner_only_unless_turned_off(tmp_path, monkeypatch):
    import os
    import stat

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data").chmod(0o755)
    os.umask(0o022)
    config.stage_config("doc", "labels", ["--params", str(ROOT / "params.yaml"), "privacy.owner_only=false"])
    assert os.umask(0o022) == 0o022 and stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o755
    view = config.stage_config("doc", "labels", ["--params", str(ROOT / "params.yaml")])
    assert view.privacy.owner_only is True
    assert os.umask(0o022) == 0o077 and stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
