"""Expose splice-monitor metrics: an HTTP ``/metrics`` endpoint for long-running pipelines, and a Pushgateway push
for batch and backfill jobs that end before Prometheus would scrape them."""

from __future__ import annotations

import socket
import threading
import urllib.error
from socketserver import ThreadingMixIn
from typing import Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import delete_from_gateway, make_wsgi_app, push_to_gateway, pushadd_to_gateway
from prometheus_client.registry import CollectorRegistry

from monitor.errors import ConfigError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "HEALTH_PATHS", "MetricsExporter", "push_metrics", "delete_pushed_metrics"]

DEFAULT_PORT = 9400  # the same port as `run`, `demo` and the Helm chart
DEFAULT_HOST = "127.0.0.1"  # local runs expose nothing; `--metrics-host` (the chart: 0.0.0.0) widens it


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        pass


HEALTH_PATHS = ("/healthz", "/-/healthy", "/-/ready")
METRICS_PATH = "/metrics"


def _routes(metrics_app):
    """``/metrics`` serves the registry; the health paths answer 200 without running a collection (a liveness probe
    every few seconds must not cost a scrape); anything else is 404, so a typo in a scrape config fails loudly
    instead of silently scraping."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == METRICS_PATH:
            return metrics_app(environ, start_response)
        if path in HEALTH_PATHS:
            body = b"ok\n"
            status = "200 OK"
        else:
            body = f"not found: {path} (metrics are on {METRICS_PATH}, health on {HEALTH_PATHS[0]})\n".encode()
            status = "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    return app


def _text_format_only(app):
    """Answer every scrape in the Prometheus text format 0.0.4.

    Prometheus asks for OpenMetrics first; client_python formats OpenMetrics ~1.6x slower and this collector emits
    nothing (exemplars, _created series) that needs it, so the cheaper format keeps large scrapes fast.
    """

    def wrapped(environ, start_response):
        environ = dict(environ, HTTP_ACCEPT="text/plain; version=0.0.4")
        return app(environ, start_response)

    return wrapped


class MetricsExporter:
    """Serve ``registry`` on ``http://host:port/metrics`` and a health check on ``/healthz`` (also ``/-/healthy``,
    ``/-/ready``) from a daemon thread.

    ``host`` defaults to loopback: a laptop run exposes nothing; in a cluster the chart passes the pod's address
    (``--metrics-host 0.0.0.0``) and a NetworkPolicy decides who may scrape. ``port=0`` binds a free port (read it
    back from ``.port``). Use as a context manager or call ``close()``.
    Scrapes get the Prometheus text format unless ``openmetrics=True`` lets the client negotiate OpenMetrics.

    >>> from prometheus_client import CollectorRegistry
    >>> with MetricsExporter(CollectorRegistry(), host="127.0.0.1", port=0) as exp:
    ...     exp.url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(self, registry: CollectorRegistry, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 openmetrics: bool = False, start: bool = True) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"metrics port must be an integer in [0, 65535], got {port!r}")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"metrics host must be a non-empty address string, got {host!r}")
        self.registry = registry
        self.openmetrics = openmetrics
        self.host = host
        self._requested_port = port
        self._server = None
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> "MetricsExporter":
        if self._server is not None:
            return self
        app = make_wsgi_app(self.registry)
        if not self.openmetrics:
            app = _text_format_only(app)
        app = _routes(app)
        server_class = _ThreadingServer6 if ":" in self.host else _ThreadingServer
        try:
            self._server = make_server(self.host, self._requested_port, app, server_class=server_class,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self._requested_port}: {exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="splice-metrics-exporter",
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("exporter is not running")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()  # returns within serve_forever's 0.5 s poll
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "MetricsExporter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def push_metrics(
    gateway: str,
    registry: CollectorRegistry,
    *,
    job: str = "splice-monitor-batch",
    grouping_key: Mapping[str, str] | None = None,
    replace: bool = True,
    timeout: float = 10.0,
) -> None:
    """Push everything in ``registry`` to the Pushgateway at ``gateway`` under ``job`` (+ ``grouping_key``).

    ``replace=True`` (HTTP PUT) replaces the whole group, which suits a backfill that pushes its final counters
    once; ``replace=False`` (POST) replaces only the pushed metric names. Group by a run id, not by stream: the
    metrics already carry a ``stream`` label, and a grouping label of the same name would override it.
    """
    _check_gateway(gateway, job, grouping_key)
    fn = push_to_gateway if replace else pushadd_to_gateway
    try:
        fn(gateway, job=job, registry=registry, grouping_key=dict(grouping_key or {}), timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(f"pushing metrics to the Pushgateway at {gateway!r} (job={job!r}) failed: {exc}") \
            from exc


def delete_pushed_metrics(gateway: str, *, job: str = "splice-monitor-batch",
                          grouping_key: Mapping[str, str] | None = None, timeout: float = 10.0) -> None:
    """Remove a finished job's group from the Pushgateway so stale batch metrics do not linger."""
    _check_gateway(gateway, job, grouping_key)
    try:
        delete_from_gateway(gateway, job=job, grouping_key=dict(grouping_key or {}), timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(f"deleting job {job!r} from the Pushgateway at {gateway!r} failed: {exc}") from exc


def _check_gateway(gateway: str, job: str, grouping_key: Mapping[str, str] | None) -> None:
    if not isinstance(gateway, str) or not gateway:
        raise ConfigError(f"gateway must be a Pushgateway address such as 'http://host:9091', got {gateway!r}")
    if not isinstance(job, str) or not job:
        raise ConfigError(f"job must be a non-empty string, got {job!r}")
    if grouping_key and "stream" in grouping_key:
        raise ConfigError("grouping_key must not contain 'stream': it would overwrite the metrics' stream label")
