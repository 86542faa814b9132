"""Integration fixtures: a copy of this project in a fresh git repository, where real `dvc` commands run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a clone of the project holds that the pipeline needs (no data, models or metrics outputs).
PROJECT_PATHS = ["conf", "hatetune", "stages", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
                 "pyproject.toml"]


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command with the venv's bin first on PATH (stage commands call `python`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), **kw.pop("env", {})}
    env = {k: v for k, v in env.items() if v != ""}  # an empty value unsets the variable
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def project_repo(tmp_path, git_identity) -> Path:
    """A fresh git repo holding a copy of the project's pipeline files, committed once (dvc exp needs it)."""
    repo = tmp_path / "project"
    repo.mkdir()
    for rel in PROJECT_PATHS:
        src = ROOT / rel
        if not src.exists():
            continue
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "project"], repo)
    return repo


def ran_stages(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    import re

    return re.findall(r"Running stage '([^']+)'", output)


def make_tiny_project(repo: Path, tmp_path: Path, model_dir: Path | None, train: dict, max_examples: dict,
                      eval: dict | None = None) -> tuple[Path, dict]:
    """Point the project's conf/ at a tiny local model (None: leave the model to the mirror, e.g. a tiny GGUF put
    there), size it for seconds, recompose params.yaml and commit; write a generated DynaHate mirror. Returns the
    repo and the environment for its dvc commands."""
    import yaml

    from upstream_fixtures import write_dynahate

    def update(path: Path, values: dict) -> None:
        data = yaml.safe_load(path.read_text()) or {}
        for key, value in values.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    conf = repo / "conf"
    if model_dir is not None:
        update(conf / "model" / "smollm2_135m_instruct.yaml", {"path": str(model_dir)})
    update(conf / "train" / "cpu.yaml", train)
    if eval:
        update(conf / "eval" / "default.yaml", eval)
    update(conf / "config.yaml", {"data": {"max_examples": max_examples}})
    run(["python", "-m", "hatetune.config", "compose"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny settings"], repo)
    write_dynahate(tmp_path / "mirror" / "dynahate" / "dynahate_v0.2.2_dev.csv", n_single=60, n_pairs=30)
    return repo, {"HATETUNE_MIRROR": str(tmp_path / "mirror"), "OMP_NUM_THREADS": "1"}
