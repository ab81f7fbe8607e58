"""The Prometheus rules file: promtool check + promtool unit tests, up to date with dashboards/ruleset.py, only
documented metric names, and a Grafana alert provisioning file equivalent to it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

import dashboards
from dashboards.ruleset import RECORDS, RuleConfig, alert_specs, build_grafana_alerting, build_rules
from monitor.metrics.families import METRICS

PROMTOOL = shutil.which("promtool")
RULES = dashboards.PACKAGE_DIR / dashboards.RULES_FILE
TESTS = sorted((dashboards.PACKAGE_DIR / "rules" / "tests").glob("*.yaml"))
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (apt-get install prometheus)")

NAME = re.compile(r"\b(splice_[a-z0-9_]+|stream(?:_concept)?:[a-z0-9_:]+)")


def known_names() -> set[str]:
    from monitor.metrics.batch import BATCH_METRICS
    from monitor.metrics.runtime import BUILD_INFO

    names = set(RECORDS) | {BUILD_INFO}
    for spec in METRICS + BATCH_METRICS:
        names.add(spec.name)
        if spec.type == "histogram":
            names |= {spec.name + s for s in ("_bucket", "_sum", "_count")}
    return names


@needs_promtool
def test_shipped_rules_pass_promtool_check():
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in build_rules()['groups'])} rules found" in out.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    assert TESTS, "no promtool test files under dashboards/rules/tests/"
    out = subprocess.run([PROMTOOL, "test", "rules", *map(str, TESTS)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    cases: dict[str, set[bool]] = {}
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for spec in alert_specs(RuleConfig()):
        assert cases.get(spec.name) == {True, False}, \
            f"{spec.name}: promtool cases (fires / quiet) {cases.get(spec.name)}"


def test_rules_file_is_generated_from_code():
    assert RULES.read_text() == dashboards.render_files()[dashboards.RULES_FILE], \
        "dashboards/rules/splice-monitor.rules.yaml is stale: run `splice-monitor dashboards render`"


def test_rules_use_only_documented_metric_names():
    known = known_names()
    for group in build_rules()["groups"]:
        for rule in group["rules"]:
            text = rule["expr"] + " ".join(rule.get("annotations", {}).values())
            unknown = set(NAME.findall(text)) - known
            assert not unknown, f"{rule.get('record') or rule.get('alert')} uses undocumented {unknown}"


def test_alerts_carry_for_severity_and_a_summary_in_words():
    for group in build_rules()["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["for"] and rule["labels"]["severity"] in ("warning", "critical")
            assert "{{ $labels" in rule["annotations"]["summary"] or rule["alert"] == "SpliceExporterAbsent"
            assert rule["annotations"]["description"]
    summary = next(a.summary for a in alert_specs(RuleConfig()) if a.name == "SpliceConceptPrevalenceDrift")
    assert "humanizePercentage" in summary and "->" in summary and summary.endswith("over 1h")


def test_windows_and_thresholds_change_but_rule_names_do_not():
    fast = RuleConfig(window="10s", concept_for="2s", interval="1s")
    names = [[r.get("record") or r.get("alert") for r in g["rules"]] for g in build_rules(fast)["groups"]]
    assert names == [[r.get("record") or r.get("alert") for r in g["rules"]] for g in build_rules()["groups"]]
    assert "[10s]" in build_rules(fast)["groups"][0]["rules"][1]["expr"]
    with pytest.raises(ValueError, match=r"RuleConfig.window must be a Prometheus duration such as '5m', got '1 hour'"):
        RuleConfig(window="1 hour")
    with pytest.raises(ValueError, match="RuleConfig.z_threshold must be >= 0"):
        RuleConfig(z_threshold=-1.0)


def test_grafana_alerting_is_equivalent_and_up_to_date():
    committed = (dashboards.PACKAGE_DIR / dashboards.GRAFANA_ALERTING_FILE).read_text()
    assert committed == dashboards.render_files()[dashboards.GRAFANA_ALERTING_FILE], \
        "dashboards/generated/grafana-alerting.yaml is stale: run `splice-monitor dashboards render`"
    grafana = yaml.safe_load(committed)
    assert grafana["apiVersion"] == 1
    (group,) = grafana["groups"]
    prom_alerts = {r["alert"]: r for r in build_rules()["groups"][1]["rules"]}
    assert [r["title"] for r in group["rules"]] == list(prom_alerts)
    uids = [r["uid"] for r in group["rules"]]
    assert len(set(uids)) == len(uids) and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", u) for u in uids)
    from dashboards.build import dashboard_json, DASHBOARDS

    panels = {(dashboard_json(n)["uid"], str(p["id"])): p["title"] for n in DASHBOARDS for p in dashboard_json(n)["panels"]}
    for rule in group["rules"]:
        prom = prom_alerts[rule["title"]]
        link = (rule["annotations"]["__dashboardUid__"], rule["annotations"]["__panelId__"])
        assert link in panels, f"{rule['title']}: no panel {link}"
        assert rule["annotations"]["runbook_url"] == prom["annotations"]["runbook_url"]
        assert f"/d/{link[0]}?viewPanel={link[1]}" in prom["annotations"]["dashboard_url"]
        refs = {q["refId"]: q for q in rule["data"]}
        assert refs["A"]["model"]["expr"] == prom["expr"]
        assert rule["condition"] in refs and refs["C"]["model"]["expression"] == "$B == $B"
        assert rule["for"] == prom["for"] and rule["labels"] == prom["labels"]
        assert rule["noDataState"] == "OK"
        for ref in re.findall(r"\$values\.([A-Z_]+)\.Value", rule["annotations"]["summary"]):
            assert ref in refs and refs[ref]["datasourceUid"] == "__expr__", f"{rule['title']}: ${ref} undefined"
    custom = build_grafana_alerting(datasource_uid="mimir")
    assert {q["datasourceUid"] for r in custom["groups"][0]["rules"] for q in r["data"]} == {"mimir", "__expr__"}


RUNBOOK = dashboards.PACKAGE_DIR.parent / "docs" / "runbook.md"


def test_every_alert_links_a_runbook_section_that_says_what_to_check_and_do():
    text = RUNBOOK.read_text()
    sections = {m.group(1): body for m, body in zip(
        re.finditer(r"^## (\w+)\s*$", text, re.M),
        re.split(r"^## \w+\s*$", text, flags=re.M)[1:])}
    for rule in build_rules()["groups"][1]["rules"]:
        name = rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RuleConfig().runbook_base}#{name.lower()}", url
        assert name in sections, f"docs/runbook.md has no '## {name}' section"
        body = sections[name]
        assert "**Check**" in body and "**Do**" in body, f"runbook section {name} lacks Check / Do"
        assert len(body.split()) > 60, f"runbook section {name} is too thin to act on"


def _clauses(expr: str) -> list[tuple[str, set[str]]]:
    return [(kind, {x.strip() for x in labels.split(",") if x.strip()})
            for kind, labels in re.findall(r"\b(by|on)\s*\(([^)]*)\)", expr)]


def test_every_aggregation_and_join_keeps_the_deployment_labels():
    """cluster/namespace/job/instance survive every `by` and `on`, and no aggregation runs without `by`: two
    releases in one Prometheus never merge into one series, and every alert says where it fired."""
    from dashboards.ruleset import ID_LABELS

    for group in build_rules()["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            expr = rule["expr"]
            assert not re.search(r"\b(sum|max|min|avg|count)\s*\(", expr), f"{name}: aggregation without by"
            for kind, labels in _clauses(expr):
                assert set(ID_LABELS) <= labels, f"{name}: {kind} ({', '.join(sorted(labels))}) drops labels"


def test_each_alert_keeps_its_identifying_labels_in_promtool_cases():
    """Every firing promtool case asserts namespace, job and instance (plus stream/concept where the alert has them)
    on the alert, so a rule that drops one fails here and not in production."""
    needs = {"SpliceConceptPrevalenceDrift": {"stream", "concept"}, "SpliceConceptDriftDetected": {"stream", "concept"},
             "SpliceStreamDrift": {"stream"}, "SpliceDeadLetterRateHigh": {"stream"}, "SpliceFidelityDegraded": {"stream"},
             "SplicePipelineStalled": set(), "SpliceExporterDown": set()}
    seen = set()
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    if case["alertname"] in needs:
                        want = {"namespace", "job", "instance"} | needs[case["alertname"]]
                        assert want <= set(alert["exp_labels"]), (case["alertname"], alert["exp_labels"])
                        seen.add(case["alertname"])
    assert seen == set(needs)
