"""The stages that load a model, run by hand as DVC runs them (`python -m stages.X`) on a tiny local model with
`model.trust_remote_code=true`: each warns once, naming the model and its revision; then hostile inputs from that
good state (Alpaca JSONL lines that are not objects or not UTF-8, for `eval.data` and for training; a country
codecarbon does not know) fail with one `error:` line and leave every output byte-identical (issue 12)."""
from __future__ import annotations

import json
import shutil

import pytest

from hatetune import config
from hostile import assert_one_error, copy_project, outputs, stage, succeed, temporaries
from upstream_fixtures import write_dynahate

WARNING = "WARNING: model.trust_remote_code=true"
GOOD = json.dumps({"instruction": "Classify the post:", "input": "a post", "output": "hate", "system": ""})
# (stage, overrides) of one good run by hand, in pipeline order
RUN = [("sources", []), ("download", []), ("labels", []), ("convert", []), ("base_model", []), ("train", []),
       ("evaluate", []), ("evaluate", ["eval.adapter=false"]), ("baseline", []), ("report", [])]
LOADS_A_MODEL = {"base_model", "train", "evaluate", "evaluate_zeroshot", "report"}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, tiny_model_dir):
    """Every stage once, by hand, with trust_remote_code on; returns the project, its env and each stage's
    stderr."""
    base = tmp_path_factory.mktemp("model-stages")
    project = copy_project(base / "project")
    write_dynahate(base / "mirror" / "dynahate" / "dynahate_v0.2.2_dev.csv", n_single=40, n_pairs=20)
    overrides = [f"model.path={tiny_model_dir}", "model.trust_remote_code=true", "train.max_steps=1",
                 "train.batch_size=4", "train.save_steps=1", "train.logging_steps=1", "train.eval_examples=4",
                 "data.max_examples.train=8", "data.max_examples.dev=4", "data.max_examples.test=4",
                 "eval.batch_size=4"]
    # params.yaml as `make params` would write it with these settings in conf/
    (project / "params.yaml").write_text(config.to_yaml(config.compose(overrides)))
    env = {"HATETUNE_MIRROR": str(base / "mirror")}
    stderr = {}
    for name, args in RUN:
        zeroshot = "eval.adapter=false" in args
        proc = succeed(project, name, *args, env={**env, "DVC_STAGE": "evaluate_zeroshot"} if zeroshot else env)
        stderr["evaluate_zeroshot" if zeroshot else name] = proc.stderr
    return project, env, stderr


@pytest.fixture
def project(good_run, tmp_path):
    source, env, _ = good_run
    shutil.copytree(source, tmp_path / "project", symlinks=True)
    return tmp_path / "project", env


def test_trust_remote_code_warns_once_in_every_stage_that_loads_the_model(good_run, tiny_model_dir):
    _, _, stderr = good_run
    for name, err in stderr.items():
        warnings = [line for line in err.splitlines() if line.startswith(WARNING)]
        if name in LOADS_A_MODEL:
            assert len(warnings) == 1, (name, err[-2000:])
            assert "smollm2_135m_instruct" in warnings[0] and str(tiny_model_dir) in warnings[0], warnings[0]
        else:
            assert warnings == [], name


def test_model_and_prediction_files_are_owner_only(good_run):
    project, _, _ = good_run
    for rel in ("data", "models", "models/adapter/dynahate", "metrics/eval"):
        assert (project / rel).stat().st_mode & 0o777 == 0o700, rel
    for rel in ("models/adapter/dynahate/adapter_model.safetensors", "metrics/eval/test/predictions.jsonl",
                "metrics/zeroshot/test/predictions.jsonl", "metrics/baseline/test/predictions.jsonl",
                "models/release/dynahate/README.md"):
        assert (project / rel).stat().st_mode & 0o777 == 0o600, rel


NOT_OBJECTS = {
    "array": (GOOD + "\n" + json.dumps(["a post", "hate"]) + "\n").encode(),
    "null": (GOOD + "\nnull\n").encode(),
    "not-utf8": (GOOD + "\n").encode() + GOOD.replace("a post", "a p\udcffost").encode(
        "utf-8", errors="surrogateescape") + b"\n",
}
EXPECTED = {"array": "row 2: expected a JSON object ({...}) on every line, got an array",
            "null": "row 2: expected a JSON object ({...}) on every line, got null",
            "not-utf8": "row 2, field 'input': not valid UTF-8 (bytes b'\\xff')"}


@pytest.mark.parametrize("case", list(NOT_OBJECTS))
def test_eval_data_lines_that_are_not_utf8_json_objects(project, case):
    project, env = project
    (project / "mine.jsonl").write_bytes(NOT_OBJECTS[case])
    before = outputs(project)
    assert_one_error(stage(project, "evaluate", "eval.data=mine.jsonl", env=env), f"mine.jsonl, {EXPECTED[case]}")
    assert outputs(project) == before and not (project / "metrics/external").exists()
    assert temporaries(project) == []


def test_training_data_that_is_not_utf8_fails_naming_file_row_and_field(project):
    project, env = project
    train = project / "data/processed/dynahate/train.jsonl"
    train.write_bytes(train.read_bytes() + NOT_OBJECTS["not-utf8"])
    before = outputs(project)
    assert_one_error(stage(project, "train", env=env),
                     "data/processed/dynahate/train.jsonl, row 10, field 'input': not valid UTF-8")
    assert outputs(project) == before
    assert temporaries(project) == []


def test_a_country_codecarbon_does_not_know_fails_naming_the_key(project):
    project, env = project
    before = outputs(project)
    assert_one_error(stage(project, "evaluate", "carbon.country_iso_code=XXX", env=env),
                     "config error: carbon.country_iso_code: 'XXX' is not a country in codecarbon's table")
    assert_one_error(stage(project, "evaluate", "carbon.country_iso_code=fra", env=env), "did you mean 'FRA'?")
    assert outputs(project) == before
    assert temporaries(project) == []
