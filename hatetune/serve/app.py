"""The HTTP API (Flask; run by waitress, see `server`).

- GET  /healthcheck  `OK` 200 when the backend answers, `ERROR` 503 when not (never 500); needs no API key.
- POST /infer        seed C's contract: the raw text as the body (UTF-8), the label as text/plain; 400 on an empty
                     body. Header `X-Hatetune-Truncated: true` when the prompt was cut to train.cutoff_len.
- POST /v1/classify  {"texts": [...]} -> {"results": [{label, scores, latency_ms, truncated}], backend, model,
                     adapter}. 400: not JSON; 422: not {"texts": [non-empty strings]}; 413: body, text count or a
                     text over the limits.
- GET  /report       the request log summarised per day (?bucket=hour), optional ?since= / ?until= (ISO 8601,
                     UTC unless an offset is given); JSON, or CSV with ?format=csv.
- GET  /metrics      Prometheus text format.
Busy (queue full) and an unreachable backend answer 503 with Retry-After; a request not answered within
serve.request_timeout_s gets 504. With $<serve.api_key_env> set, every endpoint but /healthcheck needs that key
(`Authorization: Bearer <key>` or `X-API-Key: <key>`), else 401. Every /infer and /v1/classify request is logged.
"""
from __future__ import annotations

import hmac
import json
import os
import time
from typing import List, Optional

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import report as R
from .backends import BackendUnavailable
from .batcher import MicroBatcher, QueueFull, ShuttingDown
from .metrics import ServiceMetrics
from .requestlog import RequestLog

CLASSIFY_ENDPOINTS = ("/infer", "/v1/classify")


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: Optional[int] = None):
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s


class Service:
    """A backend behind a micro-batcher, a request log and metrics: what the routes use."""

    def __init__(self, cfg, backend, log: RequestLog):
        s = cfg.serve
        self.settings, self.backend, self.log = s, backend, log
        self.labels = list(cfg.task.labels.names)
        self.identity = backend.identity
        self.api_key = (os.environ.get(s.api_key_env) or None) if s.api_key_env else None
        self.metrics = ServiceMetrics(self.identity, lambda: self.batcher.queued_texts, lambda: log.write_errors)
        self.batcher = MicroBatcher(backend.label, s.max_batch_size, s.max_wait_ms / 1000, s.max_queue,
                                    on_batch=self.metrics.observe_batch)

    def label(self, texts: List[str]) -> list:
        try:
            return self.batcher.label(texts, self.settings.request_timeout_s)
        except QueueFull as err:
            raise ApiError(503, f"busy: {err}", err.retry_after_s) from None
        except (BackendUnavailable, ShuttingDown) as err:
            raise ApiError(503, f"backend unavailable: {err}", 5) from None
        except TimeoutError as err:
            raise ApiError(504, f"timed out: {err}") from None

    def healthy(self) -> bool:
        try:
            return self.batcher.alive() and bool(self.backend.healthy())
        except Exception:  # a health check answers, whatever the backend does
            return False

    def record(self, endpoint: str, status: int, seconds: float, texts=(), results=(), error=None) -> None:
        self.metrics.observe_request(endpoint, status, seconds, results)
        self.log.record(endpoint, status, seconds * 1000, self.identity, texts, results, error)

    def stop(self) -> None:
        self.batcher.stop()
        self.log.close()


# ------------------------------------------------------------------------------------------- validation
def infer_text(service: Service) -> List[str]:
    body = _body(service)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text") from None
    if not text.strip():
        raise ApiError(400, "empty body: send the text to classify as the request body")
    _check_length([text], service.settings.max_text_chars)
    return [text]


def classify_texts(service: Service) -> List[str]:
    s = service.settings
    try:
        payload = json.loads(_body(service))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, 'the body is not JSON: send {"texts": ["...", ...]}') from None
    texts = payload.get("texts") if isinstance(payload, dict) else None
    if not isinstance(texts, list):
        raise ApiError(422, 'expected a JSON object {"texts": [...]} with a list of strings')
    if not texts:
        raise ApiError(422, "texts: the list is empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(422, f"texts[{i}]: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise ApiError(422, f"texts[{i}]: empty text")
    if len(texts) > s.max_texts:
        raise ApiError(413, f"{len(texts)} texts: at most {s.max_texts} per request (serve.max_texts)")
    _check_length(texts, s.max_text_chars)
    return texts


def _body(service: Service) -> bytes:
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise ApiError(413, f"the body is over {service.settings.max_body_bytes} bytes (serve.max_body_bytes)") \
            from None


def _check_length(texts: List[str], limit: int) -> None:
    for i, text in enumerate(texts):
        if len(text) > limit:
            raise ApiError(413, f"text {i}: {len(text)} characters, at most {limit} (serve.max_text_chars)")


# ------------------------------------------------------------------------------------------------ routes
def create_app(service: Service) -> Flask:
    app = Flask("hatetune.serve")
    app.config["MAX_CONTENT_LENGTH"] = service.settings.max_body_bytes

    def error_response(err: ApiError, plain: bool) -> Response:
        response = Response(err.message + "\n", err.status, mimetype="text/plain") if plain \
            else jsonify(error=err.message)
        response.status_code = err.status
        if err.retry_after_s is not None:
            response.headers["Retry-After"] = str(err.retry_after_s)
        return response

    @app.before_request
    def authenticate():
        g.start = time.perf_counter()
        if service.api_key is None or request.path == "/healthcheck":
            return None
        bearer = request.headers.get("Authorization", "")
        given = bearer[7:] if bearer.startswith("Bearer ") else request.headers.get("X-API-Key", "")
        if hmac.compare_digest(given.encode(), service.api_key.encode()):
            return None
        err = ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        if request.path in CLASSIFY_ENDPOINTS:
            service.record(request.path, 401, time.perf_counter() - g.start, error="unauthorized")
        response = error_response(err, plain=request.path == "/infer")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def classify(endpoint: str, parse, respond, plain: bool) -> Response:
        texts, results = None, ()
        try:
            texts = parse(service)
            results = service.label(texts)
            response = respond(results, time.perf_counter() - g.start)
        except Exception as err:  # a bug in a backend is a 500, but still answered and logged like the rest
            failure = err if isinstance(err, ApiError) else ApiError(500, f"internal error ({type(err).__name__})")
            response = error_response(failure, plain)
            error = failure.message
        else:
            error = None
        service.record(endpoint, response.status_code, time.perf_counter() - g.start, texts or (), results, error)
        return response

    @app.get("/healthcheck")
    def healthcheck():
        ok = service.healthy()
        return Response("OK\n" if ok else "ERROR\n", 200 if ok else 503, mimetype="text/plain")

    @app.post("/infer")
    def infer():
        def respond(results, seconds):
            response = Response(results[0].label + "\n", 200, mimetype="text/plain")
            response.headers["X-Hatetune-Truncated"] = "true" if results[0].truncated else "false"
            return response
        return classify("/infer", infer_text, respond, plain=True)

    @app.post("/v1/classify")
    def classify_v1():
        def respond(results, seconds):
            latency = round(seconds * 1000, 3)
            return jsonify(results=[{"label": r.label, "scores": r.scores, "latency_ms": latency,
                                     "truncated": r.truncated} for r in results], **service.identity)
        return classify("/v1/classify", classify_texts, respond, plain=False)

    @app.get("/report")
    def report():
        args = request.args
        try:
            fmt = args.get("format", "json")
            if fmt not in ("json", "csv"):
                raise R.ReportError(f"format: must be json or csv, got {fmt!r}")
            service.log.flush(timeout=5)  # what was answered before this request is in the report
            built = R.build(service.log.path, service.labels, R.hate_label_of(service.labels),
                            bucket=args.get("bucket", "day"), since=R.parse_time(args.get("since"), "since"),
                            until=R.parse_time(args.get("until"), "until"))
        except R.ReportError as err:
            return jsonify(error=str(err)), 400
        if fmt == "csv":
            return Response(R.to_csv(built), 200, mimetype="text/csv",
                            headers={"Content-Disposition": "inline; filename=report.csv"})
        return jsonify(built)

    @app.get("/metrics")
    def metrics():
        body, content_type = service.metrics.text()
        return Response(body, 200, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):  # 404, 405, ...: JSON like the API's own errors
        return jsonify(error=f"{err.code} {err.name}: {err.description}"), err.code

    return app
