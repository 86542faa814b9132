"""Load benchmark of the inference service: many concurrent clients on loopback against `python -m hatetune.serve`
with the transformers backend and the pipeline's adapter, micro-batched vs one text at a time.

Each leg starts the real service in its own process (serve.max_batch_size=<N>, then 1; threads pinned with
OMP_NUM_THREADS), waits for /healthcheck, warms it up, then sends --requests POST /infer requests from --clients
threads (one keep-alive session each), texts cycling through the task's test split. Per leg: throughput
(requests/s), client-side p50 / p95 / p99 latency, the 5xx count (must be 0) and whether the request log holds
exactly one row per request sent (read from the SQLite file after a clean SIGTERM stop). The ratio micro-batched /
one-at-a-time throughput is measured in this one run. The one-at-a-time leg can use fewer requests
(--unbatched-requests) since only its rate is compared.

Needs models/base/<model> and models/adapter/<task> (dvc repro train), data/processed/<task>/test.jsonl and, in
calibrated score mode (the default), the evaluate stage's decision rule metrics/eval/calibration.json.
Usage: python bench/bench_serve.py [--requests 5000] [--clients 32] [--unbatched-requests 1000] [--threads 1]
       [--max-batch-size 16] [--out bench/results_serve.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WARMUP = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nearest_rank(values, p):
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1] if ordered else None


def start_server(port: int, log_db: Path, max_batch_size: int, threads: int, clients: int, extra) -> subprocess.Popen:
    import requests

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    env.pop("HATETUNE_API_KEY", None)
    cmd = [sys.executable, "-m", "hatetune.serve", f"serve.port={port}", f"serve.log_db={log_db}",
           f"serve.max_batch_size={max_batch_size}", f"serve.max_queue={max(256, 4 * clients)}",
           f"serve.threads={clients + 4}", "serve.request_timeout_s=600", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the service exited ({proc.returncode}): {' '.join(cmd)}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("the service did not come up within 10 minutes")


def load(url: str, texts: list[str], n: int, clients: int) -> dict:
    """n POST /infer requests from `clients` threads; statuses and client-side latencies."""
    import requests

    latencies, statuses, lock = [], [], threading.Lock()
    counter = iter(range(n))

    def client():
        session = requests.Session()
        for i in counter:  # next() on a shared iterator is atomic in CPython
            start = time.perf_counter()
            try:
                status = session.post(f"{url}/infer", data=texts[i % len(texts)].encode(), timeout=600).status_code
            except requests.RequestException:
                status = -1  # no HTTP answer at all
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)
                statuses.append(status)

    workers = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    return {"requests": n, "seconds": round(wall, 2), "requests_per_s": round(n / wall, 2),
            "p50_ms": round(nearest_rank(latencies, 50), 1), "p95_ms": round(nearest_rank(latencies, 95), 1),
            "p99_ms": round(nearest_rank(latencies, 99), 1), "status_200": statuses.count(200),
            "status_5xx": sum(500 <= s < 600 for s in statuses), "no_answer": statuses.count(-1)}


def leg(name: str, texts, n: int, clients: int, max_batch_size: int, threads: int, extra) -> dict:
    import requests

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        log_db, port = Path(tmp) / "requests.sqlite", free_port()
        proc = start_server(port, log_db, max_batch_size, threads, clients, extra)
        url = f"http://127.0.0.1:{port}"
        try:
            for text in texts[:WARMUP]:
                requests.post(f"{url}/infer", data=text.encode(), timeout=600)
            result = load(url, texts, n, clients)
            batches = [line for line in requests.get(f"{url}/metrics").text.splitlines()
                       if line.startswith(("hatetune_batch_texts_sum", "hatetune_batch_texts_count"))]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
        with sqlite3.connect(log_db) as conn:
            rows = conn.execute("SELECT COUNT(*), SUM(status = 200) FROM requests").fetchone()
    texts_per_call = dict(line.split() for line in batches)
    calls = float(texts_per_call.get("hatetune_batch_texts_count", 0))
    result.update(name=name, max_batch_size=max_batch_size, log_rows=rows[0], log_rows_200=rows[1],
                  one_log_row_per_request=rows[0] == n + WARMUP,
                  mean_texts_per_model_call=round(float(texts_per_call["hatetune_batch_texts_sum"]) / calls, 2)
                  if calls else None)
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--unbatched-requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the service (OMP_NUM_THREADS)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_serve.json"))
    parser.add_argument("overrides", nargs="*", help="more key=value overrides for the service")
    args = parser.parse_args()

    from hatetune import config, labeling, paths
    from hatetune.io import read_jsonl, write_json
    from hatetune.runinfo import environment

    cfg = config.load(args.overrides, ROOT / "params.yaml")
    needs = [paths.base_model_dir(cfg.model.name), paths.adapter_dir(cfg.task.name),
             paths.split_file(cfg.task.name, "test")]
    if labeling.calibrated(cfg):
        needs.append(paths.calibration_file(paths.results_base(paths.EVAL)))
    for needed in needs:
        if not (ROOT / needed).exists():
            sys.exit(f"{needed} missing: run `dvc repro evaluate` first")
    texts = [row["input"] for row in read_jsonl(ROOT / paths.split_file(cfg.task.name, "test"))]
    batched = leg("micro-batched", texts, args.requests, args.clients, args.max_batch_size, args.threads,
                  args.overrides)
    single = leg("one at a time", texts, args.unbatched_requests, args.clients, 1, args.threads, args.overrides)
    results = {"clients": args.clients, "threads": args.threads, "legs": [batched, single],
               "throughput_ratio_batched_vs_one_at_a_time": round(batched["requests_per_s"] /
                                                                  single["requests_per_s"], 2),
               "load_average_after": os.getloadavg()[0], **environment()}
    write_json(args.out, results)
    print(f"micro-batched / one-at-a-time throughput: {results['throughput_ratio_batched_vs_one_at_a_time']}x "
          f"-> {args.out}")
    ok = all(r["status_5xx"] == 0 and r["no_answer"] == 0 and r["one_log_row_per_request"] for r in (batched, single))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
