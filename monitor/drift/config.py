"""The typed configuration of a stream monitor: :class:`MonitorConfig` bundles how a stream is windowed
(:class:`WindowConfig`), what it is compared with (:class:`ReferenceConfig`) and how its tests are calibrated
(:class:`DriftConfig`), and is built from plain dicts with unknown keys rejected.

>>> MonitorConfig.from_dict({"window": {"size": 500}, "drift": {"ert": 5000}}).window.size
500
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from monitor.drift.detectors import DriftConfig
from monitor.drift.windows import ReferenceConfig, WindowConfig
from monitor.errors import ConfigError

__all__ = ["DEFAULT_MAX_STREAMS", "MonitorConfig", "WindowConfig", "ReferenceConfig", "DriftConfig"]

# One bound for every per-stream structure (the stream monitors of monitor.drift.monitor, metric label sets in
# monitor.metrics.families), so the aggregator hits the same limit everywhere and can check it once before it
# changes any state.
DEFAULT_MAX_STREAMS = 64


def _from_dict(cls, data: dict[str, Any] | None):
    if data is None:
        return None
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return cls(**data)


@dataclass(frozen=True)
class MonitorConfig:
    """How a stream is windowed, what it is compared with and how the tests are calibrated."""

    window: WindowConfig = field(default_factory=WindowConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    concept_space: str = ""
    max_pending_windows: int = 1024  # closed summaries kept for closed_windows(); the oldest are dropped beyond
    max_streams: int = DEFAULT_MAX_STREAMS  # ConceptMonitor: bound on the number of streams tracked

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drift"]["kinds"] = list(d["drift"]["kinds"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MonitorConfig":
        """Build from plain dicts (YAML/JSON); unknown keys are rejected with the allowed ones listed."""
        data = dict(data)
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"MonitorConfig: unknown keys {unknown}; allowed: {sorted(allowed)}")
        drift = data.get("drift")
        if drift is not None and "kinds" in drift:
            drift = {**drift, "kinds": tuple(drift["kinds"])}
        return cls(
            window=_from_dict(WindowConfig, data.get("window")) or WindowConfig(),
            reference=_from_dict(ReferenceConfig, data.get("reference")) or ReferenceConfig(),
            drift=_from_dict(DriftConfig, drift) or DriftConfig(),
            **{k: data[k] for k in ("concept_space", "max_pending_windows", "max_streams") if k in data},
        )
