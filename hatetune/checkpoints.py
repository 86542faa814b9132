"""Checkpoints of a training run: its fingerprint, what to resume from, and cleaning up after success.

A rerun resumes only from checkpoints made with the same settings, data and base model (the fingerprint);
anything else starts fresh, so a resumed run never mixes two recipes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterable, Optional

from omegaconf import OmegaConf

from .io import sha256_file, write_json

RUN_FILE = "hatetune_run.json"  # fingerprint of the settings the checkpoints belong to
# Settings that do not change what is trained.
VOLATILE_TRAIN_KEYS = ("logging_steps", "resume")


def run_fingerprint(cfg, data_files: Iterable[Path], base_dir: Path) -> str:
    """What the checkpoints of a run depend on: the settings that change training and the data / base model."""
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "lora", "train")}
    for volatile in VOLATILE_TRAIN_KEYS:
        settings["train"].pop(volatile, None)
    settings.update(seed=cfg.seed, prompt=OmegaConf.to_container(cfg.task.prompt, resolve=True))
    settings["data"] = {Path(p).name: sha256_file(p) for p in data_files if Path(p).exists()}
    base_files = sorted(p for p in Path(base_dir).glob("*") if p.suffix in (".json", ".safetensors"))
    settings["base"] = {p.name: p.stat().st_size for p in base_files}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def step_of(checkpoint: str | Path) -> int:
    """The optimizer step of a `checkpoint-N` folder."""
    return int(Path(checkpoint).name.split("-")[-1])


def last_complete_checkpoint(ckpt_dir: Path) -> Optional[str]:
    """The highest checkpoint-N that was fully written (the Trainer writes trainer_state.json last)."""
    done = [p for p in Path(ckpt_dir).glob("checkpoint-*")
            if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(done, key=step_of)) if done else None


def prepare_checkpoints(ckpt_dir: Path, fingerprint: str, resume: bool) -> Optional[str]:
    """The checkpoint to resume from, or None; clears checkpoints that belong to other settings."""
    ckpt_dir = Path(ckpt_dir)
    run_file = ckpt_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    last = last_complete_checkpoint(ckpt_dir)
    if last and resume and previous.get("fingerprint") == fingerprint:
        for partial in ckpt_dir.glob("checkpoint-*"):  # cut short by the kill
            if not (partial / "trainer_state.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)
        return last
    if last:
        why = "train.resume is false" if not resume else "they were made with other settings or data"
        print(f"starting fresh: ignoring the checkpoints in {ckpt_dir} ({why})", flush=True)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"fingerprint": fingerprint})
    return None


def clear_checkpoints(ckpt_dir: Path) -> None:
    """After a successful run the adapter is saved: drop checkpoint-* (the fingerprint file stays)."""
    for sub in Path(ckpt_dir).glob("checkpoint-*"):
        shutil.rmtree(sub, ignore_errors=True)
