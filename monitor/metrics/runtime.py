"""What a scrape says about the exporting process itself: ``splice_build_info`` (version, encoder, concept space)
and the standard ``process_*`` / ``python_*`` collectors of client_python, registered on an injected registry.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> info = BuildInfo(encoder="minilm", concept_space="c3-0123abcd", registry=reg)
>>> reg.get_sample_value("splice_build_info", {"version": info.version, "encoder": "minilm",
...                                            "concept_space": "c3-0123abcd"})
1.0
"""

from __future__ import annotations

from typing import Iterable, Iterator

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from monitor.errors import ConfigError

__all__ = ["BUILD_INFO", "BuildInfo", "package_version", "register_runtime_collectors"]

BUILD_INFO = "splice_build_info"


def package_version() -> str:
    """The installed splice-monitor version, or "unknown" when running from a tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splice-monitor")
    except PackageNotFoundError:
        return "unknown"


class BuildInfo:
    """``splice_build_info{version, encoder, concept_space} 1``: the info-metric idiom, one constant series that
    other queries join on (``* on (instance) group_left (encoder) splice_build_info``). ``concept_space`` is the
    dictionary's identity (``monitor.concepts.dictionary.concept_space_id``)."""

    def __init__(self, *, encoder: str, concept_space: str, version: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        for name, value in (("encoder", encoder), ("concept_space", concept_space)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"build info {name} must be a non-empty string, got {value!r}")
        self.version = version or package_version()
        self.encoder = encoder
        self.concept_space = concept_space
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(BUILD_INFO, "splice-monitor build: version, encoder and concept space",
                                  labels=("version", "encoder", "concept_space"))]

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily(BUILD_INFO, "splice-monitor build: version, encoder and concept space",
                                labels=("version", "encoder", "concept_space"))
        fam.add_metric([self.version, self.encoder, self.concept_space], 1.0)
        yield fam


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """client_python's process (CPU, memory, open fds, start time), platform (python_info) and garbage-collector
    collectors on ``registry``; the global REGISTRY has them already, a private registry does not."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
