"""The HTTP exporter serves the injected registry; pushes reach Debian's real prometheus-pushgateway."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.errors import ConfigError
from monitor.metrics.exporter import MetricsExporter, delete_pushed_metrics, push_metrics
from monitor.metrics.families import MonitorMetrics
from monitor.records import SparseCodes



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _metrics_with_data() -> tuple[CollectorRegistry, MonitorMetrics]:
    reg = CollectorRegistry()
    m = MonitorMetrics(["snow", "dog", "cat"], registry=reg)
    w = np.array([[0.4, 0.0, 0.1], [0.2, 0.3, 0.0], [0.0, 0.0, 0.5]])
    m.observe_batch("camera-7", SparseCodes.from_dense(w, fidelity=[0.9, 0.8, 0.7], l1=0.25), latency_s=0.01)
    m.observe_dead_letter("camera-7", "not_an_image")
    return reg, m


def _value(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_http_exporter_serves_the_injected_registry_on_a_free_port():
    reg, m = _metrics_with_data()
    with MetricsExporter(reg, host="127.0.0.1", port=0) as exp:
        text = _get(exp.url)
        assert _value(text, "splice_images_total", {"stream": "camera-7"}) == 3
        assert _value(text, "splice_concept_presence_total", {"stream": "camera-7", "concept": "snow"}) == 2
        assert _value(text, "splice_dead_letters_total", {"stream": "camera-7", "reason": "not_an_image"}) == 1
        m.observe_batch("camera-7", SparseCodes.from_dense(np.ones((2, 3)), fidelity=[1, 1], l1=0.25))
        assert _value(_get(exp.url), "splice_images_total", {"stream": "camera-7"}) == 5  # fresh on each scrape
        port = exp.port
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/metrics")  # closed


def test_exporter_on_a_busy_port_names_host_and_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            MetricsExporter(CollectorRegistry(), host="127.0.0.1", port=port)
    with pytest.raises(ConfigError, match="port must be an integer in"):
        MetricsExporter(CollectorRegistry(), port=70000)


def test_push_replaces_the_group_and_delete_removes_it(pushgateway):
    reg, m = _metrics_with_data()
    key = {"run": "backfill-1"}
    push_metrics(pushgateway, reg, job="splice-backfill", grouping_key=key)
    text = _get(f"{pushgateway}/metrics")
    labels = {"job": "splice-backfill", "run": "backfill-1", "stream": "camera-7"}
    assert _value(text, "splice_images_total", labels) == 3
    assert _value(text, "splice_concept_weight_total", {**labels, "concept": "snow"}) == pytest.approx(0.6)
    assert _value(text, "splice_fidelity_cosine_count", labels) == 3

    m.observe_batch("camera-7", SparseCodes.from_dense(np.ones((4, 3)), fidelity=np.ones(4), l1=0.25))
    push_metrics(pushgateway, reg, job="splice-backfill", grouping_key=key, replace=False)
    assert _value(_get(f"{pushgateway}/metrics"), "splice_images_total", labels) == 7

    delete_pushed_metrics(pushgateway, job="splice-backfill", grouping_key=key)
    assert _value(_get(f"{pushgateway}/metrics"), "splice_images_total", labels) is None


def test_push_errors_name_the_gateway_and_reject_a_stream_grouping_label():
    with pytest.raises(ConnectionError, match=r"Pushgateway at 'http://127.0.0.1:1'"):
        push_metrics("http://127.0.0.1:1", CollectorRegistry(), timeout=2)
    with pytest.raises(ConfigError, match="grouping_key must not contain 'stream'"):
        push_metrics("http://127.0.0.1:1", CollectorRegistry(), grouping_key={"stream": "x"})


def test_module_docstring_example_runs():
    import doctest

    import monitor.metrics.exporter

    assert doctest.testmod(monitor.metrics.exporter).failed == 0


def test_scrapes_get_the_text_format_even_when_openmetrics_is_preferred():
    reg, _ = _metrics_with_data()
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    for openmetrics, expected in ((False, "text/plain"), (True, "application/openmetrics-text")):
        with MetricsExporter(reg, host="127.0.0.1", port=0, openmetrics=openmetrics) as exp:
            req = urllib.request.Request(exp.url, headers={"Accept": accept})
            with urllib.request.urlopen(req, timeout=5) as r:
                assert r.headers["Content-Type"].startswith(expected)
                assert b"splice_images_total" in r.read()


def test_default_port_is_the_one_run_demo_and_the_chart_use():
    import inspect
    from pathlib import Path

    import yaml

    import monitor.metrics.exporter as exporter_mod

    assert exporter_mod.DEFAULT_PORT == 9400
    assert inspect.signature(MetricsExporter).parameters["port"].default == exporter_mod.DEFAULT_PORT
    values = Path(__file__).resolve().parents[3] / "helm" / "splice-monitor" / "values.yaml"
    assert yaml.safe_load(values.read_text())["monitor"]["metricsPort"] == exporter_mod.DEFAULT_PORT


def _status(url: str) -> tuple[int, str]:
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_paths_answer_200_without_collecting_and_other_paths_404():
    class CountingCollector:
        calls = 0

        def collect(self):
            CountingCollector.calls += 1
            return []

    reg = CollectorRegistry()
    reg.register(CountingCollector())
    with MetricsExporter(reg, port=0) as exp:
        base = exp.url.removesuffix("/metrics")
        for path in ("/healthz", "/-/healthy", "/-/ready"):
            assert _status(base + path) == (200, "ok\n"), path
        assert CountingCollector.calls == 0, "a health check must not run a collection"
        code, body = _status(base + "/")
        assert code == 404 and "/metrics" in body and "/healthz" in body
        assert _status(base + "/metricz")[0] == 404
        assert _status(exp.url)[0] == 200 and CountingCollector.calls == 1


def test_exporter_binds_loopback_unless_told_otherwise():
    with MetricsExporter(CollectorRegistry(), port=0) as exp:
        assert exp.host == "127.0.0.1"
        assert exp._server.server_address[0] == "127.0.0.1"
    with MetricsExporter(CollectorRegistry(), host="0.0.0.0", port=0) as exp:
        assert exp._server.server_address[0] == "0.0.0.0"


def test_build_info_and_process_collectors_are_served():
    from monitor.metrics.runtime import BuildInfo, package_version, register_runtime_collectors

    reg, _ = _metrics_with_data()
    BuildInfo(encoder="ViT-B-32/openai", concept_space="space-1", registry=reg)
    register_runtime_collectors(reg)
    with MetricsExporter(reg, port=0) as exp:
        text = _get(exp.url)
    assert _value(text, "splice_build_info", {"version": package_version(), "encoder": "ViT-B-32/openai",
                                              "concept_space": "space-1"}) == 1
    assert _value(text, "process_resident_memory_bytes", {}) > 0
    assert _value(text, "python_info", {}) == 1
    with pytest.raises(ConfigError, match="encoder must be a non-empty string"):
        BuildInfo(encoder="", concept_space="x")


def test_batch_result_registry_holds_completion_metrics_and_no_monitor_state(pushgateway):
    from monitor.metrics.batch import BATCH_METRICS, BatchResult, batch_result_registry

    result = BatchResult(finished_at=1_767_225_600.0, duration_s=42.5, images={"cam-1": 90, "cam-2": 10},
                         dead_letters={"truncated": 3, "empty": 0}, windows_closed=4, alarms=2)
    push_metrics(pushgateway, batch_result_registry(result), job="splice-backfill", grouping_key={"run": "r1"})
    text = _get(f"{pushgateway}/metrics")
    labels = {"job": "splice-backfill", "run": "r1"}
    assert _value(text, "splice_batch_last_success_timestamp_seconds", labels) == 1_767_225_600.0
    assert _value(text, "splice_batch_duration_seconds", labels) == 42.5
    assert _value(text, "splice_batch_images", {**labels, "stream": "cam-1"}) == 90
    assert _value(text, "splice_batch_dead_letters", {**labels, "reason": "truncated"}) == 3
    assert _value(text, "splice_batch_windows_closed", labels) == 4
    assert _value(text, "splice_batch_alarms", labels) == 2
    pushed = {f.name for f in text_string_to_metric_families(text)
              if any(s.labels.get("job") == "splice-backfill" for s in f.samples)}
    assert pushed == {spec.name for spec in BATCH_METRICS} | {"push_time_seconds", "push_failure_time_seconds"}
    with pytest.raises(ConfigError, match="BatchResult.duration_s must be a finite number >= 0"):
        BatchResult(finished_at=0.0, duration_s=float("nan"))
