"""hatetune.checkpoints: what a rerun resumes from, and when it must start fresh."""
from __future__ import annotations

from pathlib import Path

import pytest

from hatetune import checkpoints, config
from training_data import write_processed

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert checkpoints.prepare_checkpoints(ckpt, "aaa", resume=True) is None
    for step in (2, 4):
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (ckpt / "checkpoint-6").mkdir()  # cut short by a kill: no trainer_state.json
    assert checkpoints.prepare_checkpoints(ckpt, "aaa", resume=True) == str(ckpt / "checkpoint-4")
    assert not (ckpt / "checkpoint-6").exists()
    assert checkpoints.prepare_checkpoints(ckpt, "aaa", resume=False) is None
    assert not list(ckpt.glob("checkpoint-*"))
    (ckpt / "checkpoint-2").mkdir()
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert checkpoints.prepare_checkpoints(ckpt, "bbb", resume=True) is None
    assert "other settings" in capsys.readouterr().out


def test_fingerprint_changes_with_settings_and_data_but_not_logging(tmp_path, tiny_model_dir):
    cfg = config.load([f"model.path={tiny_model_dir}"], ROOT / "params.yaml")
    data = write_processed(tmp_path / "data")
    files = [data / "train.jsonl", data / "dev.jsonl"]
    first = checkpoints.run_fingerprint(cfg, files, tiny_model_dir)
    cfg.train.logging_steps = 99
    assert checkpoints.run_fingerprint(cfg, files, tiny_model_dir) == first
    cfg.lora.r = 16
    assert checkpoints.run_fingerprint(cfg, files, tiny_model_dir) != first
    cfg.lora.r = 8
    (data / "train.jsonl").write_text((data / "train.jsonl").read_text()[:-200] + "\n")
    assert checkpoints.run_fingerprint(cfg, files, tiny_model_dir) != first


@pytest.mark.parametrize("name, step", [("checkpoint-40", 40), ("/x/y/checkpoint-7", 7)])
def test_step_of(name, step):
    assert checkpoints.step_of(name) == step
