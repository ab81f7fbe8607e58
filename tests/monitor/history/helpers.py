"""Shared builders of the history tests: a small concept space, windows and alarms with known contents."""

from __future__ import annotations

import numpy as np

from monitor.history.store import parse_time
from monitor.records import Alarm, WindowSummary

NAMES = [f"concept{i}" for i in range(40)]
SPACE = "test-space-v1"
T0 = parse_time("2026-03-01")


def make_window(stream: str, start: float, rng: np.random.Generator, c: int = len(NAMES), n: int = 50) -> WindowSummary:
    presence = rng.binomial(n, rng.uniform(0, 0.3, c) * (rng.random(c) < 0.5))
    weight_sum = presence * rng.uniform(0.05, 0.5, c)
    return WindowSummary(
        stream=stream,
        start=start,
        end=start + 3600.0,
        n_images=n,
        weight_sum=weight_sum,
        weight_sq_sum=weight_sum * 0.3,
        presence=presence.astype(np.int64),
        fidelity_sum=0.8 * n,
        fidelity_sq_sum=0.65 * n,
        fidelity_min=0.5,
        fidelity_max=0.95,
        l0_sum=12.0 * n,
        l0_sq_sum=150.0 * n,
        concept_space=SPACE,
    )


def assert_same_window(a: WindowSummary, b: WindowSummary) -> None:
    assert (a.stream, a.start, a.end, a.n_images) == (b.stream, b.start, b.end, b.n_images)
    np.testing.assert_array_equal(a.presence, b.presence)
    np.testing.assert_array_equal(a.weight_sum, b.weight_sum)
    np.testing.assert_array_equal(a.weight_sq_sum, b.weight_sq_sum)
    for f in ("fidelity_sum", "fidelity_sq_sum", "fidelity_min", "fidelity_max", "l0_sum", "l0_sq_sum"):
        assert getattr(a, f) == getattr(b, f), f


def make_alarm(stream: str, start: float, concept: str = "concept3") -> Alarm:
    return Alarm(
        stream=stream, kind="prevalence", direction="up", concept_index=3, concept=concept,
        reference_prevalence=0.02, current_prevalence=0.19, reference_mean=0.01, current_mean=0.08,
        effect_size=0.6, score=12.0, p_value=1e-9, window_start=start, window_end=start + 3600,
    )
