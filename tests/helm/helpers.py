"""Constants and helpers for the chart tests: paths, the value-set matrix, a Helm-style deep merge, the parsed form of
a render, and pod-spec lookups. Plain module, imported by tests and by tests/helm/conftest.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "splice-monitor"
RULES_FILE = REPO / "dashboards" / "rules" / "splice-monitor.rules.yaml"
GENERATED_DIR = REPO / "dashboards" / "generated"
CRDS_DIR = REPO.parent / "shared" / "crds"
RELEASE = "sm"
NAMESPACE = "monitoring-test"
# Recent Kubernetes whose strict schemas kubernetes-validate ships; the chart's kubeVersion floor is older.
KUBE_VERSION = "1.35.0"

CRD_FILES = {
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}

# The matrix every rendered object is validated under: the deployments users actually choose between.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cpu-only": {
        "ray": {"worker": {"groupName": "cpu", "gpus": 0, "tolerations": [],
                           "resources": {"requests": {"cpu": "4", "memory": "8Gi"},
                                         "limits": {"cpu": "4", "memory": "8Gi"}}}},
    },
    "gpu-multi": {
        "imagePullSecrets": [{"name": "regcred"}],
        "monitor": {"workers": 8, "gpusPerWorker": 0.5},
        "ray": {"worker": {"gpus": 4, "replicas": 1, "minReplicas": 0, "maxReplicas": 2,
                           "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}},
    },
    "redis-password": {
        "source": {"uri": "rediss://monitor@redis.data.svc:6380/0?stream=frames&group=splice",
                   "passwordSecret": {"name": "redis-auth"},
                   "deadLetter": "redis://redis.data.svc:6379/1?stream=deadletters"},
        "networkPolicy": {"egress": {"redis": {"namespace": "data", "podLabels": {"app.kubernetes.io/name": "redis-ha"},
                                               "port": 6380}}},
    },
    "history-reference": {
        "monitor": {"window": "30m", "ert": 200,
                    "reference": {"mode": "history", "from": "2026-01-01T00:00:00Z", "to": "2026-01-08T00:00:00Z",
                                  "store": "s3://splice/reference"}},
        "ray": {"auth": {"existingSecret": "ray-token"}},
        "global": {"imageRegistry": "registry.example.com", "storageClass": "fast"},
    },
    "object-store": {
        "history": {"type": "objectStore",
                    "objectStore": {"uri": "s3://splice/history", "endpoint": "http://minio.minio.svc:9000",
                                    "region": "eu-west-1", "credentialsSecret": "splice-s3"}},
        "model": {"source": "pvc", "pvc": {"existingClaim": "clip-weights", "subPath": "open_clip"}},
        "monitor": {"pretrained": "/models/ViT-B-32.pt", "mean": "/models/mean-cam7.npy"},
        "vocabulary": {"inline": "snow\nbeach\nfire truck\n"},
        "scratch": {"cacheExistingClaim": "splice-cache"},
    },
    "monitors-disabled": {
        "metrics": {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": False},
                    "rayPodMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
        "grafana": {"dashboards": {"enabled": False}},
        "networkPolicy": {"enabled": False},
        "serviceAccount": {"create": False},
    },
    "podmonitor-grafana-alerting": {
        "metrics": {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": True}},
        "monitoring": {"release": "prom", "labels": {"team": "vision"}},
        "grafana": {"alerting": {"enabled": True}, "dashboards": {"namespace": "grafana"}},
        "model": {"source": "initContainer",
                  "initContainer": {"command": ["sh", "-c"], "args": ["cp -r /seed/. \"$MODEL_DIR\""]}},
        "vocabulary": {"existingConfigMap": "my-vocab", "key": "concepts.txt"},
    },
    "backfill": {
        "driver": {"mode": "backfill", "jobId": "frames-2026-03", "rayJob": {"activeDeadlineSeconds": 86400}},
        "source": {"uri": "parquet:///data/frames-2026-03.parquet", "pvc": {"existingClaim": "archive"}},
        "pushgateway": {"url": "http://prometheus-pushgateway.monitoring:9091"},
        "vocabulary": {"inline": "snow\nrain\n"},
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values merge the way Helm coalesces them: maps merge, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Rendered:
    """Parsed output of one render: every object, plus lookups by kind and name."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = ""
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        names = [o["metadata"]["name"] for o in found]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {names}"
        return found[0]


def strict_schema(schema: Any) -> Any:
    """Make a CRD's structural schema reject unknown fields, as `kubectl apply --validate=strict` does; Python's re
    wants inline flags at the very start of a pattern."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if isinstance(out.get("pattern"), str) and out["pattern"].startswith("^(?i)"):
        out["pattern"] = "(?i)^" + out["pattern"][len("^(?i)"):]
    return out


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod template in an object, labelled for error messages."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "Deployment":
        return [(f"{kind}/{name}", obj["spec"]["template"]["spec"])]
    cluster = obj["spec"]["rayClusterSpec"] if kind == "RayJob" else None
    if cluster is None:
        return []
    specs = [(f"{kind}/{name} head", cluster["headGroupSpec"]["template"]["spec"])]
    specs += [(f"{kind}/{name} worker {g['groupName']}", g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return specs
