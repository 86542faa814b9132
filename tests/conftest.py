"""Shared fixtures. Tests pin torch to one thread: 2-core machines are 10-20x slower when threads compete."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny_model.py, support.py ...
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real tiny Llama (random weights, trained BPE tokenizer, ChatML template) in HF format."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def git_identity(monkeypatch):
    for var, value in [("GIT_AUTHOR_NAME", "hatetune-test"), ("GIT_AUTHOR_EMAIL", "test@hatetune.invalid"),
                       ("GIT_COMMITTER_NAME", "hatetune-test"), ("GIT_COMMITTER_EMAIL", "test@hatetune.invalid")]:
        monkeypatch.setenv(var, value)


@pytest.fixture(autouse=True)
def _keep_umask():
    """A stage run in-process sets the umask owner-only (privacy.owner_only); the next test gets the old one."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
