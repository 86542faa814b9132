"""The service labels a post exactly as the evaluate stage does: for every row of a test split, the label (and
truncation flag, and label scores) the service answers equals the real evaluate stage's prediction, whether the
rows come as one /v1/classify request or as concurrent /infer requests that the micro-batcher groups its own way.

A tiny real model (random weights, a random non-zero LoRA adapter, real 4-bit quantization with fp32 compute) and
a short cutoff, so that some prompts are truncated."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serve_support import LONG_POSTS, POSTS, make_adapter, serve_config, write_base_pointer
from support import ROOT

CUTOFF = ["train.cutoff_len=96"]  # the two long posts are cut, the others fit


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
    return root, adapter, rows


def evaluate_stage_records(project_dir, adapter, mode: str, monkeypatch) -> list[dict]:
    """Run the real evaluate stage (its script's main, as DVC would) on the test split; its records."""
    from hatetune import paths
    from stages import evaluate

    out = project_dir / f"eval-{mode}"
    monkeypatch.chdir(project_dir)
    assert evaluate.main(["model.path=x", "model.quantization.compute_dtype=float32", f"eval.mode={mode}",
                          f"eval.adapter_dir={adapter}", f"eval.output={out}", *CUTOFF,
                          "--params", str(ROOT / "params.yaml")]) == 0
    lines = (out / "test" / paths.PREDICTIONS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("mode", ["greedy", "score"])
def test_every_served_label_equals_the_evaluate_stage_prediction(project, tiny_model_dir, mode, monkeypatch):
    from hatetune.serve.backends import TransformersBackend
    from hatetune.serve.server import Background, build_service

    root, adapter, rows = project
    records = evaluate_stage_records(root, adapter, mode, monkeypatch)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert any(r["truncated"] for r in records) and not all(r["truncated"] for r in records)

    cfg = serve_config(tiny_model_dir, adapter, root / f"log-{mode}.sqlite", f"eval.mode={mode}", *CUTOFF,
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
    for served, record in zip(results, records):  # the label scores are evaluation's too
        assert served["scores"] == pytest.approx(record["log_probs"], abs=2e-3)
    margins = [r["log_probs"]["hate"] - r["log_probs"]["not hate"] for r in records]
    assert max(margins) - min(margins) > 0.1  # the scores depend on the post: the comparison can fail
    count = next(s.value for s in sizes if s.name == "hatetune_batch_texts_count")
    assert count < 1 + len(texts)  # the singles were micro-batched: fewer model calls than requests
