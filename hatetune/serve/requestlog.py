"""The request log: one SQLite file in WAL mode, written by one thread, read by `report`.

Schema (PRAGMA user_version = SCHEMA_VERSION; an older file is migrated, a newer one refused):
- `requests`: one row per classification request answered (/infer, /v1/classify), whatever its status: UTC
  timestamp, endpoint, HTTP status, latency in milliseconds (arrival to answer), number of texts, backend, model and
  adapter identity, the decision rule the labels went through (`P(hate) >= 0.53 at T=1.47`; null: argmax or
  greedy), and for a failed request why (never a text or a key);
- `texts`: one row per labelled text of a successful request: its position, the text itself / its sha256 / nothing
  (serve.log_text: these logs hold hate speech and personal data), the label, the label scores (JSON) and whether
  the prompt was truncated.
Timestamps are ISO 8601 UTC with microseconds (`2025-01-31T12:34:56.789012Z`), so text order is time order and an
hour or a day is a prefix. Rows older than serve.retention_days are deleted at start and then hourly.
Request threads only enqueue; the writer inserts what has queued up in one short transaction, with parameterised
SQL, so readers (WAL) never wait on it for long.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import queue
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from ..errors import HatetuneError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    n_texts INTEGER NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT,
    error TEXT,
    decision_rule TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS texts (
    request_id INTEGER NOT NULL REFERENCES requests (id),
    position INTEGER NOT NULL,
    text TEXT,
    text_sha256 TEXT,
    label TEXT,
    scores TEXT,
    truncated INTEGER NOT NULL,
    PRIMARY KEY (request_id, position)
);
"""
INSERT_REQUEST = ("INSERT INTO requests (ts, endpoint, status, latency_ms, n_texts, backend, model, adapter, error, "
                  "decision_rule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# What each version adds to the one before it (a new file gets SCHEMA, which has them all).
MIGRATIONS = {2: "ALTER TABLE requests ADD COLUMN decision_rule TEXT"}
INSERT_TEXT = ("INSERT INTO texts (request_id, position, text, text_sha256, label, scores, truncated) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)")
PRUNE_EVERY_S = 3600
_STOP = object()


def utc_timestamp(when: Optional[dt.datetime] = None) -> str:
    when = (when or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def migrate(conn: sqlite3.Connection, path: str | Path) -> None:
    """Create the schema, or bring an older version up to date; refuse a newer one."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise HatetuneError(f"request log schema version {version} is newer than this hatetune's "
                            f"({SCHEMA_VERSION}): use a newer hatetune or another serve.log_db", file=str(path))
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise HatetuneError("cannot put the request log in WAL mode (a network file system?)", file=str(path))
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable up to the last checkpointed commit
    with conn:
        if version == 0:  # a new file: the current schema at once
            conn.executescript(SCHEMA)
        else:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[step])
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def text_columns(text: str, mode: str) -> tuple[Optional[str], Optional[str]]:
    """(text, sha256) as serve.log_text keeps them: text -> both, hash -> the sha256 only, none -> neither."""
    if mode == "none":
        return None, None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return (text if mode == "text" else None), digest


class RequestLog:
    """Appends rows from any thread (`record`); one thread writes them."""

    def __init__(self, path: str | Path, log_text: str = "hash", retention_days: Optional[int] = 30):
        self.path, self.log_text, self.retention_days = Path(path), log_text, retention_days
        self.write_errors = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = connect(self.path)
            migrate(conn, self.path)
            self.prune(conn)
            conn.close()
        except sqlite3.Error as err:
            raise HatetuneError(f"cannot open the request log ({err})", file=str(self.path)) from None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- writing
    def record(self, endpoint: str, status: int, latency_ms: float, identity: dict, texts: Sequence[str] = (),
               results: Sequence = (), error: Optional[str] = None, ts: Optional[str] = None) -> None:
        """Queue one request (and its labelled texts) for writing. `results`: one `backends.Labelled` per text
        of a successful request."""
        text_rows = []
        for position, (text, result) in enumerate(zip(texts, results)):
            logged, digest = text_columns(text, self.log_text)
            scores = json.dumps(result.scores, sort_keys=True) if result.scores is not None else None
            text_rows.append((position, logged, digest, result.label, scores, int(result.truncated)))
        request = (ts or utc_timestamp(), endpoint, int(status), round(float(latency_ms), 3), len(texts),
                   identity["backend"], identity["model"], identity.get("adapter"), error, identity.get("decision_rule"))
        self._queue.put((request, text_rows))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _write_loop(self) -> None:
        conn, last_prune = connect(self.path), time.monotonic()
        while True:
            items = [self._queue.get()]
            while len(items) < 1000:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [item for item in items if isinstance(item, tuple)]
            if rows:
                self._insert(conn, rows)
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                self.prune(conn)
                last_prune = time.monotonic()
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in items):
                conn.close()
                return

    def _insert(self, conn: sqlite3.Connection, rows) -> None:
        try:
            with conn:
                for request, text_rows in rows:
                    request_id = conn.execute(INSERT_REQUEST, request).lastrowid
                    conn.executemany(INSERT_TEXT, [(request_id, *row) for row in text_rows])
        except sqlite3.Error as err:  # a full disk must not stop the service: count it, say it, go on
            self.write_errors += len(rows)
            print(f"request log: {len(rows)} rows not written ({err})", file=sys.stderr)

    # ----------------------------------------------------------------------------------------- retention
    def prune(self, conn: sqlite3.Connection, now: Optional[dt.datetime] = None) -> int:
        """Delete rows older than retention_days; return how many requests went."""
        if self.retention_days is None:
            return 0
        cutoff = utc_timestamp((now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=self.retention_days))
        with conn:
            conn.execute("DELETE FROM texts WHERE request_id IN (SELECT id FROM requests WHERE ts < ?)", (cutoff,))
            return conn.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
