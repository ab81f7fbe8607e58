"""Grafana dashboards of splice-monitor as code (grafana-foundation-sdk 1769699998!10.1.0): overview, concept
explorer and pipeline health. Every query is PromQL over the names in monitor.metrics.families.METRICS and the recording
rules of dashboards.ruleset, so tests can run each one against a real Prometheus."""

from __future__ import annotations

import json
from typing import Callable

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as mdash
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards import ruleset as R

__all__ = ["DASHBOARDS", "build_dashboard", "dashboard_json", "panel_queries", "variable_queries"]

DS = mdash.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["splice-monitor", "generated"]
RI = "$__rate_interval"
# Grafana 12's dashboard schema; the SDK's builders leave an older number, which makes Grafana migrate on load.
SCHEMA_VERSION = 41
# Every query is narrowed to the chosen deployment: with two releases (or clusters) in one Prometheus, nothing
# merges unless the user picks "All". A label a setup lacks (no cluster label) matches the empty string, and
# "All" is ".*", which matches that too.
ID_SEL = 'cluster=~"$cluster",namespace=~"$namespace",job=~"$job"'
SEL = ID_SEL + ',stream=~"$stream"'  # overview and pipeline health filter by a multi-select stream variable
IMAGES_PER_S = "suffix: images/s"  # Grafana custom units: the thing counted, not "req/s"
ITEMS_PER_S = "suffix: items/s"


def _query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
           fmt: PromQueryFormat | None = None) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    else:
        q = q.range()
    if fmt is not None:
        q = q.format(fmt)
    return q


def _legend() -> VizLegendOptions:
    return (VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.BOTTOM)
            .show_legend(True))


def _ts(title: str, desc: str, targets: list[prometheus.Dataquery], *, unit: str = "short", w: int = 12,
        h: int = 8, min_val: float | None = None, max_val: float | None = None) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
         .legend(_legend()).fill_opacity(10).line_width(1))
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    for t in targets:
        p = p.with_target(t)
    return p


def _stat(title: str, desc: str, target: prometheus.Dataquery, *, unit: str = "short", w: int = 6,
          h: int = 4) -> stat.Panel:
    return stat.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h) \
        .with_target(target)


def _table(title: str, desc: str, target: prometheus.Dataquery, *, w: int = 12, h: int = 8,
           unit: str = "short") -> table.Panel:
    return (table.Panel().title(title).description(desc).datasource(DS).span(w).height(h).unit(unit)
            .with_target(target)
            .with_transformation(mdash.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True, "__name__": True}})))


def _datasource_var() -> gdash.DatasourceVariable:
    return gdash.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _id_vars() -> list[gdash.QueryVariable]:
    """cluster -> namespace -> job, each narrowing the next, from the exporter's splice_build_info."""
    out = []
    scope = ""
    for name, label in (("cluster", "Cluster"), ("namespace", "Namespace"), ("job", "Job")):
        out.append(gdash.QueryVariable(name).label(label).datasource(DS)
                   .query({"query": f"label_values(splice_build_info{'{' + scope + '}' if scope else ''}, {name})",
                           "refId": name})
                   .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(mdash.VariableSort.ALPHABETICAL_ASC)
                   .multi(True).include_all(True).all_value(".*"))
        scope += ("," if scope else "") + f'{name}=~"${name}"'
    return out


def _stream_var(multi: bool) -> gdash.QueryVariable:
    v = (gdash.QueryVariable("stream").label("Stream").datasource(DS)
         .query({"query": f"label_values(splice_images_total{{{ID_SEL}}}, stream)", "refId": "streams"})
         .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(mdash.VariableSort.ALPHABETICAL_ASC))
    if multi:
        v = v.multi(True).include_all(True).all_value(".*")
    return v


def _base(title: str, uid: str, description: str) -> gdash.Dashboard:
    d = _base_plain(title, uid, description).with_variable(_datasource_var())
    for v in _id_vars():
        d = d.with_variable(v)
    return d


def _base_plain(title: str, uid: str, description: str) -> gdash.Dashboard:
    return (gdash.Dashboard(title).uid(uid).description(description).tags(TAGS).refresh("1m")
            .time("now-6h", "now").timezone("browser").editable()
            .tooltip(mdash.DashboardCursorSync.CROSSHAIR)
            .link(gdash.DashboardLink("splice-monitor").type(mdash.DashboardLinkType.DASHBOARDS)
                  .tags(["splice-monitor"]).as_dropdown(True).include_vars(True).keep_time(True)))


def overview() -> gdash.Dashboard:
    d = (_base("splice-monitor / Overview", "splice-overview",
               "Streams, throughput, drift scores, firing alarms, top drifting concepts and reconstruction "
               "fidelity of splice-monitor.")
         .with_variable(_stream_var(multi=True)))
    d = d.with_row(gdash.Row("At a glance"))
    d = (d.with_panel(_stat("Streams", "Streams that have decomposed at least one image.",
                            _query(f"count(count by (stream) (splice_images_total{{{SEL}}}))", instant=True)))
         .with_panel(_stat("Throughput", "Images decomposed per second, all selected streams.",
                           _query(f"sum(rate(splice_images_total{{{SEL}}}[{RI}]))", instant=True),
                           unit=IMAGES_PER_S))
         .with_panel(_stat("Alarms firing", "Alarms of the drift monitor firing now, all kinds.",
                           _query(f"sum(splice_alarms_firing{{{SEL}}})", instant=True)))
         .with_panel(_stat("Mean fidelity", "Mean reconstruction cosine over the rule window (recording rule).",
                           _query(f"avg({R.FIDELITY_MEAN}{{{SEL}}})", instant=True), unit="none")))
    d = d.with_row(gdash.Row("Streams"))
    d = (d.with_panel(_ts("Throughput by stream", "Images decomposed per second.",
                          [_query(f"sum by (stream) (rate(splice_images_total{{{SEL}}}[{RI}]))", "{{stream}}")],
                          unit=IMAGES_PER_S, min_val=0))
         .with_panel(_ts("Stream drift score", "The drift monitor's stream-level score per closed window.",
                         [_query(f"splice_stream_drift_score{{{SEL}}}", "{{stream}}")]))
         .with_panel(_ts("Alarms firing by kind", "Firing alarms of the drift monitor per stream and kind.",
                         [_query(f"sum by (stream, kind) (splice_alarms_firing{{{SEL}}})", "{{stream}} {{kind}}")],
                         min_val=0))
         .with_panel(_ts("Mean reconstruction fidelity", "cos(recomposed, input), mean over the scrape interval; "
                         "the dashed reference is the monitor's reference window.",
                         [_query(f"sum by (stream) (rate(splice_fidelity_cosine_sum{{{SEL}}}[{RI}])) / "
                                 f"sum by (stream) (rate(splice_fidelity_cosine_count{{{SEL}}}[{RI}]))",
                                 "{{stream}}", "A"),
                          _query(f'splice_window_fidelity_mean{{{SEL},window="reference"}}',
                                 "{{stream}} reference", "B")],
                         unit="none", max_val=1)))
    d = d.with_row(gdash.Row("Concepts"))
    d = (d.with_panel(_table("Top drifting concepts (monitor)",
                             "The drift monitor's top 10 concepts by score in the latest window (the top-K are "
                             "always exported, so topk over the per-concept score is the list).",
                             _query(f"topk(10, splice_concept_drift_score{{{SEL}}})", instant=True,
                                    fmt=PromQueryFormat.TABLE)))
         .with_panel(_table("Largest prevalence z-scores (rules)",
                            "Two-proportion z-score of each exported concept's prevalence over the rule window "
                            "against the monitor's reference (recording rule); top 20 by |z|.",
                            _query(f"topk(20, abs({R.PREVALENCE_Z}{{{SEL}}}))", instant=True,
                                   fmt=PromQueryFormat.TABLE)))
         .with_panel(_ts("Concept alarms firing", "Concepts whose monitor alarm is firing.",
                         [_query(f"splice_concept_alarm_firing{{{SEL}}} == 1", "{{stream}} {{concept}}")],
                         min_val=0, w=24)))
    return d


def concept_explorer() -> gdash.Dashboard:
    one = ID_SEL + ',stream="$stream"'
    sel = one + ',concept=~"$concept"'
    concept_var = (gdash.QueryVariable("concept").label("Concept").datasource(DS)
                   .query({"query": f"label_values(splice_concept_presence_total{{{one}}}, concept)",
                           "refId": "concepts"})
                   .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(mdash.VariableSort.ALPHABETICAL_ASC)
                   .multi(True))
    d = (_base("splice-monitor / Concept explorer", "splice-concept-explorer",
               "Prevalence and mean activation of chosen concepts over time, reference vs current.")
         .with_variable(_stream_var(multi=False)).with_variable(concept_var))
    d = d.with_row(gdash.Row("Prevalence"))
    d = (d.with_panel(_ts("Prevalence over time", "Share of images with the concept active: from the counters over "
                          "the scrape interval (solid) and over the rule window (recording rule).",
                          [_query(f"sum by (concept) (increase(splice_concept_presence_total{{{sel}}}[{RI}]))"
                                  f" / on () group_left sum(increase(splice_images_total{{{one}}}"
                                  f"[{RI}]))", "{{concept}}", "A"),
                           _query(f"{R.PREVALENCE}{{{sel}}}", "{{concept}} (rule window)", "B")],
                          unit="percentunit", min_val=0))
         .with_panel(_ts("Prevalence: reference vs current", "The drift monitor's reference window and its latest "
                         "closed window.",
                         [_query(f"splice_concept_prevalence_ratio{{{sel}}}", "{{concept}} {{window}}")],
                         unit="percentunit", min_val=0)))
    d = d.with_row(gdash.Row("Mean activation"))
    d = (d.with_panel(_ts("Mean activation over time", "Mean SpLiCE weight per image (zeros included) from the "
                          "counters and over the rule window.",
                          [_query(f"sum by (concept) (increase(splice_concept_weight_total{{{sel}}}[{RI}]))"
                                  f" / on () group_left sum(increase(splice_images_total{{{one}}}"
                                  f"[{RI}]))", "{{concept}}", "A"),
                           _query(f"{R.MEAN_ACTIVATION}{{{sel}}}", "{{concept}} (rule window)", "B")],
                          min_val=0))
         .with_panel(_ts("Mean activation: reference vs current", "The drift monitor's windows.",
                         [_query(f"splice_concept_mean_activation{{{sel}}}", "{{concept}} {{window}}")],
                         min_val=0)))
    d = d.with_row(gdash.Row("Drift"))
    d = (d.with_panel(_ts("Drift score", "The drift monitor's per-concept score.",
                          [_query(f"splice_concept_drift_score{{{sel}}}", "{{concept}}")]))
         .with_panel(_ts("Prevalence z-score (rules)", "Two-proportion z-score of the rule window against the "
                         "reference; the concept alert needs |z| above its threshold.",
                         [_query(f"{R.PREVALENCE_Z}{{{sel}}}", "{{concept}}")]))
         .with_panel(_ts("Alarm firing", "1 while the monitor's concept alarm fires.",
                         [_query(f"splice_concept_alarm_firing{{{sel}}}", "{{concept}}")],
                         min_val=0, max_val=1, w=24, h=6)))
    return d


def pipeline_health() -> gdash.Dashboard:
    d = (_base("splice-monitor / Pipeline health", "splice-pipeline-health",
               "Throughput, latency, queue, dead letters, solver convergence, sparsity and freshness.")
         .with_variable(_stream_var(multi=True)))
    d = d.with_row(gdash.Row("Flow"))
    d = (d.with_panel(_ts("Throughput", "Images decomposed per second per stream.",
                          [_query(f"sum by (stream) (rate(splice_images_total{{{SEL}}}[{RI}]))", "{{stream}}")],
                          unit=IMAGES_PER_S, min_val=0, w=8))
         .with_panel(_ts("Batch latency", "Batch processing time quantiles from the histogram.",
                         [_query(f"histogram_quantile({q}, sum by (le) (rate(splice_batch_latency_seconds_bucket"
                                 f"{{{SEL}}}[{RI}])))", f"p{int(q * 100)}", ref)
                          for ref, q in (("A", 0.5), ("B", 0.95), ("C", 0.99))],
                         unit="s", min_val=0, w=8))
         .with_panel(_ts("Queue depth", "Items waiting in the input queue.",
                         [_query(f"splice_queue_items{{{ID_SEL}}}", "{{job}} {{instance}}")], min_val=0, w=8)))
    d = d.with_row(gdash.Row("Errors"))
    d = (d.with_panel(_ts("Dead letters by reason", "Items dead-lettered per second, by reason code.",
                          [_query(f"sum by (reason) (rate(splice_dead_letters_total{{{SEL}}}[{RI}]))", "{{reason}}")],
                          unit=ITEMS_PER_S, min_val=0))
         .with_panel(_ts("Dead-letter ratio", "Dead letters / (dead letters + images) over the rule window.",
                         [_query(f"{R.DEAD_LETTER_RATIO}{{{SEL}}}", "{{stream}}")], unit="percentunit", min_val=0))
         .with_panel(_ts("Solver non-convergence", "Share of decompositions that stopped before the tolerance.",
                         [_query(f"sum by (stream) (rate(splice_solver_nonconverged_total{{{SEL}}}[{RI}])) / "
                                 f"clamp_min(sum by (stream) (rate(splice_images_total{{{SEL}}}[{RI}])), 1e-9)",
                                 "{{stream}}")], unit="percentunit", min_val=0)))
    d = d.with_row(gdash.Row("Decompositions"))
    d = (d.with_panel(_ts("Fidelity quantiles", "Reconstruction cosine quantiles from the histogram.",
                          [_query(f"histogram_quantile({q}, sum by (le) (rate(splice_fidelity_cosine_bucket"
                                  f"{{{SEL}}}[{RI}])))", f"p{int(q * 100)}", ref)
                           for ref, q in (("A", 0.1), ("B", 0.5), ("C", 0.9))],
                          unit="none", max_val=1, w=8))
         .with_panel(_ts("Active concepts per image", "Mean l0 and its 90th percentile.",
                         [_query(f"sum(rate(splice_l0_concepts_sum{{{SEL}}}[{RI}])) / "
                                 f"sum(rate(splice_l0_concepts_count{{{SEL}}}[{RI}]))", "mean", "A"),
                          _query(f"histogram_quantile(0.9, sum by (le) (rate(splice_l0_concepts_bucket{{{SEL}}}"
                                 f"[{RI}])))", "p90", "B")], min_val=0, w=8))
         .with_panel(_ts("Exported concepts", "Concepts with per-concept series per stream (bounded by "
                         "max_concepts_per_stream) and the dictionary size.",
                         [_query(f"splice_exported_concepts{{{SEL}}}", "{{stream}}", "A"),
                          _query(f"splice_dictionary_concepts{{{ID_SEL}}}", "dictionary {{job}}", "B")], min_val=0, w=8)))
    d = d.with_row(gdash.Row("Exporter"))
    d = (d.with_panel(_ts("Exporter up", "1 while Prometheus scrapes the exporter (SpliceExporterDown fires at 0); "
                          "a missing line means no target at all (SpliceExporterAbsent).",
                          # up of the targets that served splice_build_info lately: 0 (not a gap) while down
                          [_query(f"up{{{ID_SEL}}} and on (job, instance) "
                                  f"last_over_time(splice_build_info{{{ID_SEL}}}[1d])", "{{job}} {{instance}}")],
                          min_val=0, max_val=1))
         .with_panel(_ts("Exporter memory", "Resident memory of the process serving /metrics (the aggregator).",
                         [_query(f"process_resident_memory_bytes{{{ID_SEL}}}", "{{job}} {{instance}}")],
                         unit="bytes", min_val=0)))
    d = d.with_row(gdash.Row("Freshness"))
    d = (d.with_panel(_ts("Reference age", "Seconds since each stream's reference was built.",
                          [_query(f"time() - splice_reference_timestamp_seconds{{{SEL}}}", "{{stream}}")],
                          unit="s", min_val=0))
         .with_panel(_ts("Latest window age", "Seconds since the end of the latest closed window.",
                         [_query(f"time() - splice_window_end_timestamp_seconds{{{SEL}}}", "{{stream}}")],
                         unit="s", min_val=0)))
    return d


DASHBOARDS: dict[str, Callable[[], gdash.Dashboard]] = {
    "overview": overview,
    "concept-explorer": concept_explorer,
    "pipeline-health": pipeline_health,
}


def build_dashboard(name: str) -> gdash.Dashboard:
    try:
        return DASHBOARDS[name]()
    except KeyError:
        raise ValueError(f"unknown dashboard {name!r}; valid names: {sorted(DASHBOARDS)}") from None


def dashboard_json(name: str) -> dict:
    """The dashboard as the plain dict Grafana imports (the generated file's content)."""
    model = build_dashboard(name).build()
    model.schema_version = SCHEMA_VERSION
    next_id = 1
    for panel in model.panels or []:
        # Grafana keys panel state (links, repeats, alert annotations) by id: number them in layout order.
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1
    return json.loads(JSONEncoder(sort_keys=True).encode(model))


def _panels(model: dict) -> list[dict]:
    out = []
    for p in model.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows carry their panels
    return out


def panel_queries(model: dict) -> list[tuple[str, str, dict]]:
    """(panel title, refId, target) for every Prometheus target of a dashboard dict."""
    return [(p.get("title", ""), t.get("refId", ""), t) for p in _panels(model) for t in p.get("targets", [])
            if "expr" in t]


def variable_queries(model: dict) -> list[tuple[str, str]]:
    """(variable name, query) of every query variable of a dashboard dict."""
    out = []
    for v in model.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            out.append((v["name"], q["query"] if isinstance(q, dict) else q))
    return out
