"""/report: what the request log says about a period, per hour or day, as JSON or CSV.

Per period (and in total): requests (all classification requests, any status), ok / client_errors (4xx) /
errors (5xx), labelled texts, the label distribution, hate rate (share of labelled texts with the task's hate
label), invalid answers (unparseable model outputs, `parsing.INVALID`), truncated prompts, and p50 / p95 / p99
latency in milliseconds of the successful requests (nearest rank: the smallest latency with at least p% of the
requests at or below it). All of it is computed by SQL over the `requests` and `texts` tables.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..parsing import INVALID
from .requestlog import connect, utc_timestamp

BUCKETS = {"hour": 13, "day": 10}  # the timestamp prefix naming the period
PERCENTILES = (50, 95, 99)
FAR_PAST, FAR_FUTURE = "0000", "9999"


class ReportError(ValueError):
    """A bad query parameter (answered 400)."""


def parse_time(value: Optional[str], name: str) -> Optional[str]:
    """An ISO 8601 date or date-time (naive = UTC) as the log's timestamp text; None stays None."""
    if value is None or value == "":
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{name}: not an ISO 8601 date or date-time: {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return utc_timestamp(when)


def period_label(prefix: str, bucket: str) -> str:
    return prefix if bucket == "day" else f"{prefix}:00Z"


def build(db: str | Path, labels: Sequence[str], hate_label: Optional[str], bucket: str = "day",
          since: Optional[str] = None, until: Optional[str] = None) -> dict:
    """The report of requests logged in [since, until) (timestamps as `parse_time` gives them)."""
    if bucket not in BUCKETS:
        raise ReportError(f"bucket: must be one of {', '.join(BUCKETS)}, got {bucket!r}")
    window = (since or FAR_PAST, until or FAR_FUTURE)
    conn = connect(db, readonly=True)
    try:
        periods = {prefix: _counts(prefix, bucket) for prefix in _periods(conn, BUCKETS[bucket], window)}
        total = _counts("", bucket)
        for width, target in ((BUCKETS[bucket], periods), (0, {"": total})):
            _fill(conn, width, window, target, labels)
    finally:
        conn.close()
    for counts in [*periods.values(), total]:
        labelled = counts["texts"]
        counts["hate_rate"] = (round(counts["labels"].get(hate_label, 0) / labelled, 4)
                               if labelled and hate_label else None)
    total["period"] = "total"
    return {"bucket": bucket, "since": since, "until": until, "labels": [*labels, INVALID],
            "hate_label": hate_label, "periods": list(periods.values()), "total": total}


def _counts(prefix: str, bucket: str) -> dict:
    return {"period": period_label(prefix, bucket), "requests": 0, "ok": 0, "client_errors": 0, "errors": 0,
            "texts": 0, "labels": {}, "invalid": 0, "truncated": 0,
            "latency_ms": {f"p{p}": None for p in PERCENTILES}}


def _periods(conn, width: int, window) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT substr(ts, 1, ?) FROM requests WHERE ts >= ? AND ts < ? ORDER BY 1", (width, *window))]


def _fill(conn, width: int, window, target: Mapping[str, dict], labels: Sequence[str]) -> None:
    """Add the counts and latency percentiles of each period (`width`-character timestamp prefix) to `target`."""
    for prefix, n, ok, client, server in conn.execute(
            "SELECT substr(ts, 1, ?), COUNT(*), SUM(status BETWEEN 200 AND 299), SUM(status BETWEEN 400 AND 499), "
            "SUM(status >= 500) FROM requests WHERE ts >= ? AND ts < ? GROUP BY 1", (width, *window)):
        target[prefix].update(requests=n, ok=ok, client_errors=client, errors=server)
    for prefix, label, n, truncated in conn.execute(
            "SELECT substr(r.ts, 1, ?), t.label, COUNT(*), SUM(t.truncated) FROM texts t "
            "JOIN requests r ON r.id = t.request_id WHERE r.ts >= ? AND r.ts < ? GROUP BY 1, 2", (width, *window)):
        counts = target[prefix]
        counts["texts"] += n
        counts["truncated"] += truncated
        counts["labels"][label] = n
        if label == INVALID:
            counts["invalid"] += n
    for counts in target.values():  # every label listed, in the task's order
        counts["labels"] = {name: counts["labels"].get(name, 0) for name in [*labels, INVALID]} | counts["labels"]
    ranks = ", ".join(f"MIN(CASE WHEN rn >= {p / 100} * n THEN latency_ms END)" for p in PERCENTILES)
    for prefix, *values in conn.execute(
            f"WITH ranked AS (SELECT substr(ts, 1, ?) AS period, latency_ms, "
            f"ROW_NUMBER() OVER (PARTITION BY substr(ts, 1, ?) ORDER BY latency_ms) AS rn, "
            f"COUNT(*) OVER (PARTITION BY substr(ts, 1, ?)) AS n FROM requests "
            f"WHERE status BETWEEN 200 AND 299 AND ts >= ? AND ts < ?) "
            f"SELECT period, {ranks} FROM ranked GROUP BY period", (width, width, width, *window)):
        target[prefix]["latency_ms"] = {f"p{p}": round(v, 3) for p, v in zip(PERCENTILES, values)}


def to_csv(report: Mapping) -> str:
    """One row per period and a `total` row; label counts as columns."""
    labels = [name for name in report["labels"] if name != INVALID]  # `invalid` has its own column
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["period", "requests", "ok", "client_errors", "errors", "texts", *labels, "hate_rate",
                     "invalid", "truncated", *(f"p{p}_ms" for p in PERCENTILES)])
    for row in [*report["periods"], report["total"]]:
        writer.writerow([row["period"], row["requests"], row["ok"], row["client_errors"], row["errors"],
                         row["texts"], *(row["labels"].get(name, 0) for name in labels),
                         "" if row["hate_rate"] is None else row["hate_rate"], row["invalid"], row["truncated"],
                         *("" if v is None else v for v in row["latency_ms"].values())])
    return buf.getvalue()


def hate_label_of(labels: Sequence[str]) -> Optional[str]:
    """The task's label for hate speech (`hate`, `Hate`), if it has one."""
    return next((name for name in labels if name.lower() == "hate"), None)
