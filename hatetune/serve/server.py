"""Running the service: waitress (one process, threads: the micro-batcher needs the one model in one process).

`build_service` loads the backend and opens the request log; `serve_forever` answers until Ctrl-C / SIGTERM, then
finishes the batch in progress and writes the log's last rows; `Background` runs a server in a thread (tests,
benchmarks).
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

from .. import paths
from .app import Service, create_app
from .backends import create_backend
from .requestlog import RequestLog


def build_service(cfg, backend=None) -> Service:
    """The service of `cfg.serve` on `backend` (default: the one serve.backend names, loaded now)."""
    s = cfg.serve
    backend = backend if backend is not None else create_backend(cfg)
    log = RequestLog(Path(s.log_db) if s.log_db else paths.REQUEST_LOG, s.log_text, s.retention_days)
    return Service(cfg, backend, log)


def create_server(service: Service, host: str, port: int):
    """A waitress server (not yet running) on host:port (port 0: a free one, see `.effective_port`)."""
    from waitress import create_server as waitress_server

    s = service.settings
    # waitress refuses bodies far over the limit before reading them; Flask answers (and logs) the 413 otherwise
    return waitress_server(create_app(service), host=host, port=port, threads=s.threads, ident="hatetune",
                           max_request_body_size=2 * s.max_body_bytes, channel_timeout=max(120, s.request_timeout_s),
                           clear_untrusted_proxy_headers=True)


def serve_forever(service: Service) -> None:
    server = create_server(service, service.settings.host, service.settings.port)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, `docker stop`: stop as Ctrl-C does
    rule = service.identity.get("decision_rule")
    print(f"hatetune: serving {service.identity['model']} (adapter {service.identity['adapter']}, backend "
          f"{service.identity['backend']}{', decision ' + rule if rule else ''}) on http://{server.effective_host}:{server.effective_port} "
          f"- request log {service.log.path}", flush=True)
    try:
        server.run()  # returns on Ctrl-C / SIGTERM once the requests in flight are answered
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while stopping kills at once
        service.stop()
        print("hatetune: stopped", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Background:
    """A service answering on a free loopback port in a thread: `with Background(service) as url: ...`."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self.server = create_server(service, host, port)
        self.url = f"http://{host}:{self.server.effective_port}"
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> str:
        self._thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)
        self._thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        # as webtest's StopableWSGIServer: let the requests in flight finish, then close every socket of the loop
        from waitress.channel import HTTPChannel

        def close_all():  # in the loop's own thread: closing a socket under its select() would raise EBADF there
            for channel in list(self.server._map.values()):
                channel.handle_close() if isinstance(channel, HTTPChannel) else channel.close()

        self.server.task_dispatcher.shutdown()
        self.server.trigger.pull_trigger(close_all)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the test server's loop did not stop")
        self.service.stop()
