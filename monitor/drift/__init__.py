"""Drift detection over sparse concept codes: streaming statistics, windows and references, per-concept tests,
the stream monitor, and its state save/load.

>>> from monitor.drift import ConceptMonitor, MonitorConfig, DriftConfig, WindowConfig, ReferenceConfig
>>> MonitorConfig(drift=DriftConfig(ert=5000)).drift.ert
5000
"""

from monitor.drift.detectors import AlarmBook, ConceptDriftTest, DriftConfig, StepResult
from monitor.drift.monitor import ConceptMonitor, MonitorConfig, StreamMonitor, StreamProgress, StreamStatus
from monitor.drift.stats import ConceptMoments, Moments, WindowStats
from monitor.drift.windows import ReferenceConfig, WindowConfig

__all__ = [
    "ConceptMonitor",
    "StreamMonitor",
    "StreamStatus",
    "StreamProgress",
    "MonitorConfig",
    "WindowConfig",
    "ReferenceConfig",
    "DriftConfig",
    "ConceptDriftTest",
    "AlarmBook",
    "StepResult",
    "Moments",
    "ConceptMoments",
    "WindowStats",
]
