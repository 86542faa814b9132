"""The reproducibility contract: dvc.yaml declares exactly the code and params each stage uses, and the same
paths as hatetune/paths.py, so `dvc repro` reruns exactly what a change touches. Each check is shown failing on a
dvc.yaml with one entry removed."""
from __future__ import annotations

import ast
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from dvc_contract import ROOT, data_paths, python_dep_problems
from hatetune import config, paths, schema
from hatetune.errors import UndeclaredParamError


@pytest.fixture(scope="module")
def dvc():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


@pytest.fixture(scope="module")
def params():
    return OmegaConf.to_container(OmegaConf.load(ROOT / "params.yaml"), resolve=True)


# ------------------------------------------------------------------------------------------------- code
def test_every_stage_declares_exactly_the_modules_it_imports(dvc):
    assert python_dep_problems(dvc) == []


def test_the_check_fails_when_a_needed_module_is_missing_or_one_too_many(dvc):
    broken = copy.deepcopy(dvc)
    broken["stages"]["evaluate"]["deps"].remove("hatetune/metrics.py")
    broken["stages"]["download"]["deps"].append("hatetune/training.py")
    assert python_dep_problems(broken) == ["stage download: dep hatetune/training.py is not imported",
                                           "stage evaluate: missing dep hatetune/metrics.py"]


def test_package_init_files_hold_no_code():
    """They are left out of the stages' deps, which is exact only while they define nothing that runs."""
    for init in sorted((ROOT / "hatetune").rglob("__init__.py")) + [ROOT / "stages/__init__.py"]:
        body = ast.parse(init.read_text()).body
        for node in body:
            is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            is_version = isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]
            assert is_docstring or is_version, f"{init} runs code: list it in the stages' deps"


# ------------------------------------------------------------------------------------------------ params
def test_every_declared_param_exists(dvc, params):
    cfg = config.load([], ROOT / "params.yaml")
    for name in dvc["stages"]:
        keys = config.declared_params(name, ROOT / "dvc.yaml")
        assert keys, name
        config.stage_view(cfg, keys)  # raises on a key params.yaml does not have


@pytest.mark.parametrize("task", schema.TASKS)
def test_every_declared_param_is_written_to_params_yaml_for_every_task(task):
    """DVC reads params.yaml as composed from conf/, without the schema's defaults: a declared key that no conf/
    file writes fails `dvc repro` ("missing from params.yaml") although validation would fill it in."""
    composed = OmegaConf.to_container(config.compose([f"task={task}"]), resolve=True)
    for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
        for key in config.declared_params(name, ROOT / "dvc.yaml"):
            node = composed
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: {key} is not in params.yaml ({task})"
                node = node[part]


def test_every_stage_declares_the_owner_only_key(dvc):
    """config.stage_config reads privacy.owner_only for every stage (files holding posts are owner-only), so a
    stage without it fails at start; this says which, before anything runs."""
    assert [name for name in dvc["stages"]
            if "privacy.owner_only" not in config.declared_params(name, ROOT / "dvc.yaml")] == []


def test_a_stage_sees_only_its_declared_params():
    cfg = config.load([], ROOT / "params.yaml")
    view = config.stage_view(cfg, ["task.name", "eval.splits", "eval.baseline", "seed"])
    assert view.task.name == cfg.task.name and view.eval.baseline.c == cfg.eval.baseline.c
    with pytest.raises(Exception) as err:
        view.eval.data  # noqa: B018 - the read is the test
    assert getattr(err.value, "full_key", None) == "eval.data"
    with pytest.raises(config.ConfigError, match="lora.rank"):
        config.stage_view(cfg, ["lora.rank"])


def test_a_stage_reading_an_undeclared_param_fails_naming_it(tmp_path):
    """The real baseline stage, run the way DVC runs it, against a dvc.yaml that lacks one of its params."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"]["baseline"]["params"].remove("eval.baseline")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    processed = tmp_path / paths.processed_dir("dynahate")
    processed.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        rows = [{"instruction": "i", "input": f"post {i}", "output": ["hate", "not hate"][i % 2], "system": ""}
                for i in range(6)]
        (processed / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "baseline"}
    proc = subprocess.run([sys.executable, "-m", "stages.baseline"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {UndeclaredParamError('eval.baseline')}"
    assert not (tmp_path / paths.results_json(paths.results_base(paths.BASELINE))).exists()
    # with the real dvc.yaml the same stage runs
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    ok = subprocess.run([sys.executable, "-m", "stages.baseline"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr


# ------------------------------------------------------------------------------------------------- paths
def test_dvc_yaml_paths_agree_with_the_paths_module(dvc, params):
    module = {p.as_posix() for p in paths.pipeline_paths(params["task"]["name"], params["model"]["name"])}
    assert data_paths(dvc, params) == module


def test_the_path_check_fails_when_dvc_yaml_names_another_path(dvc, params):
    broken = copy.deepcopy(dvc)
    broken["stages"]["labels"]["outs"] = ["data/labels/${task.name}"]
    module = {p.as_posix() for p in paths.pipeline_paths(params["task"]["name"], params["model"]["name"])}
    assert data_paths(broken, params) - module == {"data/labels/dynahate"}


ROOTS = ("data", "models", "metrics")


def _path_literals(path: Path) -> list[str]:
    """Strings naming a project path: "data/...", "metrics/..." anywhere, and Path("data") & co."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value \
                and node.value.split("/")[0] in ROOTS and "\n" not in node.value and " " not in node.value:
            found.append(node.value)  # a docstring mentioning metrics/eval.json has spaces: prose, not a path
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Path" and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in ROOTS:
            found.append(node.args[0].value)
    return found


def test_no_path_literal_outside_the_paths_module():
    files = sorted((ROOT / "hatetune").rglob("*.py")) + sorted((ROOT / "stages").glob("*.py"))
    offenders = {f.relative_to(ROOT).as_posix(): _path_literals(f) for f in files if f.name != "paths.py"}
    assert {f: lits for f, lits in offenders.items() if lits} == {}
    assert _path_literals(ROOT / "hatetune/paths.py")  # the scan does see literals where they are
