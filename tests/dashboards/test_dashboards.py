"""Dashboards as code: committed JSON equals the builders' output, the required panels and variables exist, every
query uses documented names only, and `dashboards render|push` work (push against a recording HTTP server that
speaks Grafana's API paths, since Grafana itself cannot be installed here)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import dashboards
from dashboards.build import DASHBOARDS, build_dashboard, dashboard_json, panel_queries, variable_queries
from monitor.cli.main import main
from tests.dashboards.test_rules import NAME, known_names


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_generated_json_is_up_to_date(name):
    path = dashboards.PACKAGE_DIR / dashboards.dashboard_file(name)
    assert path.is_file(), f"{path} missing: run `splice-monitor dashboards render`"
    assert json.loads(path.read_text()) == dashboard_json(name), \
        f"{path} is stale: run `splice-monitor dashboards render`"


def test_render_without_output_writes_to_the_working_directory_never_the_package(tmp_path, monkeypatch, capsys):
    before = {p: p.stat().st_mtime_ns for p in dashboards.PACKAGE_DIR.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    assert main(["dashboards", "render"]) == 0
    out = tmp_path / "dashboards-out"
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == set(dashboards.render_files())
    assert all(line.startswith(str(out)) for line in capsys.readouterr().out.split())
    after = {p: p.stat().st_mtime_ns for p in dashboards.PACKAGE_DIR.rglob("*") if p.is_file()}
    assert after == before, "render touched the installed package"


def test_render_check_detects_stale_files(tmp_path, capsys):
    assert main(["dashboards", "render", "-o", str(tmp_path)]) == 0
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == set(dashboards.render_files())
    assert main(["dashboards", "render", "-o", str(tmp_path), "--check"]) == 0
    (tmp_path / "generated" / "overview.json").write_text("{}")
    assert main(["dashboards", "render", "-o", str(tmp_path), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["dashboards", "render", "--check"]) == 0  # the committed copies


def test_dashboards_have_the_required_panels_and_variables():
    titles = {name: {p["title"] for p in dashboard_json(name)["panels"]} for name in DASHBOARDS}
    assert {"Streams", "Throughput by stream", "Stream drift score", "Alarms firing by kind",
            "Top drifting concepts (monitor)", "Mean reconstruction fidelity"} <= titles["overview"]
    assert {"Prevalence over time", "Prevalence: reference vs current", "Mean activation over time",
            "Mean activation: reference vs current"} <= titles["concept-explorer"]
    assert {"Batch latency", "Queue depth", "Dead letters by reason", "Solver non-convergence",
            "Fidelity quantiles", "Reference age"} <= titles["pipeline-health"]
    explorer = dashboard_json("concept-explorer")
    assert [n for n, _ in variable_queries(explorer)] == ["cluster", "namespace", "job", "stream", "concept"]
    for _, _, target in panel_queries(explorer):
        assert 'stream="$stream"' in target["expr"]
        assert 'concept=~"$concept"' in target["expr"]


def test_every_panel_is_wired_to_the_datasource_variable_and_ids_are_unique():
    uids = set()
    for name in DASHBOARDS:
        model = dashboard_json(name)
        uids.add(model["uid"])
        ids = [p["id"] for p in model["panels"]]
        assert len(set(ids)) == len(ids)
        assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in model["templating"]["list"])
        for p in model["panels"]:
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
                assert p["targets"], f"{name} / {p['title']} has no query"
        refs = [(title, ref) for title, ref, _ in panel_queries(model)]
        assert len(set(refs)) == len(refs), f"{name}: duplicate refIds in a panel"
    assert len(uids) == len(DASHBOARDS)


def test_queries_use_only_documented_metric_names():
    known = known_names()
    for name in DASHBOARDS:
        model = dashboard_json(name)
        exprs = [t["expr"] for _, _, t in panel_queries(model)] + [q for _, q in variable_queries(model)]
        for expr in exprs:
            unknown = set(NAME.findall(expr)) - known
            assert not unknown, f"{name}: {expr} uses undocumented {unknown}"


def test_unknown_dashboard_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown dashboard 'nope'; valid names: \['concept-explorer'"):
        build_dashboard("nope")


class _FakeGrafana(BaseHTTPRequestHandler):
    """Records requests on Grafana's HTTP API paths and answers like Grafana does."""

    calls: list[tuple[str, str, dict | None, str]] = []
    folders: set[str] = set()

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.calls.append((self.command, self.path, body, self.headers.get("Authorization", "")))
        if self.command == "GET" and self.path.startswith("/api/folders/"):
            uid = self.path.rsplit("/", 1)[1]
            return self._reply(200, {"uid": uid}) if uid in self.folders else self._reply(404, {"message": "nf"})
        if self.command == "POST" and self.path == "/api/folders":
            self.folders.add(body["uid"])
            return self._reply(200, {"uid": body["uid"], "title": body["title"]})
        if self.command == "POST" and self.path == "/api/dashboards/db":
            return self._reply(200, {"status": "success", "uid": body["dashboard"]["uid"]})
        if self.command == "PUT" and self.path.startswith("/api/v1/provisioning/folder/"):
            return self._reply(200, body)
        return self._reply(404, {"message": "unknown path"})

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, *args) -> None:
        pass


def _push_to_fake_grafana(extra_args: list[str]) -> list[tuple[str, str, dict | None, str]]:
    _FakeGrafana.calls = []
    _FakeGrafana.folders = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert main(["dashboards", "push", "--grafana-url", url, *extra_args]) == 0
    finally:
        server.shutdown()
        server.server_close()
    return _FakeGrafana.calls


def test_push_creates_folder_overwrites_dashboards_and_replaces_rule_group(capsys, monkeypatch):
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_from_env")  # the flag wins over the environment
    calls = _push_to_fake_grafana(["--token", "glsa_test"])
    assert all(auth == "Bearer glsa_test" for *_, auth in calls)
    assert ("POST", "/api/folders") in [(m, p) for m, p, _, _ in calls]
    posted = [b for m, p, b, _ in calls if p == "/api/dashboards/db"]
    assert sorted(b["dashboard"]["uid"] for b in posted) == sorted(dashboard_json(n)["uid"] for n in DASHBOARDS)
    assert all(b["overwrite"] and b["folderUid"] == "splice-monitor" for b in posted)
    (group,) = [b for m, p, b, _ in calls if m == "PUT"]
    assert [r["title"] for r in group["rules"]] == [
        "SpliceConceptPrevalenceDrift", "SpliceConceptDriftDetected", "SpliceStreamDrift",
        "SplicePipelineStalled", "SpliceDeadLetterRateHigh", "SpliceFidelityDegraded", "SpliceExporterDown",
        "SpliceExporterAbsent"]
    assert all(r["folderUID"] == "splice-monitor" and r["ruleGroup"] == "splice-monitor" for r in group["rules"])
    assert group["interval"] == 60
    assert "alert rule group splice-monitor (8 rules)" in capsys.readouterr().out


def test_push_takes_the_token_from_grafana_token_when_no_flag_is_given(monkeypatch, capsys):
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_from_env")
    calls = _push_to_fake_grafana([])
    assert calls and all(auth == "Bearer glsa_from_env" for *_, auth in calls)


@pytest.mark.parametrize("env", [None, "", "   "])
def test_push_without_flag_or_environment_token_fails_naming_both(monkeypatch, capsys, env):
    if env is None:
        monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    else:
        monkeypatch.setenv("GRAFANA_TOKEN", env)
    with pytest.raises(SystemExit) as exc:
        main(["dashboards", "push", "--grafana-url", "http://127.0.0.1:9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--token" in err and "GRAFANA_TOKEN" in err


def test_current_schema_version_and_deployment_variables_on_every_dashboard():
    for name in DASHBOARDS:
        model = dashboard_json(name)
        assert model["schemaVersion"] >= 41, f"{name}: schemaVersion {model['schemaVersion']}"
        variables = {v["name"]: v for v in model["templating"]["list"]}
        for var in ("cluster", "namespace", "job"):
            v = variables[var]
            assert v["includeAll"] and v["multi"] and v["allValue"] == ".*", (name, var)
        assert 'job=~"$job"' in variables["stream"]["query"]["query"]


def test_every_query_is_narrowed_to_the_chosen_deployment():
    for name in DASHBOARDS:
        model = dashboard_json(name)
        exprs = [(t, t["expr"]) for _, _, t in panel_queries(model)]
        exprs += [(v, q) for v, q in variable_queries(model) if v not in ("cluster", "namespace", "job")]
        for where, expr in exprs:
            for var in ("cluster", "namespace", "job"):
                assert f'{var}=~"${var}"' in expr, f"{name}: {expr} ignores ${var}"


def test_units_name_what_is_counted():
    units = {p["title"]: p["fieldConfig"]["defaults"].get("unit") for n in DASHBOARDS
             for p in dashboard_json(n)["panels"] if p["type"] != "row"}
    assert "reqps" not in units.values()
    assert units["Throughput by stream"] == "suffix: images/s"
    assert units["Dead letters by reason"] == "suffix: items/s"
