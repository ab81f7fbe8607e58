"""Shared fixtures for the chart tests: the real Helm v4 engine (helm-python-sdk), the value-set matrix, and the CRD
schemas from ../shared/crds that custom resources are checked against."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helm.helpers import CHART_DIR, CRD_FILES, CRDS_DIR, NAMESPACE, RELEASE, Rendered, strict_schema

@pytest.fixture(scope="session")
def helm():
    helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (the Helm v4 engine) is not installed")
    helm_python.disable_logging()
    return helm_python


@pytest.fixture(scope="session")
def chart(helm):
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    cache: dict[str, Rendered] = {}

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        key = yaml.safe_dump(values or {}, sort_keys=True)
        if key not in cache:
            cache[key] = Rendered(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True))
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def crd_validators():
    if not CRDS_DIR.is_dir():
        pytest.skip(f"CRD schemas not found at {CRDS_DIR} (expected <repo>/../shared/crds); custom resources unchecked")
    import jsonschema

    validators = {}
    for (api_version, kind), filename in CRD_FILES.items():
        # libyaml when present: the KubeRay CRDs are megabytes of YAML
        crd = yaml.load((CRDS_DIR / filename).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            if f"{group}/{version['name']}" == api_version:
                schema = strict_schema(version["schema"]["openAPIV3Schema"])
                validators[(api_version, kind)] = jsonschema.Draft7Validator(schema)
    missing = set(CRD_FILES) - set(validators)
    assert not missing, f"CRD files in {CRDS_DIR} lack versions {missing}"
    return validators

