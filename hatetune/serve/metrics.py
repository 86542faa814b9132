"""/metrics: Prometheus counters of this process (since it started), one registry per service.

The request log and /report hold the history; these are for live monitoring and alerting: requests by endpoint
and status, latency, labels, truncated prompts, micro-batch sizes and seconds, the queue's depth, log write errors.
"""
from __future__ import annotations

from typing import Callable


class ServiceMetrics:
    def __init__(self, identity: dict, queued_texts: Callable[[], int], log_write_errors: Callable[[], int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = r = CollectorRegistry()
        Info("hatetune_model", "What this service serves", registry=r).info(
            {k: str(v) for k, v in identity.items() if v is not None})
        self.requests = Counter("hatetune_requests", "Classification requests answered", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("hatetune_request_latency_seconds", "Arrival to answer of classification requests",
                                 ["endpoint"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.texts = Counter("hatetune_texts", "Texts labelled, by label", ["label"], registry=r)
        self.truncated = Counter("hatetune_truncated_texts", "Texts whose prompt was cut to train.cutoff_len",
                                 registry=r)
        self.batch_size = Histogram("hatetune_batch_texts", "Texts per model call (micro-batch)", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("hatetune_batch_seconds", "Seconds per model call", registry=r,
                                       buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        Gauge("hatetune_queue_texts", "Texts waiting for the model", registry=r).set_function(queued_texts)
        Gauge("hatetune_request_log_write_errors", "Request log rows that could not be written",
              registry=r).set_function(log_write_errors)

    def observe_request(self, endpoint: str, status: int, seconds: float, results=()) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        for result in results:
            self.texts.labels(result.label).inc()
            if result.truncated:
                self.truncated.inc()

    def observe_batch(self, n_texts: int, seconds: float) -> None:
        self.batch_size.observe(n_texts)
        self.batch_seconds.observe(seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
