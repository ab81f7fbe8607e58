"""The Helm chart, rendered and linted offline by the real Helm v4 engine (helm-python-sdk): core objects checked
with kubernetes-validate (strict), custom resources against the KubeRay and prometheus-operator CRD schemas, the
values schema, and the no-copy link to dashboards/."""

from __future__ import annotations

import json
import os
import re
import shlex
import tarfile

import pytest
import yaml

from tests.helm.helpers import (
    CHART_DIR,
    CRD_FILES,
    GENERATED_DIR,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    RULES_FILE,
    VALUE_SETS,
    deep_merge,
    pod_specs,
)

MATRIX = pytest.mark.parametrize("value_set", sorted(VALUE_SETS))


def _run_args(rendered) -> list[str]:
    """The driver's argument vector after `splice-monitor` (the RayJob entrypoint, as the shell splits it)."""
    words = shlex.split(rendered.one("RayJob")["spec"]["entrypoint"])
    assert words[0] == "splice-monitor"
    return words[1:]


def _cluster(rendered) -> dict:
    return rendered.one("RayJob")["spec"]["rayClusterSpec"]


def _head(rendered) -> dict:
    return _cluster(rendered)["headGroupSpec"]["template"]["spec"]


def _driver_container(rendered) -> dict:
    """The driver is the RayJob entrypoint: it runs in the head container and sees its environment."""
    return _head(rendered)["containers"][0]


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


# --- Helm engine: lint and render ---------------------------------------------------------------------------------

@MATRIX
def test_chart_lints_without_errors_or_warnings(helm, value_set):
    report = helm.lint(CHART_DIR, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, (report["errors"], problems)


@MATRIX
def test_every_core_object_passes_strict_kubernetes_validation(render, value_set):
    import kubernetes_validate

    rendered = render(VALUE_SETS[value_set])
    core = [o for o in rendered.objects if (o["apiVersion"], o["kind"]) not in CRD_FILES]
    assert core, "nothing rendered"
    for obj in core:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")


@MATRIX
def test_every_custom_resource_matches_its_crd_schema(render, crd_validators, value_set):
    rendered = render(VALUE_SETS[value_set])
    custom = [o for o in rendered.objects if (o["apiVersion"], o["kind"]) in CRD_FILES]
    kinds = {o["kind"] for o in custom}
    assert "RayCluster" in kinds or "RayJob" in kinds
    for obj in custom:
        errors = sorted(crd_validators[(obj["apiVersion"], obj["kind"])].iter_errors(obj), key=str)
        assert not errors, "\n".join(
            f"{obj['kind']}/{obj['metadata']['name']} at {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in errors[:10])


def test_strict_crd_check_catches_a_misspelt_field(render, crd_validators):
    job = render({}).one("RayJob")
    bad = json.loads(json.dumps(job))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    errors = list(crd_validators[("ray.io/v1", "RayJob")].iter_errors(bad))
    assert any("maxReplica" in e.message for e in errors)


# --- values schema ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("bad_values", "needle"),
    [
        ("monitor:\n  workers: two\n", "/monitor/workers"),
        ("ray:\n  worker:\n    gpus: 1.5\n", "/ray/worker/gpus"),
        ("monitor:\n  lambda: 0.25\n", "lambda"),
        ("image:\n  registry: docker.io\n", "registry"),
        ("replicaCount: 3\n", "replicaCount"),
        ("source:\n  uri: redis://:hunter2@redis:6379/0\n", "/source/uri"),
        ("source:\n  password: hunter2\n", "password"),
        ("driver:\n  mode: Deployment\n", "/driver/mode"),
        ("pushgateway:\n  url: http://u:pw@gw:9091\n", "/pushgateway/url"),
        ("monitor:\n  window: one hour\n", "/monitor/window"),
        ("securityContext:\n  readOnlyRootFilesystem: false\n", "readOnlyRootFilesystem"),
        ("podSecurityContext:\n  runAsNonRoot: false\n", "runAsNonRoot"),
        ("metrics:\n  serviceMonitor:\n    interval: 30 seconds\n", "/metrics/serviceMonitor/interval"),
    ],
    ids=["wrong-type", "fractional-gpus", "unknown-nested-key", "unknown-image-key", "unknown-top-key",
         "password-in-uri", "password-key", "bad-enum", "password-in-gateway", "bad-window", "writable-root",
         "root-allowed", "bad-duration"],
)
def test_values_schema_rejects_a_bad_values_file(helm, chart, tmp_path, bad_values, needle):
    values_file = tmp_path / "bad-values.yaml"
    values_file.write_text(bad_values)
    values = helm.values_from_yaml(values_file.read_text())  # parsed the way `helm -f` parses it
    with pytest.raises(helm.HelmValuesError, match=needle) as raised:
        chart.validate_schema(values)
    assert needle in str(raised.value)
    with pytest.raises(helm.HelmValuesError):  # install/template refuse it too, not only an explicit check
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_values_schema_is_valid_draft7_and_accepts_every_value_set(chart):
    import jsonschema

    jsonschema.Draft7Validator.check_schema(chart.schema)
    for values in VALUE_SETS.values():
        chart.validate_schema(values)  # raises on failure, naming the key


def test_default_values_are_fully_described_by_the_schema(chart):
    """Every default key has a schema entry (additionalProperties=false would otherwise reject the chart itself)."""
    def walk(values, node, path):
        for key, value in values.items():
            child = node.get("properties", {}).get(key)
            assert child is not None or isinstance(node.get("additionalProperties"), dict), f"{path}.{key} not in schema"
            if isinstance(value, dict) and child and "properties" in child:
                walk(value, child, f"{path}.{key}")

    walk(chart.values, chart.schema, "values")


# Kubernetes objects the chart passes through untouched (the API server validates their insides).
FREE_FORM = {"affinity.nodeAffinity", "affinity.podAffinity", "affinity.podAntiAffinity", "env[].valueFrom",
             "egress.extra[]", "global"}


def test_schema_rejects_unknown_keys_at_every_level(chart):
    """additionalProperties is false on every object, or the object is a map with typed values; the only open
    objects are Kubernetes pass-throughs."""
    open_objects: set[str] = set()

    def walk(node, path):
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")
        if node.get("type") != "object":
            return
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            assert "type" in extra or "anyOf" in extra, f"{path}: map values must be typed"
        elif extra is not False:
            open_objects.add(path)
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}" if path else key)

    walk(chart.schema, "")
    assert open_objects, "the walk found nothing; is the schema empty?"
    unexpected = {p for p in open_objects if not any(p.endswith(f) for f in FREE_FORM)}
    assert not unexpected, f"objects that accept unknown keys: {sorted(unexpected)}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ray": {"worker": {"minReplicas": 3, "replicas": 2}}}, "minReplicas <= replicas <= maxReplicas"),
        ({"monitor": {"gpusPerWorker": 2}}, "exceeds ray.worker.gpus"),
        ({"metrics": {"podMonitor": {"enabled": True}}}, "scraped twice"),
        ({"history": {"type": "objectStore"}}, "history.objectStore.uri"),
        ({"model": {"source": "pvc"}}, "model.pvc.existingClaim"),
        ({"vocabulary": {"inline": "a\n", "existingConfigMap": "v"}}, "not both"),
        ({"source": {"uri": ""}}, "needs a source"),
        ({"ray": {"worker": {"rayStartParams": {"min-worker-port": "20000"}}}}, "set ray.ports.minWorker instead"),
        ({"driver": {"mode": "backfill"}}, "driver.mode=backfill needs a finite file source"),
        ({"monitor": {"reference": {"mode": "history"}}}, "needs monitor.reference.from and monitor.reference.to"),
        ({"monitor": {"reference": {"from": "2026-01-01"}}}, "need monitor.reference.mode=history"),
    ],
    ids=["replica-order", "gpus-per-worker", "double-scrape", "store-uri", "model-claim", "two-vocabs", "no-source",
         "unpinned-port", "backfill-of-a-stream", "history-without-period", "period-without-history"],
)
def test_inconsistent_values_fail_with_a_message_naming_them(helm, chart, values, message):
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- one source of truth for rules and dashboards -----------------------------------------------------------------

def test_chart_links_to_dashboards_instead_of_copying():
    rules_link = CHART_DIR / "files" / "splice-monitor.rules.yaml"
    dash_link = CHART_DIR / "files" / "dashboards"
    assert rules_link.is_symlink() and os.path.realpath(rules_link) == os.path.realpath(RULES_FILE)
    assert dash_link.is_symlink() and os.path.realpath(dash_link) == os.path.realpath(GENERATED_DIR)
    assert not os.path.isabs(os.readlink(rules_link)), "an absolute link breaks in any other checkout"
    assert not os.path.isabs(os.readlink(dash_link)), "an absolute link breaks in any other checkout"


def test_prometheus_rule_equals_the_dashboards_rules_file(render):
    rule = render({}).one("PrometheusRule")
    source = yaml.safe_load(RULES_FILE.read_text())
    assert rule["spec"]["groups"] == source["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_one_sidecar_configmap_per_generated_dashboard_with_identical_json(render):
    dashboards = sorted(GENERATED_DIR.glob("*.json"))
    assert dashboards, f"no generated dashboards in {GENERATED_DIR}"
    maps = [c for c in render({}).of_kind("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    by_key = {key: data for c in maps for key, data in c["data"].items()}
    assert len(maps) == len(dashboards) == len(by_key)
    for path in dashboards:
        assert by_key[path.name] == path.read_text(), f"{path.name} differs from the generated file"
        json.loads(by_key[path.name])


def test_dashboard_label_and_namespace_are_configurable(render):
    maps = render({"grafana": {"dashboards": {"label": "grafana_dashboard_v2", "labelValue": "yes",
                                              "namespace": "grafana"}}}).of_kind("ConfigMap")
    dash = [c for c in maps if c["metadata"]["labels"].get("grafana_dashboard_v2") == "yes"]
    assert dash and all(c["metadata"]["namespace"] == "grafana" for c in dash)


def test_grafana_alerting_configmap_carries_the_generated_provisioning_file(render):
    source = GENERATED_DIR / "grafana-alerting.yaml"
    cm = render(VALUE_SETS["podmonitor-grafana-alerting"]).one("ConfigMap", "-grafana-alerting")
    assert cm["metadata"]["labels"]["grafana_alert"] == "1"
    assert cm["data"]["splice-monitor-alerting.yaml"] == source.read_text()
    default_maps = [c["metadata"]["name"] for c in render({}).of_kind("ConfigMap")]
    assert default_maps and not [n for n in default_maps if n.endswith("-grafana-alerting")], "off by default"


def test_packaged_chart_embeds_the_linked_files_verbatim(chart, tmp_path):
    archive = chart.save(tmp_path)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert not any(m.issym() for m in members.values()), "links must be resolved in the package"

        def read(name: str) -> str:
            return tar.extractfile(members[f"splice-monitor/{name}"]).read().decode()

        assert read("files/splice-monitor.rules.yaml") == RULES_FILE.read_text()
        for path in GENERATED_DIR.glob("*.json"):
            assert read(f"files/dashboards/{path.name}") == path.read_text()


# --- the driver: a RayJob whose entrypoint runs on the head ---------------------------------------------------------

def test_extra_ray_start_params_override_defaults_key_by_key(render):
    cluster = _cluster(render({"ray": {"head": {"rayStartParams": {"num-cpus": "1",
                                                                  "object-store-memory": "2000000000"}}}}))
    head = cluster["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "1" and head["object-store-memory"] == "2000000000"
    assert head["dashboard-port"] == "8265", "the defaults stay"


def test_gpu_worker_group_requests_gpus_with_autoscaling_bounds_and_placement(render):
    rendered = render(VALUE_SETS["gpu-multi"])
    group = _cluster(rendered)["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (0, 1, 2)
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    args = _run_args(rendered)
    assert (_flag(args, "--workers"), _flag(args, "--gpus-per-worker")) == ("8", "0.5")
    assert "nvidia.com/gpu" not in json.dumps(_cluster(rendered)["headGroupSpec"]), "the head is a CPU pod"


def test_cpu_only_cluster_requests_no_gpu_and_tells_run_zero_gpus(render):
    rendered = render(VALUE_SETS["cpu-only"])
    assert "nvidia.com/gpu" not in json.dumps(rendered.one("RayJob"))
    assert _flag(_run_args(rendered), "--gpus-per-worker") == "0"


@MATRIX
def test_the_driver_runs_in_cluster_as_a_rayjob_never_through_ray_client(render, value_set):
    rendered = render(VALUE_SETS[value_set])
    kinds = {o["kind"] for o in rendered.objects}
    assert "RayJob" in kinds and not kinds & {"Deployment", "RayCluster", "StatefulSet"}
    args = _run_args(rendered)
    assert _flag(args, "--ray-address") == "auto", "the entrypoint joins the cluster it runs on"
    assert "ray://" not in rendered.one("RayJob")["spec"]["entrypoint"]
    assert not [p for o in rendered.of_kind("Service") for p in o["spec"]["ports"] if p["port"] == 10001]
    assert rendered.one("RayJob")["spec"]["submissionMode"] == "HTTPMode"


@MATRIX
def test_driver_command_line_carries_the_values(render, value_set):
    values = VALUE_SETS[value_set]
    merged = deep_merge(yaml.safe_load((CHART_DIR / "values.yaml").read_text()), values)
    args = _run_args(render(values))
    backfill = merged["driver"]["mode"] == "backfill"
    assert args[0] == ("backfill" if backfill else "run")
    assert _flag(args, "--source") == merged["source"]["uri"]
    if backfill:
        assert _flag(args, "--job-id") == (merged["driver"]["jobId"] or RELEASE) and "--metrics-port" not in args
    else:
        assert _flag(args, "--metrics-port") == "9400" and _flag(args, "--metrics-host") == "0.0.0.0"
    history = merged["history"]
    expected_history = history["objectStore"]["uri"] if history["type"] == "objectStore" else history["pvc"]["mountPath"]
    assert _flag(args, "--history") == expected_history
    vocab = merged["vocabulary"]
    if vocab["inline"] or vocab["existingConfigMap"]:
        assert _flag(args, "--vocab") == f"/etc/splice-monitor/vocab/{vocab['key']}"
    else:
        assert "--vocab" not in args, "the built-in vocabulary needs no flag"
    assert _flag(args, "--mean") == (merged["monitor"]["mean"] or None)
    assert _flag(args, "--cache-dir") == "/cache/splice-monitor", "the dictionary cache must be on a writable volume"
    m = merged["monitor"]
    assert _flag(args, "--window") == m["window"]
    assert _flag(args, "--ert") == (str(m["ert"]) if m["ert"] else None)
    assert _flag(args, "--reference") == m["reference"]["mode"]
    assert _flag(args, "--reference-images") == str(m["reference"]["images"])
    assert _flag(args, "--reference-from") == (m["reference"]["from"] or None)
    assert _flag(args, "--reference-store") == (m["reference"]["store"] or None)
    assert _flag(args, "--pushgateway") == (merged["pushgateway"]["url"] or None)
    assert _flag(args, "--dead-letter") == (merged["source"]["deadLetter"] or None)


@MATRIX
def test_the_real_parser_accepts_the_chart_command_line(render, value_set):
    """Cross-check against the real `run`/`backfill` parsers so a renamed flag breaks here, not in the cluster."""
    from monitor.cli import main as cli

    parsed = cli.build_parser().parse_args(_run_args(render(VALUE_SETS[value_set])))
    assert parsed.command in ("run", "backfill")


def test_backfill_mode_runs_the_resumable_backfill_and_serves_no_scrape_target(render):
    rendered = render(VALUE_SETS["backfill"])
    job = rendered.one("RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["activeDeadlineSeconds"] == 86400
    assert job["metadata"]["labels"]["splice-monitor/mode"] == "backfill"
    args = _run_args(rendered)
    assert args[:3] == ["backfill", "--job-id", "frames-2026-03"]
    assert _flag(args, "--pushgateway") == "http://prometheus-pushgateway.monitoring:9091"
    mounts = {m["name"]: m for m in _driver_container(rendered)["volumeMounts"]}
    assert mounts["source"] == {"name": "source", "mountPath": "/data", "readOnly": True}
    kinds = {o["kind"] for o in rendered.objects}
    assert not kinds & {"ServiceMonitor"} and not rendered.of_kind("Service"), "a backfill serves no /metrics"
    assert not [p for p in rendered.of_kind("Pod")], "helm test checks a metrics endpoint a backfill has not"


def test_stream_mode_scrapes_the_head_through_the_metrics_service(render):
    rendered = render({})
    service = rendered.one("Service", "-metrics")
    head = _cluster(rendered)["headGroupSpec"]["template"]
    assert service["spec"]["selector"].items() <= head["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert ports[service["spec"]["ports"][0]["targetPort"]] == 9400


def test_each_aggregator_port_is_served_listed_scraped_and_allowed(render):
    """--aggregators 3: the entrypoint says so, the head exposes metricsPort..metricsPort+2, the Service and the
    ServiceMonitor/PodMonitor list all three, and the NetworkPolicy lets Prometheus reach the range."""
    rendered = render({"monitor": {"aggregators": 3}})
    assert _flag(_run_args(rendered), "--aggregators") == "3"
    head = _cluster(rendered)["headGroupSpec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    service = rendered.one("Service", "-metrics")
    assert sorted(ports[p["targetPort"]] for p in service["spec"]["ports"]) == [9400, 9401, 9402]
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [9400, 9401, 9402]
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    endpoints = [e["port"] for e in rendered.one("ServiceMonitor")["spec"]["endpoints"]]
    assert sorted(endpoints) == sorted(service_ports) and len(endpoints) == 3
    with_pods = render({"monitor": {"aggregators": 3},
                        "metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": False}}})
    pod_endpoints = [e["port"] for o in with_pods.of_kind("PodMonitor") for e in o["spec"]["podMetricsEndpoints"]
                     if e["port"] == "monitor-metrics" or e["port"].startswith("agg-metrics-")]
    assert sorted(ports[p] for p in pod_endpoints) == [9400, 9401, 9402]
    policy = rendered.one("NetworkPolicy", "-ray")
    scrape = [r for r in policy["spec"]["ingress"] if {"port": 9400, "endPort": 9402} in r["ports"]]
    assert len(scrape) == 2  # from the release's own pods and from Prometheus
    one = render({})
    assert _flag(_run_args(one), "--aggregators") == "1"
    assert [p["port"] for p in one.one("Service", "-metrics")["spec"]["ports"]] == [9400]


@MATRIX
def test_head_and_workers_have_liveness_and_readiness_probes(render, value_set):
    rendered = render(VALUE_SETS[value_set])
    cluster = _cluster(rendered)
    agent = cluster["headGroupSpec"]["rayStartParams"]["dashboard-agent-listen-port"]
    dashboard = cluster["headGroupSpec"]["rayStartParams"]["dashboard-port"]
    raylet = f"wget -T 2 -q -O- http://localhost:{agent}/api/local_raylet_healthz | grep success"
    gcs = f"wget -T 2 -q -O- http://localhost:{dashboard}/api/gcs_healthz | grep success"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["readinessProbe"]["exec"]["command"] == ["sh", "-c", f"{raylet} && {gcs}"]
    assert head["livenessProbe"]["exec"]["command"] == ["sh", "-c", raylet]
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        for probe in ("livenessProbe", "readinessProbe"):
            assert worker[probe]["exec"]["command"] == ["sh", "-c", raylet], probe
    assert head["livenessProbe"]["failureThreshold"] * head["livenessProbe"]["periodSeconds"] >= 300, \
        "a busy head (model load, GC pause) must not be killed within minutes"


def test_the_image_has_what_the_probes_call():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"apt-get install[^\n]*\bwget\b", dockerfile), "the probes call wget"


def test_helm_test_checks_health_and_metrics_through_the_service(render):
    rendered = render({})
    (pod,) = rendered.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    script, url = container["command"][2], container["command"][3]
    service = rendered.one("Service", "-metrics")
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert '"/healthz"' in script and '"/metrics"' in script and "splice_build_info{" in script
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["labels"].items() >= {"app.kubernetes.io/instance": RELEASE}.items()


def test_helm_test_script_passes_against_the_real_exporter_and_fails_without_build_info():
    """Run the test pod's own script against a real exporter on loopback: it passes with splice_build_info and
    fails (non-zero) against an endpoint that lacks it."""
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry

    from monitor.metrics.exporter import MetricsExporter
    from monitor.metrics.runtime import BuildInfo

    pod = Rendered_pod()
    script = pod["spec"]["containers"][0]["command"][2]
    good = CollectorRegistry()
    BuildInfo(encoder="ViT-B-32", concept_space="s", registry=good)
    with MetricsExporter(good, port=0) as exp:
        ok = subprocess.run([sys.executable, "-c", script, exp.url.removesuffix("/metrics")], capture_output=True,
                            text=True, timeout=60)
    assert ok.returncode == 0 and "metrics endpoint OK" in ok.stdout, ok.stderr
    with MetricsExporter(CollectorRegistry(), port=0) as exp:
        bad = subprocess.run([sys.executable, "-c", script, exp.url.removesuffix("/metrics")], capture_output=True,
                             text=True, timeout=60)
    assert bad.returncode != 0 and "splice_build_info" in bad.stderr


def Rendered_pod():  # noqa: N802 - one render without the session fixture, for the test above
    import helm_python

    from tests.helm.helpers import Rendered

    with helm_python.Chart.load(CHART_DIR) as chart:
        (pod,) = Rendered(chart.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True)).of_kind("Pod")
    return pod


# --- secrets, storage, model and vocabulary -----------------------------------------------------------------------

def test_redis_password_reaches_only_the_driver_environment_from_a_secret(render):
    rendered = render(VALUE_SETS["redis-password"])
    assert not rendered.of_kind("Secret")
    env = {e["name"]: e for e in _driver_container(rendered)["env"]}
    assert env["SPLICE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    entrypoint = rendered.one("RayJob")["spec"]["entrypoint"]
    args = _run_args(rendered)
    assert _flag(args, "--source") == "rediss://monitor@redis.data.svc:6380/0?stream=frames&group=splice"
    assert "SPLICE_REDIS_PASSWORD" not in entrypoint and "$(" not in entrypoint, "no secret on the command line"
    assert not any("SPLICE_REDIS_PASSWORD" in json.dumps(e) for e in env.values() if "value" in e)
    for label, pod in pod_specs(rendered.one("RayJob"))[1:]:
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert "secretKeyRef" not in json.dumps(container), f"{label}: the stream password is the driver's alone"


def test_the_env_name_the_chart_sets_is_the_one_the_monitor_reads():
    from workers.redisconn import PASSWORD_ENV

    assert PASSWORD_ENV[0] == "SPLICE_REDIS_PASSWORD"


def test_object_store_history_uses_the_uri_and_credentials_secret_and_no_pvc(render):
    rendered = render(VALUE_SETS["object-store"])
    assert not rendered.of_kind("PersistentVolumeClaim")
    head = _head(rendered)["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "splice-s3"}}], "the aggregator on the head writes history"
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["AWS_ENDPOINT_URL"] == "http://minio.minio.svc:9000" and env["AWS_REGION"] == "eu-west-1"
    assert _flag(_run_args(rendered), "--history") == "s3://splice/history"
    workers = [p["containers"][0] for _, p in pod_specs(rendered.one("RayJob"))[1:]]
    assert workers and all("envFrom" not in c for c in workers), "credentials only where they are used"


def test_pvc_history_is_claimed_kept_on_uninstall_and_mounted_where_the_aggregator_runs(render):
    rendered = render({})
    claim = rendered.one("PersistentVolumeClaim", "-history")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    mounts = {m["name"]: m["mountPath"] for m in _head(rendered)["containers"][0]["volumeMounts"]}
    assert mounts["history"] == _flag(_run_args(rendered), "--history")
    volumes = {v["name"]: v for v in _head(rendered)["volumes"]}
    assert volumes["history"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_model_and_vocabulary_reach_the_worker_pods_that_load_them(render):
    rendered = render(VALUE_SETS["object-store"])
    vocab_cm = rendered.one("ConfigMap", "-vocab")
    assert vocab_cm["data"]["vocab.txt"] == "snow\nbeach\nfire truck\n"
    (head_label, head), *workers = pod_specs(rendered.one("RayJob"))
    assert workers
    assert not {"model", "vocab"} & {v["name"] for v in head["volumes"]}, f"{head_label} does not load the model"
    for label, pod in workers:
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "clip-weights", "readOnly": True}, label
        assert volumes["vocab"]["configMap"]["name"] == vocab_cm["metadata"]["name"], label
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["model"]["mountPath"] == "/models" and mounts["model"]["subPath"] == "open_clip", label
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["HF_HUB_OFFLINE"] == "1", f"{label}: local weights must not reach for the hub"


def test_model_init_container_fills_the_shared_volume_before_the_monitor_starts(render):
    rendered = render(VALUE_SETS["podmonitor-grafana-alerting"])
    for label, pod in pod_specs(rendered.one("RayJob"))[1:]:
        init = {c["name"]: c for c in pod.get("initContainers", [])}
        assert "fetch-model" in init, label
        assert {"name": "model", "mountPath": "/models"} in init["fetch-model"]["volumeMounts"], label
        assert {v["name"]: v for v in pod["volumes"]}["model"] == {"name": "model", "emptyDir": {}}, label


# --- security -----------------------------------------------------------------------------------------------------

@MATRIX
def test_every_container_is_non_root_read_only_without_capabilities(render, value_set):
    rendered = render(VALUE_SETS[value_set])
    pods = [p for obj in rendered.objects for p in pod_specs(obj)]
    pods += [(f"Pod/{o['metadata']['name']}", o["spec"]) for o in rendered.of_kind("Pod")]
    assert pods
    for label, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, label
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, label
        assert pod["automountServiceAccountToken"] is False, label
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"], label
        for container in pod.get("initContainers", []) + pod["containers"]:
            ctx = container["securityContext"]
            where = f"{label} container {container['name']}"
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["runAsNonRoot"] is True and ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
    for obj in rendered.of_kind("RayJob"):
        assert obj["spec"]["rayClusterSpec"]["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] is True


def test_only_the_autoscaler_container_gets_a_kubernetes_api_token(render):
    cluster = _cluster(render({}))
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "serviceAccountName" not in head, "KubeRay creates and binds the autoscaler's account when none is named"
    token_volume = {v["name"]: v for v in head["volumes"]}["kube-api-access"]
    assert {"path": "token", "expirationSeconds": 3607} in [
        s.get("serviceAccountToken") for s in token_volume["projected"]["sources"]]
    api_mount = {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                 "readOnly": True}
    assert api_mount in cluster["autoscalerOptions"]["volumeMounts"]
    assert all(m["name"] != "kube-api-access" for m in head["containers"][0]["volumeMounts"])

    fixed = _cluster(render({"ray": {"enableInTreeAutoscaling": False}}))
    head = fixed["headGroupSpec"]["template"]["spec"]
    assert "autoscalerOptions" not in fixed and head["serviceAccountName"] == "sm-splice-monitor"
    assert all(v["name"] != "kube-api-access" for v in head["volumes"])


def test_image_pull_secrets_reach_every_pod(render):
    rendered = render(VALUE_SETS["gpu-multi"])
    pods = [p for obj in rendered.objects for p in pod_specs(obj)] + [("test", o["spec"]) for o in
                                                                       rendered.of_kind("Pod")]
    assert len(pods) == 3 and all(p["imagePullSecrets"] == [{"name": "regcred"}] for _, p in pods)


@MATRIX
def test_ray_token_authentication_is_on_with_the_token_from_a_secret(render, value_set):
    values = VALUE_SETS[value_set]
    auth = _cluster(render(values))["authOptions"]
    secret = values.get("ray", {}).get("auth", {}).get("existingSecret")
    assert auth == ({"mode": "token", "secretName": secret} if secret else {"mode": "token"})
    assert "authOptions" not in _cluster(render({"ray": {"auth": {"enabled": False}}}))


def _policies(rendered) -> dict[str, dict]:
    return {p["metadata"]["name"].removeprefix(f"{RELEASE}-splice-monitor-"): p
            for p in rendered.of_kind("NetworkPolicy")}


def _peers_are_namespace_and_pod_selectors(rules, direction):
    for rule in rules:
        for peer in rule.get(direction, []):
            if "ipBlock" in peer:
                continue
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"]["matchLabels"].keys() == {"kubernetes.io/metadata.name"}, peer
                assert peer["podSelector"]["matchLabels"], f"{peer}: a namespace alone admits every pod in it"
            else:
                assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE, peer


@MATRIX
def test_network_policies_admit_named_peers_only_and_limit_egress(render, value_set):
    rendered = render(VALUE_SETS[value_set])
    if not VALUE_SETS[value_set].get("networkPolicy", {}).get("enabled", True):
        assert not rendered.of_kind("NetworkPolicy")
        return
    policies = _policies(rendered)
    assert set(policies) == {"ray", "head"}
    ray, head = policies["ray"]["spec"], policies["head"]["spec"]
    assert ray["policyTypes"] == ["Ingress", "Egress"] and head["policyTypes"] == ["Egress"]
    _peers_are_namespace_and_pod_selectors(ray["ingress"], "from")
    _peers_are_namespace_and_pod_selectors(ray["egress"] + head["egress"], "to")
    # the dashboard / job API: the release's own pods and the KubeRay operator, nobody else
    dash = [r for r in ray["ingress"] if {"port": 8265} in r["ports"]]
    outside = [p for r in dash for p in r["from"] if "namespaceSelector" in p]
    assert outside == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    scrape = [r for r in ray["ingress"] if {"port": 9400} in r["ports"] and
              any("namespaceSelector" in p for p in r["from"])]
    assert scrape[0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    # egress: every rule names its ports; only DNS, Ray, and what the values need
    for rule in ray["egress"] + head["egress"]:
        assert rule.get("ports"), f"an egress rule without ports opens everything: {rule}"
    dns = [r for r in ray["egress"] if {"port": 53, "protocol": "UDP"} in r["ports"]]
    assert dns and dns[0]["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}


def test_egress_to_redis_pushgateway_and_object_store_only_from_the_head_and_only_when_used(render):
    merged = render(VALUE_SETS["redis-password"])
    head = _policies(merged)["head"]["spec"]["egress"]
    redis = [r for r in head if {"port": 6380} in r["ports"]]
    assert redis and redis[0]["to"][0] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
                                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis-ha"}}}
    ray = _policies(merged)["ray"]["spec"]["egress"]
    to_data = [r for r in ray for peer in r.get("to", [])
               if peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "data"]
    assert not to_data, "workers never talk to Redis"
    backfill = _policies(render(VALUE_SETS["backfill"]))["head"]["spec"]["egress"]
    assert not [r for r in backfill if {"port": 6379} in r["ports"]], "a Parquet backfill needs no Redis"
    assert [r for r in backfill if {"port": 9091} in r["ports"]], "the Pushgateway push"
    store = _policies(render({"history": {"type": "objectStore", "objectStore": {"uri": "s3://b/h"}},
                              "networkPolicy": {"egress": {"objectStore": {"cidrs": ["52.216.0.0/15"],
                                                                           "ports": [443]}}}}))
    rules = [r for r in store["head"]["spec"]["egress"] if r.get("to", [{}])[0].get("ipBlock")]
    assert {"ipBlock": {"cidr": "52.216.0.0/15"}} in rules[0]["to"]


def test_no_secret_objects_or_inline_credentials_are_rendered(render):
    for name, values in VALUE_SETS.items():
        rendered = render(values)
        assert not rendered.of_kind("Secret"), name
        text = yaml.safe_dump_all(rendered.objects)
        assert "hunter2" not in text and "AWS_SECRET_ACCESS_KEY:" not in text, name


@MATRIX
def test_every_namespaced_object_names_its_namespace(render, value_set):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition"}
    values = VALUE_SETS[value_set]
    for obj in render(values).objects:
        if obj["kind"] in cluster_scoped:
            continue
        expected = NAMESPACE
        if obj["kind"] == "ConfigMap" and "grafana_dashboard" in obj["metadata"]["labels"]:
            expected = values.get("grafana", {}).get("dashboards", {}).get("namespace") or NAMESPACE
        assert obj["metadata"].get("namespace") == expected, f"{obj['kind']}/{obj['metadata']['name']}"


def test_chart_metadata_names_maintainers_and_icon():
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
    assert chart["icon"].startswith("https://")


def test_chart_works_as_a_subchart_with_global_values(chart, render):
    values = {"global": {"imageRegistry": "registry.example.com", "anything": {"nested": True}}}
    chart.validate_schema(values)
    assert render(values).one("RayJob")


# --- monitoring objects and notes ---------------------------------------------------------------------------------

def test_monitors_follow_the_release_label_and_select_the_metrics_endpoint(render):
    rendered = render({"monitoring": {"release": "prom-stack"}})
    service = rendered.one("Service", "-metrics")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    head = _cluster(rendered)["headGroupSpec"]["template"]
    assert service["spec"]["selector"].items() <= head["metadata"]["labels"].items()
    head_ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert head_ports[service["spec"]["ports"][0]["targetPort"]] == 9400
    assert rendered.one("PodMonitor", "-ray")["metadata"]["labels"]["release"] == "prom-stack"
    assert "release" not in render({"monitoring": {"release": ""}}).one("ServiceMonitor")["metadata"]["labels"]


def test_monitors_disabled_renders_no_operator_objects(render):
    rendered = render(VALUE_SETS["monitors-disabled"])
    kinds = {o["kind"] for o in rendered.objects}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy", "ServiceAccount"}
    assert not [c for c in rendered.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    assert rendered.one("Service", "-metrics"), "the exporter stays reachable for another scraper"


def test_notes_tell_the_user_where_metrics_dashboards_and_alerts_are(render):
    notes = render({}).notes
    for needle in ("port-forward svc/sm-splice-monitor-metrics 9400", "ServiceMonitor sm-splice-monitor",
                   "PrometheusRule sm-splice-monitor", "grafana_dashboard=1", "Prometheus > Alerts",
                   "helm test sm", "rayjob sm-splice-monitor", "Ray token authentication is on"):
        assert needle in notes, needle


# --- the documented examples run as written -----------------------------------------------------------------------

def _fenced_blocks(path, language):
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)


def test_the_values_file_in_the_deployment_guide_renders_and_validates(render, request):
    import kubernetes_validate

    try:
        crd_validators = request.getfixturevalue("crd_validators")
    except pytest.skip.Exception:
        crd_validators = None  # core objects are still checked

    block = next(b for b in _fenced_blocks(REPO / "docs" / "deployment.md", "yaml") if "# values-prod.yaml" in b)
    rendered = render(yaml.safe_load(block))
    for obj in rendered.objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_FILES:
            assert crd_validators is None or not list(crd_validators[key].iter_errors(obj)), obj["kind"]
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    args = _run_args(rendered)
    assert _flag(args, "--pretrained") == "/models/vit-b-32-openai.pt"
    assert _flag(args, "--mean") == "/models/mean-frames.npy"


def test_the_install_command_in_the_chart_readme_renders(helm, render):
    block = _fenced_blocks(CHART_DIR / "README.md", "bash")[0]
    sets = [shlex.split(line.strip().rstrip("\\"))[-1] for line in block.splitlines() if "--set " in line]
    assert sets
    values: dict = {}
    for expression in sets:
        values = deep_merge(values, helm.parse_set_string(expression))
    rendered = render(values)
    env = {e["name"]: e for e in _driver_container(rendered)["env"]}
    assert env["SPLICE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    assert _flag(_run_args(rendered), "--source") == "redis://redis-master.data:6379/0?stream=frames&group=splice"


def test_names_and_labels_fit_kubernetes_limits_for_the_longest_release_name(chart):
    from tests.helm.helpers import Rendered

    long_name = "a" * 20 + "-release-name-at-helms-limit-" + "b" * 4
    assert len(long_name) == 53  # Helm's maximum release name
    rendered = Rendered(chart.render({}, name=long_name, namespace=NAMESPACE))
    dns_label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for obj in rendered.objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and dns_label.match(name), f"{obj['kind']} name {name!r}"
        for key, value in obj["metadata"].get("labels", {}).items():
            assert len(value) <= 63, f"{obj['kind']}/{name} label {key}={value!r}"
    cluster = rendered.one("RayJob")["metadata"]["name"]
    assert len(cluster) <= 40, "KubeRay appends group names and suffixes to the cluster name"
