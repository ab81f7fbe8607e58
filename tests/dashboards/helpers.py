"""Helpers for tests against Debian's real prometheus: free ports, readiness waits, a small HTTP API client, and a
Prometheus started on loopback with given rules and scrape configs. Plain module, imported by tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tests.processes import free_port, stop_process  # noqa: F401 (free_port: the dashboard tests import it here)

PROMETHEUS = shutil.which("prometheus")


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        try:
            get(url, timeout=1.0)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s")


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params) -> dict:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            body = json.loads(get(url))
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> list:
        r = self.api("query", query=expr)
        assert r["status"] == "success", f"{expr!r} failed: {r.get('error')}"
        return r["data"]["result"]

    def query_range(self, expr: str, seconds: float = 20, step: str = "1s") -> list:
        end = time.time()
        r = self.api("query_range", query=expr, start=end - seconds, end=end, step=step)
        assert r["status"] == "success", f"{expr!r} failed: {r.get('error')}"
        return r["data"]["result"]

    def firing(self) -> list[dict]:
        return [a for a in self.api("alerts")["data"]["alerts"] if a["state"] == "firing"]




@contextlib.contextmanager
def running_prometheus(workdir: Path, rules_yaml: str, scrape_configs: list[dict], *, interval: str = "1s"):
    """A Prometheus on a free loopback port evaluating ``rules_yaml`` every ``interval``; yields a Prom client."""
    (workdir / "rules.yaml").write_text(rules_yaml)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": "900ms"},
        "rule_files": [str(workdir / "rules.yaml")],
        "scrape_configs": scrape_configs,
    }))
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", proc, "prometheus")
        yield Prom(f"http://127.0.0.1:{port}")
    finally:
        stop_process(proc)
