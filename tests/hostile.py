"""What the hostile-input tests share: a copy of the project where the real stage scripts run (`python -m
stages.X`, as DVC runs them), and the checks every bad input must pass: exit 2, ONE `error:` line naming the
file / row / field or the config key, no traceback, the outputs of the earlier good run byte-identical, and no
temporary file left behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from support import ROOT

PROJECT_FILES = ["conf", "hatetune", "stages", "dvc.yaml", "params.yaml"]
OUTPUT_DIRS = ("data", "models", "metrics")


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for rel in PROJECT_FILES:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / rel)
    return dest


def stage(project: Path, name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m stages.<name> args...` in `project`, as DVC would run it (the script, params.yaml, dvc.yaml)."""
    full_env = {**os.environ, "PYTHONPATH": str(project), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v != ""}  # "" unsets a variable
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=project, env=full_env, text=True,
                          capture_output=True, umask=0o022)  # a usual umask, whatever the test runner's


def succeed(project: Path, name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = stage(project, name, *args, env=env)
    assert proc.returncode == 0, f"stages.{name} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def outputs(project: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every output file's bytes, by path (paths starting with one of `skip` left out)."""
    found = {}
    for top in OUTPUT_DIRS:
        for path in sorted((project / top).rglob("*")):
            rel = path.relative_to(project).as_posix()
            if path.is_file() and not rel.startswith(skip):
                found[rel] = path.read_bytes()
    return found


def temporaries(project: Path) -> list[str]:
    """What `hatetune.io.atomic_path` names its temporaries (.<name>.<random>.tmp), anywhere in the project."""
    return [p.relative_to(project).as_posix() for p in project.rglob(".*.tmp")]


def assert_one_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and exactly one `error:` line, the last one, holding every fragment; no traceback."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]
