"""The service labels a post exactly as the evaluate stage does: for every row of a test split, the label (and
truncation flag, and label scores) the service answers equals the real evaluate stage's prediction, whether the
rows come as one /v1/classify request or as concurrent /infer requests that the micro-batcher groups its own way;
in greedy mode, and in score mode through the decision rule (temperature + threshold) the evaluate stage fitted on
the dev split, which the service finds where evaluate wrote it.

A tiny real model (random weights, a random non-zero LoRA adapter, real 4-bit quantization with fp32 compute) and
a short cutoff, so that some prompts are truncated."""
from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serve_support import GREEDY, LONG_POSTS, POSTS, make_adapter, serve_config, write_base_pointer
from support import ROOT

CUTOFF = ["train.cutoff_len=96"]  # the two long posts are cut, the others fit
# greedy with eval.agreement: the label scores come too, so the served scores can be compared
MODES = {"greedy": [*GREEDY, "eval.agreement=true"], "score": ["eval.mode=score"]}  # score: the default, calibrated on dev
# dev gold labels: which dev posts are hate (the threshold fitted on them is the one under test)
DEV_HATE = {0, 3, 5, 6, 8, 10, 11, 15}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A project folder holding the base pointer, an adapter and a test split; the tests run from it."""
    from hatetune import config, paths, prompts

    root = tmp_path_factory.mktemp("project")
    cfg = config.load([], ROOT / "params.yaml")
    write_base_pointer(root, cfg.model.name, tiny_model_dir)
    adapter = make_adapter(tiny_model_dir, root / "adapter")
    p = cfg.task.prompt
    rows = [prompts.alpaca_row(p.instruction, text, ["hate", "not hate"][i % 2], p.system, id=f"r{i}")
            for i, text in enumerate(POSTS + LONG_POSTS)]
    split = root / paths.split_file(cfg.task.name, "test")
    split.parent.mkdir(parents=True)
    split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dev = [prompts.alpaca_row(p.instruction, text, "hate" if i in DEV_HATE else "not hate", p.system, id=f"d{i}")
           for i, text in enumerate(POSTS)]
    (root / paths.split_file(cfg.task.name, "dev")).write_text("".join(json.dumps(r) + "\n" for r in dev))
    return root, adapter, rows


def evaluate_stage(project_dir, adapter, mode: str, monkeypatch):
    """Run the real evaluate stage (its script's main, as DVC would) on the dev and test splits: its test records
    and its output folder."""
    from hatetune import paths
    from stages import evaluate

    out = project_dir / f"eval-{mode}"
    monkeypatch.chdir(project_dir)
    assert evaluate.main(["model.path=x", "model.quantization.compute_dtype=float32", *MODES[mode],
                          f"eval.adapter_dir={adapter}", f"eval.output={out}", *CUTOFF,
                          "--params", str(ROOT / "params.yaml")]) == 0
    lines = (out / "test" / paths.PREDICTIONS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines], out


def softmax(log_probs: dict, temperature: float = 1.0) -> dict:
    top = max(log_probs.values())
    e = {k: math.exp((v - top) / temperature) for k, v in log_probs.items()}
    return {k: v / sum(e.values()) for k, v in e.items()}


@pytest.mark.parametrize("mode", ["greedy", "score"])
def test_every_served_label_equals_the_evaluate_stage_prediction(project, tiny_model_dir, mode, monkeypatch):
    from hatetune.serve.backends import TransformersBackend
    from hatetune.serve.server import Background, build_service

    from hatetune import paths

    root, adapter, rows = project
    records, out = evaluate_stage(root, adapter, mode, monkeypatch)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert any(r["truncated"] for r in records) and not all(r["truncated"] for r in records)
    rule = None
    if mode == "score":  # the rule evaluate fitted on dev decides, and it is not the plain argmax
        rule = json.loads(paths.calibration_file(out).read_text())
        p = [r["p_positive"] for r in records]
        assert 0 < rule["threshold"] < 1 and min(p) < rule["threshold"] <= max(p), rule
        argmax = ["hate" if r["log_probs"]["hate"] >= r["log_probs"]["not hate"] else "not hate" for r in records]
        assert argmax != [r["predicted"] for r in records], rule  # a service deciding by argmax would fail here
        # where the service looks for it by default: metrics/eval/, beside the run.json naming the adapter scored
        shutil.copytree(out, root / paths.results_base(paths.EVAL), dirs_exist_ok=True)

    cfg = serve_config(tiny_model_dir, adapter, root / f"log-{mode}.sqlite", *MODES[mode], *CUTOFF,
                       "serve.max_batch_size=4", "serve.max_wait_ms=20")
    service = build_service(cfg, TransformersBackend.load(cfg))
    texts = [r["input"] for r in rows]
    with Background(service) as url:
        batch = requests.post(f"{url}/v1/classify", json={"texts": texts}, timeout=120)
        assert batch.status_code == 200, batch.text
        with ThreadPoolExecutor(8) as pool:  # concurrent single requests: other batches, other neighbours
            singles = list(pool.map(lambda t: requests.post(f"{url}/infer", data=t.encode(), timeout=120), texts))
        sizes = service.metrics.batch_size.collect()[0].samples
    results = batch.json()["results"]
    assert [r["label"] for r in results] == [r["predicted"] for r in records]
    assert [r["truncated"] for r in results] == [r["truncated"] for r in records]
    assert [s.status_code for s in singles] == [200] * len(texts)
    assert [s.text.strip() for s in singles] == [r["predicted"] for r in records]
    assert [s.headers["X-Hatetune-Truncated"] == "true" for s in singles] == [r["truncated"] for r in records]
    for served, record in zip(results, records):  # the scores: evaluation's probabilities, calibrated in score mode
        assert served["scores"] == pytest.approx(softmax(record["log_probs"], rule["temperature"] if rule else 1),
                                                 abs=1e-3)
        if rule:
            assert served["scores"]["hate"] == pytest.approx(record["p_positive"], abs=1e-3)
    if rule:
        assert batch.json()["decision_rule"] == f"P(hate) >= {rule['threshold']:g} at T={rule['temperature']:g}"
    margins = [r["log_probs"]["hate"] - r["log_probs"]["not hate"] for r in records]
    assert max(margins) - min(margins) > 0.1  # the scores depend on the post: the comparison can fail
    count = next(s.value for s in sizes if s.name == "hatetune_batch_texts_count")
    assert count < 1 + len(texts)  # the singles were micro-batched: fewer model calls than requests
