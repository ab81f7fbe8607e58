"""What an alarm reports at a sequential step: the evidence of :mod:`monitor.drift.sequential` joined with the
reference-vs-recent figures and gates of :func:`monitor.drift.detectors.report_and_gates`. On a quiet batch the
alarm book reads only its active alarms and the firing hypotheses, so the narrow forms here build just those
entries (the full (4, concepts) arrays cost more than the rest of the step)."""

from __future__ import annotations

import numpy as np

from monitor.drift.detectors import HYPOTHESES, DriftConfig, StepResult, report_and_gates
from monitor.drift.sequential import SequentialConceptTest
from monitor.drift.stats import ConceptMoments
from monitor.records import Alarm

__all__ = ["AtFew", "NarrowResult", "ColumnMoments", "report_at", "step_result"]


class AtFew:
    """A read-only stand-in for a dense float array that is zero except at a few entries: indexing with a concept
    (``[j]``) or a hypothesis and concept (``[h, j]``) returns the stored value or 0.0. The alarm book reads a
    quiet batch's result at a handful of entries only, and the dense (4, concepts) and (concepts,) zeros it used to
    get cost more to allocate and fill than everything it read from them."""

    __slots__ = ("shape", "_at")

    def __init__(self, shape: tuple[int, ...], keys, values: np.ndarray) -> None:
        self.shape = shape
        self._at = dict(zip(keys, np.asarray(values, dtype=np.float64).tolist()))

    def __getitem__(self, key) -> float:
        key = tuple(int(x) for x in key) if isinstance(key, tuple) else int(key)
        return self._at.get(key, 0.0)


class NarrowResult:
    """A sequential result with evidence filled in at the active alarms and at the firing hypotheses (``fh``,
    ``fj``) only, and ``fire`` true there: the places the alarm book reads (the full (4, concepts) logs cost more
    than the rest of the step)."""

    __slots__ = ("evidence", "tested", "fire", "threshold", "n_hypotheses")

    def __init__(self, res, test: SequentialConceptTest, active: list[Alarm], fh: np.ndarray, fj: np.ndarray
                 ) -> None:
        self.tested, self.threshold, self.n_hypotheses = res.tested, res.threshold, res.n_hypotheses
        self.fire = np.zeros(res.tested.shape, dtype=bool)
        self.fire[fh, fj] = True
        keys = [(HYPOTHESES.index((a.kind, a.direction)), a.concept_index) for a in active if a.concept_index >= 0]
        h = np.concatenate([np.array([k[0] for k in keys], dtype=np.int64), fh])
        j = np.concatenate([np.array([k[1] for k in keys], dtype=np.int64), fj])
        self.evidence = AtFew(res.tested.shape, zip(h.tolist(), j.tolist()),
                              test.evidence_at(h, j) if len(h) else np.zeros(0))


class ColumnMoments:
    """The moments of a few concepts (``cols``), summed over some ConceptMoments: what report_and_gates reads."""

    def __init__(self, parts: list[ConceptMoments], cols: np.ndarray) -> None:
        self.n_images = sum(p.n_images for p in parts)
        self.presence = sum((p.presence[cols] for p in parts), np.zeros(len(cols), dtype=np.int64))
        self.weight_sum = sum((p.weight_sum[cols] for p in parts), np.zeros(len(cols)))
        self.weight_sq_sum = sum((p.weight_sq_sum[cols] for p in parts), np.zeros(len(cols)))


def report_at(ref: ColumnMoments, cur: ColumnMoments, cols: np.ndarray, cfg: DriftConfig, n_concepts: int
              ) -> tuple:
    """``report_and_gates`` of the reference and recent moments at ``cols`` (:class:`ColumnMoments` over those
    columns), zeros elsewhere (a quiet batch: the alarm book reads the active alarms' concepts and nothing else) --
    the same figures at those columns, as :class:`AtFew` (the gates stay a dense mask: the book scans it)."""
    got = report_and_gates(ref, cur, cfg)
    keys = cols.tolist()
    out = [AtFew((n_concepts,), keys, part) for part in got[:5]]
    ok = np.zeros((4, n_concepts), dtype=bool)
    ok[:, cols] = got[5]
    return (*out, ok)


def step_result(seq, ref: ConceptMoments, cur: ConceptMoments, cfg: DriftConfig, stream_score: float,
                 report: tuple | None = None) -> StepResult:
    """The sequential evidence plus what an alarm reports (reference vs recent prevalence and mean) and the gates
    that only suppress alarms: ``min_count`` and the ``min_prevalence_change`` floor."""
    ref_prev, cur_prev, ref_mean, cur_mean, pooled_sd, ok = report or report_and_gates(ref, cur, cfg)
    return StepResult(seq.evidence, seq.tested, seq.fire & ok, seq.threshold, seq.n_hypotheses, ref_prev, cur_prev,
                      ref_mean, cur_mean, pooled_sd, stream_score, ref.n_images, cur.n_images)
