"""The ollama and openai backends against a small local server implementing the routes they use (Ollama and vLLM
cannot be installed here), answered by a real tiny model with transformers' own `generate`: the service must send
the training prompt and evaluation's greedy decoding, parse like evaluation, and get the same labels as
`inference.classify` on that model. Plus what happens when the server is down, failing, slow or overloaded: 503
(never 500), Retry-After, 504 after the request timeout, and a clear refusal to serve eval.mode=score."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serve_support import (GREEDY, LONG_POSTS, POSTS, ModelServer, free_port, make_adapter, running,
                           serve_config)
from support import ROOT

CUTOFF = "train.cutoff_len=96"  # the long posts are cut, the others fit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    """The tiny model + a random adapter in fp32 (the emulated server's model and the reference), its tokenizer."""
    from hatetune import config, models

    adapter = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"), seed=1)
    cfg = config.load(["model.quantization.compute_dtype=float32"], ROOT / "params.yaml")
    model = models.load_model(cfg.model, tiny_model_dir, quantize=False, adapter_dir=adapter, dtype="float32")
    return model, models.load_tokenizer(adapter), adapter


def remote_service(kind, url, tiny_model_dir, adapter, log_db, *overrides):
    from hatetune.serve.server import Background, build_service

    cfg = serve_config(tiny_model_dir, adapter, log_db, f"serve.backend={kind}", f"serve.url={url}", CUTOFF,
                       "serve.remote_timeout_s=10", *GREEDY, *overrides)
    return Background(build_service(cfg))


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_remote_backend_sends_the_training_prompt_and_gets_evaluation_labels(kind, tiny, tiny_model_dir, tmp_path):
    from hatetune import labeling, prompts

    model, tokenizer, adapter = tiny
    emulated = ModelServer(model, tokenizer, "hatetune-dynahate")
    texts = POSTS + LONG_POSTS
    with running(emulated) as model_url:
        background = remote_service(kind, model_url, tiny_model_dir, adapter, tmp_path / "log.sqlite",
                                    "serve.max_batch_size=8")
        cfg = background.service.backend.cfg
        with background as url:
            assert requests.get(f"{url}/healthcheck").text == "OK\n"
            results = requests.post(f"{url}/v1/classify", json={"texts": texts}, timeout=60).json()["results"]
            single = requests.post(f"{url}/infer", data=texts[0]).text.strip()
    rows = [prompts.input_row(t, cfg.task.prompt) for t in texts]
    reference = labeling.classify_rows(model, tokenizer, rows, cfg, agreement=False)  # evaluation, same model
    assert [r["label"] for r in results] == reference["predicted"]
    assert [r["truncated"] for r in results] == reference["truncated"] == [False] * len(POSTS) + [True, True]
    assert single == reference["predicted"][0] and all(r["scores"] is None for r in results)

    sent = [p for body in emulated.received for p in (body["prompt"] if kind == "openai" else [body["prompt"]])]
    assert len(sent) == len(texts) + 1
    expected = {prompts.build_prompt(prompts.input_row(t, cfg.task.prompt), cfg.task.prompt, tokenizer) for t in POSTS}
    assert expected <= set(sent)  # exactly the training prompt (Ollama's requests run a few at a time: any order)
    body = emulated.received[0]
    if kind == "ollama":
        assert body["raw"] is True and body["stream"] is False
        assert body["options"] == {"temperature": 0, "top_k": 1, "repeat_penalty": 1, "num_predict": 4,
                                   "stop": ["<|im_end|>"]}
    else:
        assert (body["path"], body["temperature"], body["max_tokens"], body["stop"]) == \
            ("/v1/completions", 0, 4, ["<|im_end|>"])
        assert len(emulated.received) == 2  # one request per micro-batch (all 18 texts came as one request)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_backend_down_or_failing_answers_503_never_500(kind, tiny, tiny_model_dir, tmp_path):
    model, tokenizer, adapter = tiny
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with remote_service(kind, down, tiny_model_dir, adapter, tmp_path / "down.sqlite") as url:
        health = requests.get(f"{url}/healthcheck")
        assert (health.status_code, health.text) == (503, "ERROR\n")
        infer = requests.post(f"{url}/infer", data="a post")
        assert infer.status_code == 503 and "backend unavailable" in infer.text and infer.headers["Retry-After"]
        classify = requests.post(f"{url}/v1/classify", json={"texts": ["a"]})
        assert classify.status_code == 503 and "ConnectionError" in classify.json()["error"]

    emulated = ModelServer(model, tokenizer, "another-model")  # up, but without our model
    with running(emulated) as model_url:
        with remote_service(kind, model_url, tiny_model_dir, adapter, tmp_path / "fail.sqlite") as url:
            assert requests.get(f"{url}/healthcheck").status_code == 503
            assert requests.post(f"{url}/infer", data="a post").status_code == 503  # the server said 404
            emulated.model_name = "hatetune-dynahate"
            assert requests.get(f"{url}/healthcheck").status_code == 200
            emulated.fail_status = 500
            failed = requests.post(f"{url}/infer", data="a post")
            assert failed.status_code == 503 and "HTTP 500" in failed.text
    with sqlite3.connect(tmp_path / "down.sqlite") as conn:
        assert conn.execute("SELECT endpoint, status FROM requests").fetchall() == \
            [("/infer", 503), ("/v1/classify", 503)]


def test_full_queue_answers_503_with_retry_after_and_nothing_hangs(tiny, tiny_model_dir, tmp_path):
    model, tokenizer, adapter = tiny
    emulated = ModelServer(model, tokenizer, "hatetune-dynahate")
    emulated.gate.clear()  # the model server holds every answer back
    with running(emulated) as model_url:
        background = remote_service("ollama", model_url, tiny_model_dir, adapter, tmp_path / "log.sqlite",
                                    "serve.max_batch_size=1", "serve.max_queue=2", "serve.max_texts=2")
        batcher = background.service.batcher
        with background as url, ThreadPoolExecutor(4) as pool:
            first = pool.submit(requests.post, f"{url}/infer", data="first", timeout=30)
            wait_until(lambda: len(emulated.received) == 1)  # the model is busy with the first request
            queued = [pool.submit(requests.post, f"{url}/infer", data=t, timeout=30) for t in ("second", "third")]
            wait_until(lambda: batcher.queued_texts == 2)
            refused = requests.post(f"{url}/infer", data="fourth")
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            assert "busy" in refused.text
            assert requests.get(f"{url}/healthcheck").status_code == 200  # busy is not down
            emulated.gate.set()
            answered = [f.result() for f in [first, *queued]]
        assert [a.status_code for a in answered] == [200, 200, 200]
    with sqlite3.connect(tmp_path / "log.sqlite") as conn:
        assert sorted(s for (s,) in conn.execute("SELECT status FROM requests")) == [200, 200, 200, 503]


def test_a_request_waiting_too_long_gets_504_and_leaves_the_queue(tiny, tiny_model_dir, tmp_path):
    model, tokenizer, adapter = tiny
    emulated = ModelServer(model, tokenizer, "hatetune-dynahate")
    emulated.gate.clear()
    with running(emulated) as model_url:
        background = remote_service("ollama", model_url, tiny_model_dir, adapter, tmp_path / "log.sqlite",
                                    "serve.max_batch_size=1", "serve.request_timeout_s=0.5")
        with background as url:
            start = time.monotonic()
            stuck = requests.post(f"{url}/infer", data="first", timeout=30)  # the model never answers in time
            waiting = requests.post(f"{url}/v1/classify", json={"texts": ["second"]}, timeout=30)  # queued behind
            assert (stuck.status_code, waiting.status_code) == (504, 504)
            assert time.monotonic() - start < 5 and "timed out" in waiting.json()["error"]
            assert background.service.batcher.queued_texts == 0  # the queued one was dropped, not left behind
            emulated.gate.set()
            wait_until(lambda: requests.post(f"{url}/infer", data="third", timeout=30).status_code == 200)


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_score_mode_cannot_be_served_remotely_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hatetune.serve", "serve.backend=ollama", "eval.mode=score",
                           "--params", str(ROOT / "params.yaml")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: config error: serve.backend: serve.backend=ollama cannot give the label "
                                   "scores that eval.mode=score needs: serve with serve.backend=transformers, or "
                                   "set eval.mode=greedy eval.calibration.method=none")


def test_the_serve_command_starts_answers_and_stops_on_sigterm(tiny_model_dir, tmp_path):
    """`python -m hatetune.serve` as a user starts it (here on the tiny model, base only), stopped with SIGTERM:
    it answers, then writes its last log rows and exits 0."""
    import signal

    from hatetune import paths
    from serve_support import write_base_pointer, write_rule

    write_base_pointer(tmp_path, "smollm2_135m_instruct", tiny_model_dir)
    write_rule(tmp_path, "zeroshot", None)  # the default config decides by the rule evaluate_zeroshot fitted
    port = free_port()
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hatetune.serve", "serve.adapter=null", f"serve.port={port}",
                             f"model.path={tiny_model_dir}", "--params", str(ROOT / "params.yaml")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), timeout=120)
        assert requests.post(f"{url}/infer", data="they are vermin").status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"on http://127.0.0.1:{port}" in out and "stopped" in out
    assert "decision P(hate) >= 0.3 at T=2.5" in out
    with sqlite3.connect(tmp_path / paths.REQUEST_LOG) as conn:  # the default log location, relative to the project
        assert conn.execute("SELECT endpoint, status FROM requests").fetchall() == [("/infer", 200)]


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthcheck", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


