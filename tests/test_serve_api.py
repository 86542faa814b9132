"""The HTTP API for real: waitress on a free loopback port, a real SQLite request log, the `requests` client, and
the transformers backend on a tiny real model (no adapter: the API, not the labels, is under test here), with the
default config: score mode through a decision rule (temperature + threshold) found where the evaluate_zeroshot
stage writes it."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serve_support import POSTS, RULE, serve_config, write_base_pointer, write_rule


@pytest.fixture(scope="module")
def backend(tmp_path_factory, tiny_model_dir):
    """One loaded tiny model, shared by the services of this module (each with its own log and server)."""
    from hatetune.serve.backends import TransformersBackend

    root = tmp_path_factory.mktemp("project")
    cfg = serve_config(tiny_model_dir, None, root / "unused.sqlite")
    write_base_pointer(root, cfg.model.name, tiny_model_dir)
    write_rule(root, "zeroshot", None)  # metrics/zeroshot/calibration.json: the base model's rule
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        return TransformersBackend.load(cfg)


@pytest.fixture
def serve(backend, tiny_model_dir, tmp_path):
    """serve(*overrides) -> (base URL, service, log path): a running service; stopped after the test."""
    from hatetune.serve.server import Background, build_service

    running = []

    def start(*overrides):
        log_db = tmp_path / f"log{len(running)}.sqlite"
        service = build_service(serve_config(tiny_model_dir, None, log_db, *overrides), backend)
        server = Background(service)
        running.append(server)
        return server.__enter__(), service, log_db

    yield start
    for server in running:
        server.__exit__(None, None, None)


def rows(log_db, sql="SELECT endpoint, status, n_texts, error FROM requests ORDER BY id"):
    with sqlite3.connect(log_db) as conn:
        return conn.execute(sql).fetchall()


def test_healthcheck_infer_and_classify(serve):
    url, service, log_db = serve()
    health = requests.get(f"{url}/healthcheck")
    assert (health.status_code, health.text) == (200, "OK\n")
    infer = requests.post(f"{url}/infer", data="they are vermin")
    assert infer.status_code == 200 and infer.headers["Content-Type"].startswith("text/plain")
    assert infer.text.strip() in ("hate", "not hate", "invalid")
    assert infer.headers["X-Hatetune-Truncated"] == "false"
    batch = requests.post(f"{url}/v1/classify", json={"texts": ["they are vermin", "women " * 400]}).json()
    assert [r["truncated"] for r in batch["results"]] == [False, True]  # cut to train.cutoff_len (256 tokens)
    assert batch["results"][0]["label"] == infer.text.strip()
    for result in batch["results"]:  # scores: the calibrated probabilities the label was decided on
        assert set(result["scores"]) == {"hate", "not hate"}
        assert sum(result["scores"].values()) == pytest.approx(1, abs=1e-5)
        assert result["label"] == ("hate" if result["scores"]["hate"] >= RULE["threshold"] else "not hate")
    assert batch["decision_rule"] == "P(hate) >= 0.3 at T=2.5"
    assert batch["results"][0]["latency_ms"] > 0
    assert batch["backend"] == "transformers" and batch["model"].startswith("smollm2_135m_instruct@")
    service.log.flush()
    assert rows(log_db) == [("/infer", 200, 1, None), ("/v1/classify", 200, 2, None)]
    texts = rows(log_db, "SELECT position, text, text_sha256, label, truncated FROM texts ORDER BY request_id, position")
    assert [t[0] for t in texts] == [0, 0, 1] and [t[4] for t in texts] == [0, 0, 1]
    assert all(t[1] is None and len(t[2]) == 64 for t in texts)  # serve.log_text=hash by default


BAD_REQUESTS = [  # (endpoint, body, status, start of the error)
    ("/infer", b"", 400, "empty body"),
    ("/infer", b"   \n", 400, "empty body"),
    ("/infer", b"\xff\xfe bad", 400, "the body is not UTF-8"),
    ("/infer", "x" * 501, 413, "text 0: 501 characters"),
    ("/v1/classify", b"not json", 400, "the body is not JSON"),
    ("/v1/classify", b'["a"]', 422, "expected a JSON object"),
    ("/v1/classify", b'{"text": ["a"]}', 422, "expected a JSON object"),
    ("/v1/classify", b'{"texts": "a"}', 422, "expected a JSON object"),
    ("/v1/classify", b'{"texts": []}', 422, "texts: the list is empty"),
    ("/v1/classify", b'{"texts": ["a", 3]}', 422, "texts[1]: expected a string, got int"),
    ("/v1/classify", b'{"texts": ["a", " "]}', 422, "texts[1]: empty text"),
    ("/v1/classify", json.dumps({"texts": ["a"] * 5}).encode(), 413, "5 texts: at most 4"),
    ("/v1/classify", json.dumps({"texts": ["a", "y" * 501]}).encode(), 413, "text 1: 501 characters"),
    ("/v1/classify", json.dumps({"texts": ["z" * 3000]}).encode(), 413, "the body is over 2048 bytes"),
]


def test_bad_requests_get_one_clear_error_and_are_logged(serve):
    url, service, log_db = serve("serve.max_texts=4", "serve.max_text_chars=500", "serve.max_body_bytes=2048")
    for endpoint, body, status, message in BAD_REQUESTS:
        response = requests.post(f"{url}{endpoint}", data=body)
        assert response.status_code == status, (endpoint, body[:30], response.text)
        error = response.text if endpoint == "/infer" else response.json()["error"]
        assert error.startswith(message), (endpoint, body[:30], error)
    huge = requests.post(f"{url}/infer", data=b"x" * 100_000)  # far over the limit: waitress refuses it unread
    assert huge.status_code == 413
    assert requests.get(f"{url}/infer").status_code == 405 and requests.get(f"{url}/nope").status_code == 404
    service.log.flush()
    assert [(e, s) for e, s, _, _ in rows(log_db)] == [(e, s) for e, _, s, _ in BAD_REQUESTS]
    assert all(error for *_, error in rows(log_db))


def test_api_key_from_the_environment(serve, monkeypatch):
    monkeypatch.setenv("HATETUNE_TEST_KEY", "s3cret-key")
    url, service, log_db = serve("serve.api_key_env=HATETUNE_TEST_KEY")
    assert requests.get(f"{url}/healthcheck").status_code == 200  # load balancers need no key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cret"}, {"Authorization": "s3cret-key"}):
        denied = requests.post(f"{url}/infer", data="a post", headers=headers)
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/report", "/metrics"):
        assert requests.get(f"{url}{path}").status_code == 401
    assert requests.post(f"{url}/infer", data="a post", headers={"Authorization": "Bearer s3cret-key"}).ok
    assert requests.post(f"{url}/v1/classify", json={"texts": ["a"]}, headers={"X-API-Key": "s3cret-key"}).ok
    assert requests.get(f"{url}/report", headers={"X-API-Key": "s3cret-key"}).ok
    service.log.flush()
    assert [status for _, status, _, _ in rows(log_db)] == [401] * 4 + [200, 200]
    assert b"s3cret" not in log_db.read_bytes() + log_db.with_name(log_db.name + "-wal").read_bytes()


@pytest.mark.parametrize("mode", ["text", "none"])
def test_log_text_keeps_the_text_or_nothing(serve, mode):
    url, service, log_db = serve(f"serve.log_text={mode}")
    assert requests.post(f"{url}/infer", data="a post about women").ok
    service.log.flush()
    logged = rows(log_db, "SELECT text, text_sha256 FROM texts")
    assert logged == ([("a post about women", __import__("hashlib").sha256(b"a post about women").hexdigest())]
                      if mode == "text" else [(None, None)])


def test_concurrent_requests_are_micro_batched_with_one_row_each(serve):
    url, service, log_db = serve("serve.max_batch_size=8", "serve.max_wait_ms=50")
    texts = [POSTS[i % len(POSTS)] for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: requests.post(f"{url}/infer", data=t, timeout=60), texts))
    assert [a.status_code for a in answers] == [200] * 48
    service.log.flush()
    assert len(rows(log_db)) == 48 and len(rows(log_db, "SELECT * FROM texts")) == 48
    calls = {s.name: s.value for s in service.metrics.batch_size.collect()[0].samples if not s.labels}
    assert calls["hatetune_batch_texts_sum"] == 48 and calls["hatetune_batch_texts_count"] < 48
    # same text, same label, whatever batch it landed in
    by_text = {}
    for text, answer in zip(texts, answers):
        by_text.setdefault(text, set()).add(answer.text)
    assert all(len(labels) == 1 for labels in by_text.values())


def test_report_json_csv_buckets_and_window(serve):
    from hatetune.serve.backends import Labelled

    url, service, log_db = serve()
    ident = service.identity
    hate, ok = Labelled("hate", None, False), Labelled("not hate", None, True)
    log = service.log
    log.record("/infer", 200, 10.0, ident, ["a"], [hate], ts="2025-03-01T10:05:00.000000Z")
    log.record("/infer", 200, 30.0, ident, ["b"], [ok], ts="2025-03-01T10:59:00.000000Z")
    log.record("/v1/classify", 200, 20.0, ident, ["c", "d"], [hate, Labelled("invalid", None, False)],
               ts="2025-03-01T11:00:00.000000Z")
    log.record("/infer", 503, 1.0, ident, ["e"], [], error="busy", ts="2025-03-02T00:00:00.000000Z")
    log.record("/infer", 400, 1.0, ident, error="empty", ts="2025-03-02T00:00:01.000000Z")

    day = requests.get(f"{url}/report").json()
    assert [p["period"] for p in day["periods"]] == ["2025-03-01", "2025-03-02"]
    first, total = day["periods"][0], day["total"]
    assert (first["requests"], first["ok"], first["texts"], first["invalid"], first["truncated"]) == (3, 3, 4, 1, 1)
    assert first["labels"] == {"hate": 2, "not hate": 1, "invalid": 1} and first["hate_rate"] == 0.5
    assert first["latency_ms"] == {"p50": 20.0, "p95": 30.0, "p99": 30.0}  # nearest rank of 10, 20, 30
    assert (total["requests"], total["ok"], total["client_errors"], total["errors"]) == (5, 3, 1, 1)

    hourly = requests.get(f"{url}/report", params={"bucket": "hour", "since": "2025-03-01T10:30",
                                                   "until": "2025-03-01T12:00:00+01:00"}).json()
    assert [(p["period"], p["requests"]) for p in hourly["periods"]] == [("2025-03-01T10:00Z", 1)]

    table = list(csv.DictReader(io.StringIO(requests.get(f"{url}/report", params={"format": "csv"}).text)))
    assert [r["period"] for r in table] == ["2025-03-01", "2025-03-02", "total"]
    assert (table[0]["hate"], table[0]["not hate"], table[0]["invalid"], table[0]["p50_ms"]) == ("2", "1", "1", "20.0")
    assert table[1]["hate_rate"] == "" and table[2]["requests"] == "5"

    for params in ({"since": "yesterday"}, {"bucket": "week"}, {"format": "xml"}):
        bad = requests.get(f"{url}/report", params=params)
        assert bad.status_code == 400 and list(params)[0] in bad.json()["error"]


def test_metrics_in_prometheus_text_format(serve):
    from prometheus_client.parser import text_string_to_metric_families

    url, service, _ = serve()
    requests.post(f"{url}/infer", data="a post")
    requests.post(f"{url}/infer", data="")
    families = {f.name: f for f in text_string_to_metric_families(requests.get(f"{url}/metrics").text)}
    counts = {(s.labels["endpoint"], s.labels["status"]): s.value
              for s in families["hatetune_requests"].samples if s.name == "hatetune_requests_total"}
    assert counts == {("/infer", "200"): 1.0, ("/infer", "400"): 1.0}
    assert families["hatetune_queue_texts"].samples[0].value == 0
    assert families["hatetune_model_info"].samples[0].labels["backend"] == "transformers"
    assert sum(s.value for s in families["hatetune_texts"].samples if s.name == "hatetune_texts_total") == 1


def test_a_missing_adapter_is_one_clear_error_naming_the_key(tiny_model_dir, tmp_path, monkeypatch):
    from hatetune.errors import HatetuneError
    from hatetune.serve.backends import TransformersBackend

    monkeypatch.chdir(tmp_path)
    cfg = serve_config(tiny_model_dir, tmp_path / "no-adapter", tmp_path / "log.sqlite")
    with pytest.raises(HatetuneError) as err:
        TransformersBackend.load(cfg)
    assert str(err.value).startswith(f"{tmp_path / 'no-adapter'}, field 'serve.adapter': no LoRA adapter here")
