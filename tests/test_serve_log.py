"""The request log on a real SQLite file: WAL, versioned schema, one writer fed by many threads, retention, and
/report's numbers checked against a plain recomputation."""
from __future__ import annotations

import datetime as dt
import math
import random
import sqlite3
import threading

import pytest

from hatetune.errors import HatetuneError
from hatetune.serve import report
from hatetune.serve.backends import Labelled
from hatetune.serve.requestlog import SCHEMA_VERSION, RequestLog, utc_timestamp

IDENTITY = {"backend": "transformers", "model": "m@abc", "adapter": "a@def", "decision_rule": "P(hate) >= 0.5 at T=1.2"}
LABELS = ["hate", "not hate"]


def test_new_log_is_wal_versioned_and_an_unknown_newer_one_is_refused(tmp_path):
    log = RequestLog(tmp_path / "logs" / "requests.sqlite")
    log.close()
    with sqlite3.connect(log.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(HatetuneError, match="schema version 99 is newer"):
        RequestLog(log.path)
    (tmp_path / "not-a-db").write_text("hello, this is not SQLite" * 100)
    with pytest.raises(HatetuneError, match="cannot open the request log"):
        RequestLog(tmp_path / "not-a-db")


# Version 1 of the requests table, as hatetune wrote it before the decision rule was logged.
SCHEMA_V1 = """
CREATE TABLE requests (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
    latency_ms REAL NOT NULL, n_texts INTEGER NOT NULL, backend TEXT NOT NULL, model TEXT NOT NULL, adapter TEXT,
    error TEXT);
CREATE INDEX requests_ts ON requests (ts);
CREATE TABLE texts (request_id INTEGER NOT NULL REFERENCES requests (id), position INTEGER NOT NULL, text TEXT,
    text_sha256 TEXT, label TEXT, scores TEXT, truncated INTEGER NOT NULL, PRIMARY KEY (request_id, position));
PRAGMA user_version = 1;
"""


def test_a_version_1_log_is_migrated_keeping_its_rows(tmp_path):
    path = tmp_path / "requests.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_V1)
        conn.execute("INSERT INTO requests (ts, endpoint, status, latency_ms, n_texts, backend, model) "
                     "VALUES (?, '/infer', 200, 3.5, 1, 'transformers', 'm@abc')", (utc_timestamp(),))
    log = RequestLog(path)
    log.record("/infer", 200, 2.0, IDENTITY, ["a post"], [Labelled("hate", None, False)])
    assert log.flush()
    log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        rows = conn.execute("SELECT latency_ms, decision_rule FROM requests ORDER BY id").fetchall()
    assert rows == [(3.5, None), (2.0, IDENTITY["decision_rule"])]


def test_many_threads_one_writer_every_row_written(tmp_path):
    log = RequestLog(tmp_path / "log.sqlite", log_text="text")
    result = Labelled("hate", {"hate": -0.1, "not hate": -2.3}, False)

    def client(i):
        for j in range(50):
            log.record("/infer", 200, 1.0 + j, IDENTITY, [f"post {i}-{j}"], [result])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.flush()
    with sqlite3.connect(log.path) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM requests").fetchone() == (400, 400)
        assert conn.execute("SELECT COUNT(DISTINCT text) FROM texts").fetchone() == (400,)
        assert conn.execute("SELECT scores FROM texts LIMIT 1").fetchone() == ('{"hate": -0.1, "not hate": -2.3}',)
        row = conn.execute("SELECT ts, backend, model, adapter, decision_rule FROM requests LIMIT 1").fetchone()
    assert row[1:] == ("transformers", "m@abc", "a@def", "P(hate) >= 0.5 at T=1.2")
    assert dt.datetime.fromisoformat(row[0].replace("Z", "+00:00")).tzinfo == dt.timezone.utc
    log.close()


def test_retention_deletes_old_rows_at_start(tmp_path):
    log = RequestLog(tmp_path / "log.sqlite", retention_days=30)
    now = dt.datetime.now(dt.timezone.utc)
    for days in (40, 31, 29, 0):
        log.record("/infer", 200, 1.0, IDENTITY, ["x"], [Labelled("hate", None, False)],
                   ts=utc_timestamp(now - dt.timedelta(days=days)))
    log.close()
    RequestLog(log.path, retention_days=30).close()
    with sqlite3.connect(log.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (2,)
        assert conn.execute("SELECT COUNT(*) FROM texts").fetchone() == (2,)
    RequestLog(log.path, retention_days=None).close()  # null keeps everything


def nearest_rank(values, p):
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def test_report_numbers_equal_a_plain_recomputation(tmp_path):
    rng = random.Random(0)
    log = RequestLog(tmp_path / "log.sqlite", retention_days=None)
    expected = {}
    for i in range(300):
        day = f"2025-01-{1 + i % 3:02d}"
        ts = f"{day}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00.000000Z"
        status = rng.choice([200] * 8 + [400, 503])
        latency = round(rng.uniform(1, 500), 3)
        labels = [rng.choice(["hate", "not hate", "invalid"]) for _ in range(rng.randint(1, 3))]
        results = [Labelled(label, None, rng.random() < 0.1) for label in labels] if status == 200 else []
        log.record("/v1/classify", status, latency, IDENTITY, ["t"] * len(labels), results, ts=ts)
        e = expected.setdefault(day, {"requests": 0, "errors": 0, "lat": [], "labels": [], "truncated": 0})
        e["requests"] += 1
        e["errors"] += status >= 500
        if status == 200:
            e["lat"].append(latency)
            e["labels"] += labels
            e["truncated"] += sum(r.truncated for r in results)
    log.close()
    built = report.build(log.path, LABELS, "hate")
    assert [p["period"] for p in built["periods"]] == sorted(expected)
    for period in built["periods"]:
        e = expected[period["period"]]
        assert (period["requests"], period["errors"], period["texts"]) == (e["requests"], e["errors"], len(e["labels"]))
        assert period["labels"] == {name: e["labels"].count(name) for name in ("hate", "not hate", "invalid")}
        assert period["hate_rate"] == round(e["labels"].count("hate") / len(e["labels"]), 4)
        assert period["truncated"] == e["truncated"]
        assert period["latency_ms"] == {f"p{p}": nearest_rank(e["lat"], p) for p in (50, 95, 99)}
    everything = [v for e in expected.values() for v in e["lat"]]
    assert built["total"]["latency_ms"]["p95"] == nearest_rank(everything, 95)
    assert built["total"]["requests"] == 300


def test_report_time_parameters():
    assert report.parse_time("2025-03-01", "since") == "2025-03-01T00:00:00.000000Z"
    assert report.parse_time("2025-03-01T12:00:00+02:00", "until") == "2025-03-01T10:00:00.000000Z"
    assert report.parse_time("2025-03-01T12:00Z", "until") == "2025-03-01T12:00:00.000000Z"
    assert report.parse_time(None, "since") is None
    with pytest.raises(report.ReportError, match="since: not an ISO 8601"):
        report.parse_time("last week", "since")
