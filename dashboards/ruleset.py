"""Prometheus recording and alerting rules for splice-monitor, and the equivalent Grafana-managed alert rules,
generated from one table of alert specs so the two never disagree.

``build_rules(RuleConfig())`` is the shipped rules file (dashboards/rules/splice-monitor.rules.yaml, also the Helm
chart's PrometheusRule); tests build it again with short windows to watch alerts fire in a real Prometheus.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

import yaml

__all__ = ["RuleConfig", "AlertSpec", "RECORDS", "alert_specs", "build_rules", "build_grafana_alerting",
           "dump_yaml", "duration_seconds", "recording_rules", "ID_LABELS", "ALERT_PANELS", "runbook_anchor"]

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


@dataclass(frozen=True)
class RuleConfig:
    """Windows, thresholds and ``for`` durations of the rules; the defaults are the shipped file.

    Windows are PromQL range durations. ``window`` is the concept window: prevalence and mean activation are
    ratios of counter increases over it, and the drift alert compares it with the monitor's reference.
    """

    interval: str = "1m"  # rule group evaluation interval
    window: str = "1h"
    rate_window: str = "5m"  # throughput
    min_images: int = 200  # images in the window before a concept drift alert may fire
    z_threshold: float = 6.0  # |z| of the two-proportion test; ~1e-9 per test under H0
    min_abs_change: float = 0.02  # prevalence change (absolute) worth paging for
    concept_for: str = "15m"
    alarm_for: str = "1m"
    stream_for: str = "5m"
    stall_window: str = "10m"
    stall_for: str = "5m"
    dead_letter_window: str = "10m"
    dead_letter_ratio: float = 0.05
    dead_letter_for: str = "10m"
    fidelity_window: str = "30m"
    fidelity_drop: float = 0.1  # alert when mean cosine falls this far below the reference window's mean
    fidelity_for: str = "15m"
    exporter_for: str = "5m"
    absent_for: str = "10m"
    # `up` of the exporter's scrape job. kube-prometheus-stack names it after the metrics Service
    # (<release>-splice-monitor-metrics) for a ServiceMonitor, <namespace>/<release>-splice-monitor for a PodMonitor;
    # the regex takes both and leaves out the Ray PodMonitor (<...>-ray).
    exporter_job_regex: str = ".*splice-monitor(-metrics)?"
    runbook_base: str = "https://github.com/splice-monitor/splice-monitor/blob/main/docs/runbook.md"
    # Prefix of the dashboard links in the Prometheus annotations; empty leaves them relative to Grafana's root,
    # which Alertmanager templates usually prepend.
    grafana_url: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _NOT_DURATIONS:
                continue
            if f.type == "str" and not _DURATION.match(v):
                raise ValueError(f"RuleConfig.{f.name} must be a Prometheus duration such as '5m', got {v!r}")
            if f.type in ("float", "int") and not v >= 0:
                raise ValueError(f"RuleConfig.{f.name} must be >= 0, got {v!r}")


_NOT_DURATIONS = ("exporter_job_regex", "runbook_base", "grafana_url")

# Labels that say which deployment a series comes from. Every aggregation keeps them, so two releases (or clusters,
# when Prometheus stores a cluster label; or batch runs, whose pushes carry run=<job id>) never merge into one alert
# and every alert says where it fired. Missing labels cost nothing: `by (cluster, ...)` over series without a
# cluster label groups them as before.
ID_LABELS = ("cluster", "namespace", "job", "instance", "run")
ID = ", ".join(ID_LABELS)
STREAM = f"{ID}, stream"
CONCEPT = f"{ID}, stream, concept"

# Recording rule names (level:metric:operation). The windows are RuleConfig's, not part of the name, so a
# time-compressed test can reuse the names the dashboards query.
IMAGES_RATE = "stream:splice_images:rate"
IMAGES_INCREASE = "stream:splice_images:increase"
PREVALENCE = "stream_concept:splice_concept_prevalence:ratio"
MEAN_ACTIVATION = "stream_concept:splice_concept_mean_activation:ratio"
REFERENCE_PREVALENCE = "stream_concept:splice_concept_reference_prevalence:ratio"
PREVALENCE_Z = "stream_concept:splice_concept_prevalence_drift:zscore"
DEAD_LETTER_RATIO = "stream:splice_dead_letters:ratio"
FIDELITY_MEAN = "stream:splice_fidelity_cosine:mean"
RECORDS = (IMAGES_RATE, IMAGES_INCREASE, PREVALENCE, MEAN_ACTIVATION, REFERENCE_PREVALENCE, PREVALENCE_Z,
           DEAD_LETTER_RATIO, FIDELITY_MEAN)


def recording_rules(cfg: RuleConfig) -> list[dict]:
    w = cfg.window
    return [
        {"record": IMAGES_RATE,
         "expr": f"sum by ({STREAM}) (rate(splice_images_total[{cfg.rate_window}]))"},
        {"record": IMAGES_INCREASE,
         "expr": f"sum by ({STREAM}) (increase(splice_images_total[{w}]))"},
        {"record": PREVALENCE,
         "expr": f"sum by ({CONCEPT}) (increase(splice_concept_presence_total[{w}]))\n"
                 f"  / on ({STREAM}) group_left\nclamp_min({IMAGES_INCREASE}, 1)"},
        {"record": MEAN_ACTIVATION,
         "expr": f"sum by ({CONCEPT}) (increase(splice_concept_weight_total[{w}]))\n"
                 f"  / on ({STREAM}) group_left\nclamp_min({IMAGES_INCREASE}, 1)"},
        {"record": REFERENCE_PREVALENCE,
         "expr": f'max by ({CONCEPT}) (splice_concept_prevalence_ratio{{window="reference"}})'},
        # Two-proportion z-score of the window against the reference, both samples' variance counted
        # (p_ref (1 - p_ref) (1/n_window + 1/n_reference)); the variance floor keeps concepts absent from the
        # reference from dividing by zero (the alert's min_abs_change guard does the rest).
        {"record": PREVALENCE_Z,
         "expr": f"({PREVALENCE} - {REFERENCE_PREVALENCE})\n"
                 f"  /\nsqrt(\n  (\n    1 / clamp_min({IMAGES_INCREASE}, 1)\n    + on ({STREAM})\n"
                 f'    1 / clamp_min(max by ({STREAM}) (splice_window_images{{window="reference"}}), 1)\n  )\n'
                 f"    * on ({STREAM}) group_right\n"
                 f"  clamp_min({REFERENCE_PREVALENCE} * (1 - {REFERENCE_PREVALENCE}), 0.0001)\n)"},
        {"record": DEAD_LETTER_RATIO,
         "expr": f"sum by ({STREAM}) (rate(splice_dead_letters_total[{cfg.dead_letter_window}]))\n  /\n"
                 f"(\n  sum by ({STREAM}) (rate(splice_dead_letters_total[{cfg.dead_letter_window}]))\n  +\n"
                 f"  sum by ({STREAM}) (rate(splice_images_total[{cfg.dead_letter_window}]))\n)"},
        {"record": FIDELITY_MEAN,
         "expr": f"sum by ({STREAM}) (rate(splice_fidelity_cosine_sum[{cfg.fidelity_window}]))\n  /\n"
                 f"sum by ({STREAM}) (rate(splice_fidelity_cosine_count[{cfg.fidelity_window}]))"},
    ]


@dataclass(frozen=True)
class AlertSpec:
    """One alert in both dialects. ``expr`` returns exactly the firing series; its value is the headline number.

    ``grafana_values`` maps a Grafana refId to a PromQL query (same labels as ``expr``) whose last value the
    Grafana annotation reads as ``$values.<refId>.Value``; Prometheus annotations use ``query`` instead.
    """

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    grafana_summary: str
    grafana_values: tuple[tuple[str, str], ...] = ()


def _q(template_query: str, *args: str) -> str:
    """A Prometheus template snippet: run a query built from labels and print its first value."""
    fmt = " ".join(args)
    return "{{ with printf " + _go_raw(template_query) + (" " + fmt if fmt else "") + " | query }}" \
        "{{ . | first | value | humanizePercentage }}{{ else }}n/a{{ end }}"


def _go_raw(s: str) -> str:
    """A Go template raw string literal (PromQL never contains backquotes)."""
    if "`" in s:
        raise ValueError(f"query template must not contain a backquote: {s!r}")
    return "`" + s + "`"


# The identifying labels as a Prometheus template matcher, so an annotation's query reads the firing series' own
# deployment and never another release's value.
_ID_MATCH = ",".join(f"{k}=%q" for k in ID_LABELS)
_ID_ARGS = tuple(f"$labels.{k}" for k in ID_LABELS)

# Which dashboard panel shows each alert's numbers: the Grafana rules link to it (__dashboardUid__, __panelId__)
# and the Prometheus rules carry a dashboard_url.
ALERT_PANELS: dict[str, tuple[str, str]] = {
    "SpliceConceptPrevalenceDrift": ("concept-explorer", "Prevalence over time"),
    "SpliceConceptDriftDetected": ("overview", "Concept alarms firing"),
    "SpliceStreamDrift": ("overview", "Stream drift score"),
    "SplicePipelineStalled": ("pipeline-health", "Throughput"),
    "SpliceDeadLetterRateHigh": ("pipeline-health", "Dead-letter ratio"),
    "SpliceFidelityDegraded": ("overview", "Mean reconstruction fidelity"),
    "SpliceExporterDown": ("pipeline-health", "Exporter up"),
    "SpliceExporterAbsent": ("pipeline-health", "Exporter up"),
}


_NO_STREAM_LABEL = ("SplicePipelineStalled", "SpliceExporterDown", "SpliceExporterAbsent")


def runbook_anchor(alert: str) -> str:
    """The docs/runbook.md section of an alert (GitHub's heading anchor: the heading lower-cased)."""
    return alert.lower()


def alert_specs(cfg: RuleConfig) -> list[AlertSpec]:
    ref_by_labels = _q(REFERENCE_PREVALENCE + "{" + _ID_MATCH + ",stream=%q,concept=%q}",
                       *_ID_ARGS, "$labels.stream", "$labels.concept")
    mon_ref = _q('splice_concept_prevalence_ratio{' + _ID_MATCH + ',stream=%q,concept=%q,window="reference"}',
                 *_ID_ARGS, "$labels.stream", "$labels.concept")
    mon_cur = _q('splice_concept_prevalence_ratio{' + _ID_MATCH + ',stream=%q,concept=%q,window="current"}',
                 *_ID_ARGS, "$labels.stream", "$labels.concept")
    top_reason = ("{{ with printf " + _go_raw(
        f"topk(1, sum by (reason) (rate(splice_dead_letters_total{{{_ID_MATCH},stream=%q}}"
        f"[{cfg.dead_letter_window}])))") + " " + " ".join(_ID_ARGS)
        + " $labels.stream | query }}{{ . | first | label \"reason\" }}{{ else }}n/a{{ end }}")
    ref_fid = ("{{ with printf " + _go_raw('max(splice_window_fidelity_mean{' + _ID_MATCH
                                           + ',stream=%q,window="reference"})')
               + " " + " ".join(_ID_ARGS)
               + " $labels.stream | query }}{{ . | first | value | printf \"%.3f\" }}{{ else }}n/a{{ end }}")
    stream_score = ("{{ with printf " + _go_raw("max(splice_stream_drift_score{" + _ID_MATCH + ",stream=%q})")
                    + " " + " ".join(_ID_ARGS)
                    + " $labels.stream | query }}{{ . | first | value | humanize }}{{ else }}n/a{{ end }}")
    where = "{{ $labels.job }} in {{ $labels.namespace }}"
    up = f'up{{job=~"{cfg.exporter_job_regex}"}}'
    return [
        AlertSpec(
            name="SpliceConceptPrevalenceDrift",
            expr=(f"{PREVALENCE}\n"
                  f"  and on ({CONCEPT}) abs({PREVALENCE_Z}) > {cfg.z_threshold:g}\n"
                  f"  and on ({CONCEPT}) abs({PREVALENCE} - {REFERENCE_PREVALENCE}) > {cfg.min_abs_change:g}\n"
                  f"  and on ({STREAM}) {IMAGES_INCREASE} >= {cfg.min_images}"),
            for_=cfg.concept_for,
            severity="warning",
            summary=("'{{ $labels.concept }}' prevalence on {{ $labels.stream }}: " + ref_by_labels
                     + " -> {{ $value | humanizePercentage }} over " + cfg.window),
            description=(f"The share of {{{{ $labels.stream }}}} images in which '{{{{ $labels.concept }}}}' is "
                         f"active over the last {cfg.window} differs from the monitor's reference by more than "
                         f"{cfg.min_abs_change:.0%} (absolute) and |z| > {cfg.z_threshold:g} for {cfg.concept_for} "
                         f"({where})."),
            grafana_summary=("'{{ $labels.concept }}' prevalence on {{ $labels.stream }}: "
                             "{{ humanizePercentage $values.REFERENCE.Value }} -> "
                             "{{ humanizePercentage $values.B.Value }} over " + cfg.window),
            grafana_values=(("REFERENCE", REFERENCE_PREVALENCE),),
        ),
        AlertSpec(
            name="SpliceConceptDriftDetected",
            expr=f"max by ({CONCEPT}) (splice_concept_alarm_firing) == 1",
            for_=cfg.alarm_for,
            severity="warning",
            summary=("'{{ $labels.concept }}' drifted on {{ $labels.stream }} (monitor alarm): prevalence "
                     + mon_ref + " -> " + mon_cur + " in the monitor's window"),
            description=("The drift monitor's calibrated per-concept test (prevalence or mean activation) is "
                         f"firing for '{{{{ $labels.concept }}}}' on {{{{ $labels.stream }}}} ({where})."),
            grafana_summary=("'{{ $labels.concept }}' drifted on {{ $labels.stream }} (monitor alarm): prevalence "
                             "{{ humanizePercentage $values.REFERENCE.Value }} -> "
                             "{{ humanizePercentage $values.CURRENT.Value }} in the monitor's window"),
            grafana_values=(
                ("REFERENCE", f'max by ({CONCEPT}) (splice_concept_prevalence_ratio{{window="reference"}})'),
                ("CURRENT", f'max by ({CONCEPT}) (splice_concept_prevalence_ratio{{window="current"}})'),
            ),
        ),
        AlertSpec(
            name="SpliceStreamDrift",
            expr=f'max by ({STREAM}) (splice_alarms_firing{{kind=~"stream|embedding"}}) > 0',
            for_=cfg.stream_for,
            severity="warning",
            summary="stream {{ $labels.stream }} drifted as a whole: drift score " + stream_score,
            description=("The drift monitor's stream-level test (all concepts / embeddings together) is firing "
                         f"for {{{{ $labels.stream }}}} ({where}); see the top drifting concepts on the overview "
                         "dashboard."),
            grafana_summary=("stream {{ $labels.stream }} drifted as a whole: drift score "
                             "{{ humanize $values.SCORE.Value }}"),
            grafana_values=(("SCORE", f"max by ({STREAM}) (splice_stream_drift_score)"),),
        ),
        AlertSpec(
            name="SplicePipelineStalled",
            # per deployment: one stalled release pages even while another one is busy
            expr=(f"max by ({ID}) (splice_queue_items) > 0\n"
                  f"  unless on ({ID})\n"
                  f"sum by ({ID}) (rate(splice_images_total[{cfg.stall_window}])) > 0"),
            for_=cfg.stall_for,
            severity="critical",
            summary=(f"{where} decomposed no images in the last " + cfg.stall_window + " while "
                     "{{ $value | humanize }} items wait in the queue"),
            description="Workers are down, stuck or starved of resources; the input queue is not draining.",
            grafana_summary=(f"{where} decomposed no images in the last " + cfg.stall_window + " while "
                             "{{ humanize $values.B.Value }} items wait in the queue"),
        ),
        AlertSpec(
            name="SpliceDeadLetterRateHigh",
            expr=f"{DEAD_LETTER_RATIO} > {cfg.dead_letter_ratio:g}",
            for_=cfg.dead_letter_for,
            severity="warning",
            summary=("{{ $value | humanizePercentage }} of items on {{ $labels.stream }} dead-lettered over the "
                     "last " + cfg.dead_letter_window + " (top reason: " + top_reason + ")"),
            description=(f"More than {cfg.dead_letter_ratio:.0%} of the items of {{{{ $labels.stream }}}} cannot be "
                         f"decoded or decomposed ({where}); see dead letters by reason on the pipeline health "
                         "dashboard."),
            grafana_summary=("{{ humanizePercentage $values.B.Value }} of items on {{ $labels.stream }} "
                             "dead-lettered over the last " + cfg.dead_letter_window),
        ),
        AlertSpec(
            name="SpliceFidelityDegraded",
            expr=(f"{FIDELITY_MEAN}\n  < on ({STREAM})\n"
                  f'(max by ({STREAM}) (splice_window_fidelity_mean{{window="reference"}}) - {cfg.fidelity_drop:g})'),
            for_=cfg.fidelity_for,
            severity="warning",
            summary=("mean reconstruction cosine on {{ $labels.stream }}: " + ref_fid
                     + " -> {{ $value | printf \"%.3f\" }} over " + cfg.fidelity_window),
            description=("The concept dictionary explains {{ $labels.stream }} much worse than in the reference "
                         f"window ({where}): new content the vocabulary lacks, or a changed encoder or "
                         "preprocessing."),
            grafana_summary=("mean reconstruction cosine on {{ $labels.stream }}: "
                             "{{ printf \"%.3f\" $values.REFERENCE.Value }} -> {{ printf \"%.3f\" $values.B.Value }}"
                             " over " + cfg.fidelity_window),
            grafana_values=(("REFERENCE",
                             f'max by ({STREAM}) (splice_window_fidelity_mean{{window="reference"}})'),),
        ),
        AlertSpec(
            name="SpliceExporterDown",
            expr=f"{up} == 0",
            for_=cfg.exporter_for,
            severity="critical",
            summary="splice-monitor exporter {{ $labels.instance }} ({{ $labels.job }} in {{ $labels.namespace }}) "
                    "cannot be scraped",
            description=("Prometheus fails to scrape the metrics endpoint: the aggregator (on the Ray head) is down "
                         "or restarting, or the NetworkPolicy / port changed. Drift alerts for this deployment are "
                         "blind until it is back."),
            grafana_summary=("splice-monitor exporter {{ $labels.instance }} ({{ $labels.job }} in "
                             "{{ $labels.namespace }}) cannot be scraped"),
        ),
        AlertSpec(
            name="SpliceExporterAbsent",
            # absent() has no series to take labels from: this one says "nothing at all", the one above says which
            expr=f"absent({up})",
            for_=cfg.absent_for,
            severity="critical",
            summary=f"no splice-monitor exporter target matches {up}",
            description=("Prometheus has no scrape target for the exporter at all: the ServiceMonitor/PodMonitor is "
                         "missing or not selected (release label), or the release is gone. No splice-monitor "
                         "alert can fire while this one does."),
            grafana_summary=f"no splice-monitor exporter target matches {up}",
        ),
    ]


def _panel(alert: str) -> tuple[str, int]:
    """(dashboard uid, panel id) of the panel that shows ``alert``'s numbers."""
    from dashboards.build import dashboard_json  # the dashboards import this module: resolve at call time

    name, title = ALERT_PANELS[alert]
    model = dashboard_json(name)
    ids = [p["id"] for p in model["panels"] if p.get("title") == title]
    if len(ids) != 1:
        raise ValueError(f"alert {alert}: dashboard {name!r} has {len(ids)} panels titled {title!r}, need one")
    return model["uid"], ids[0]


def _dashboard_url(cfg: RuleConfig, alert: str) -> str:
    uid, panel = _panel(alert)
    url = f"{cfg.grafana_url}/d/{uid}?viewPanel={panel}"
    if alert != "SpliceExporterAbsent":  # the one alert without identifying labels
        url += "&var-namespace={{ $labels.namespace }}&var-job={{ $labels.job }}"
    if alert not in _NO_STREAM_LABEL:
        url += "&var-stream={{ $labels.stream }}"
    if ALERT_PANELS[alert][0] == "concept-explorer":
        url += "&var-concept={{ $labels.concept }}"
    return url


def build_rules(cfg: RuleConfig = RuleConfig()) -> dict:
    """The Prometheus rules file as a dict (``groups:``), recording group first. Every alert carries a runbook_url
    (its docs/runbook.md section) and a dashboard_url (the panel with its numbers)."""
    alerts = [
        {"alert": a.name, "expr": a.expr, "for": a.for_, "labels": {"severity": a.severity},
         "annotations": {"summary": a.summary, "description": a.description,
                         "runbook_url": f"{cfg.runbook_base}#{runbook_anchor(a.name)}",
                         "dashboard_url": _dashboard_url(cfg, a.name)}}
        for a in alert_specs(cfg)
    ]
    return {"groups": [
        {"name": "splice-monitor.rules", "interval": cfg.interval, "rules": recording_rules(cfg)},
        {"name": "splice-monitor.alerts", "interval": cfg.interval, "rules": alerts},
    ]}


def duration_seconds(d: str) -> int:
    """Seconds in a Prometheus duration such as '1h30m'."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", d)))


def build_grafana_alerting(cfg: RuleConfig = RuleConfig(), *, datasource_uid: str = "prometheus",
                           folder: str = "splice-monitor") -> dict:
    """Grafana alerting file provisioning (``apiVersion: 1``) equivalent to the Prometheus alerts.

    Each rule: A = the alert's PromQL (instant; it returns only the firing series), B = last value of A,
    C = ``$B == $B`` (1 for every series A returned: the condition), plus one reduced query per annotation value. Built with grafana-foundation-sdk's alerting builders.
    """
    from grafana_foundation_sdk.builders import alerting, expr, prometheus
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.alerting import RelativeTimeRange
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    expr_ds = DataSourceRef(type_val="__expr__", uid="__expr__")  # Grafana server-side expressions
    lookback = max(600, 2 * duration_seconds(cfg.window))
    rules = []
    for a in alert_specs(cfg):
        def query(ref: str, promql: str) -> alerting.Query:
            return (alerting.Query(ref).datasource_uid(datasource_uid)
                    .relative_time_range(RelativeTimeRange(from_val=lookback, to=0))
                    .model(prometheus.Dataquery().expr(promql).instant().ref_id(ref)
                           .datasource(DataSourceRef(type_val="prometheus", uid=datasource_uid))))

        def reduce(ref: str, source: str) -> alerting.Query:
            return (alerting.Query(ref).datasource_uid("__expr__")
                    .model(expr.TypeReduce().ref_id(ref).datasource(expr_ds).expression(source).reducer("last")
                           .settings(expr.ExprTypeReduceSettings().mode("dropNN"))))

        data = [
            query("A", a.expr),
            reduce("B", "A"),
            # A returns only the firing series, so "has a value" is the condition; a threshold cannot say
            # "any value", the math marker can (NaN is dropped by B).
            alerting.Query("C").datasource_uid("__expr__").model(
                expr.TypeMath().ref_id("C").datasource(expr_ds).expression("$B == $B")),
        ]
        for ref, promql in a.grafana_values:
            data.append(query(f"{ref}_Q", promql))
            data.append(reduce(ref, f"{ref}_Q"))
        dash_uid, panel_id = _panel(a.name)
        rule = (alerting.Rule(a.name).uid(_uid(a.name)).condition("C").queries(data).for_val(a.for_)
                .labels({"severity": a.severity})
                # Grafana links a rule to its panel through these two annotations (the panel shows the alert state)
                .annotations({"summary": a.grafana_summary, "description": a.description,
                              "runbook_url": f"{cfg.runbook_base}#{runbook_anchor(a.name)}",
                              "__dashboardUid__": dash_uid, "__panelId__": str(panel_id)})
                .no_data_state("OK").exec_err_state("Error"))
        built = json.loads(JSONEncoder().encode(rule.build()))
        rules.append({
            "uid": built["uid"], "title": built["title"], "condition": built["condition"],
            "data": built["data"], "noDataState": built["noDataState"], "execErrState": built["execErrState"],
            "for": built["for"], "labels": built["labels"], "annotations": built["annotations"],
        })
    return {"apiVersion": 1, "groups": [
        {"orgId": 1, "name": "splice-monitor", "folder": folder, "interval": cfg.interval, "rules": rules},
    ]}


def _uid(name: str) -> str:
    # Grafana rule uids: at most 40 characters of [a-zA-Z0-9_-].
    return ("splice-" + re.sub(r"(?<!^)(?=[A-Z])", "-", name.removeprefix("Splice")).lower())[:40]


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump_yaml(obj: dict, header: str = "") -> str:
    body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True, default_flow_style=False)
    return header + body
