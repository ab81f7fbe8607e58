"""Questions asked of the Parquet history: which concepts rose or fell between two time ranges or metadata slices
(effect size, significance, Benjamini-Hochberg), how chosen concepts trend per hour/day/week, which co-occur.

Window aggregates answer time/stream questions in bounded memory (one record batch at a time); a metadata slice
(``where={"label": "A"}``) or co-occurrence needs the per-image codes, and says so when the store has none.

>>> import tempfile, numpy as np
>>> from monitor.history.store import HistoryStore
>>> from monitor.records import WindowSummary
>>> store = HistoryStore(tempfile.mkdtemp(), concept_space="demo", concept_names=["cat", "snow"])
>>> def window(start, snowy):
...     presence = np.array([50, snowy])
...     return WindowSummary("cam", start, start + 3600, 100, presence * 0.2, presence * 0.04, presence)
>>> _ = store.write_windows([window(0, 2), window(3600, 2), window(7200, 40), window(10800, 40)])
>>> cmp = compare(store, Selection(0, 7200), Selection(7200, 14400))
>>> [(r["concept"], r["baseline_prevalence"], r["current_prevalence"]) for r in cmp.rows("up")]
[('snow', 0.02, 0.4)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitor.history.selection import Selection
from monitor.history.selection import codes_or_explain as _codes_or_explain
from monitor.history.selection import flatten_codes as _flatten_codes
from monitor.history.selection import iso as _iso
from monitor.history.significance import benjamini_hochberg
from monitor.history.significance import two_proportion as _two_proportion
from monitor.history.significance import welch as _welch
from monitor.history.store import HistoryStore, NoDataError, retry_if_compacted

__all__ = [
    "GRANULARITIES",
    "Selection",
    "Aggregate",
    "aggregate",
    "Comparison",
    "compare",
    "Trend",
    "trend",
    "Cooccurrence",
    "cooccur",
    "benjamini_hochberg",
]

# Week buckets start on Monday 00:00 UTC; the unix epoch was a Thursday, 4 days after a Monday.
_WEEK_ORIGIN = -3 * 86400.0
# name -> (bucket width, origin) in seconds; weeks start on Monday (the epoch was a Thursday). "hour", "day" and
# "week" are the long names of 1h, 1d and 1w.
GRANULARITIES: dict[str, tuple[float, float]] = {
    "1m": (60.0, 0.0),
    "5m": (300.0, 0.0),
    "15m": (900.0, 0.0),
    "1h": (3600.0, 0.0),
    "6h": (21600.0, 0.0),
    "1d": (86400.0, 0.0),
    "1w": (604800.0, 4 * 86400.0),
    "hour": (3600.0, 0.0),
    "day": (86400.0, 0.0),
    "week": (604800.0, 4 * 86400.0),
}
_MAX_BUCKETS = 2_000_000


@dataclass
class Aggregate:
    """Per-concept totals over a selection (dense over the concept space)."""

    source: str  # "windows" or "codes"
    n_images: int
    n_windows: int
    presence: np.ndarray
    weight_sum: np.ndarray
    weight_sq_sum: np.ndarray
    fidelity_sum: float
    l0_sum: float

    @property
    def prevalence(self) -> np.ndarray:
        return self.presence / max(self.n_images, 1)

    @property
    def mean_activation(self) -> np.ndarray:
        return self.weight_sum / max(self.n_images, 1)

    @property
    def mean_fidelity(self) -> float:
        return self.fidelity_sum / self.n_images if self.n_images else float("nan")

    @property
    def mean_l0(self) -> float:
        return self.l0_sum / self.n_images if self.n_images else float("nan")


@retry_if_compacted
def aggregate(store: HistoryStore, sel: Selection) -> Aggregate:
    """Sum presence, weights and squared weights per concept over the selection."""
    c = store.n_concepts
    presence = np.zeros(c)
    wsum = np.zeros(c)
    wsq = np.zeros(c)
    if sel.where:
        table = _codes_or_explain(store, sel, columns=["concept_index", "weight", "fidelity"])
        ids, weights, lengths = _flatten_codes(table)
        presence += np.bincount(ids, minlength=c)
        wsum += np.bincount(ids, weights=weights, minlength=c)
        wsq += np.bincount(ids, weights=weights * weights, minlength=c)
        return Aggregate(
            "codes",
            table.num_rows,
            0,
            presence,
            wsum,
            wsq,
            float(pc.sum(table["fidelity"]).as_py() or 0.0),
            float(lengths.sum()),
        )
    header, presence, wsum, wsq = store.sum_windows(streams=sel.streams, start=sel.start, end=sel.end)
    return Aggregate(
        "windows",
        int(pc.sum(header["n_images"]).as_py() or 0),
        header.num_rows,
        presence,
        wsum,
        wsq,
        float(pc.sum(header["fidelity_sum"]).as_py() or 0.0),
        float(pc.sum(header["l0_sum"]).as_py() or 0.0),
    )


@dataclass
class Comparison:
    """Per-concept differences between a baseline and a current selection; "rising" means higher in current.

    Arrays are dense over the concept space. p-values are two-sided; q-values are Benjamini-Hochberg over every
    concept of the space (concepts absent from both selections count as p = 1).
    """

    concept_space: str
    concept_names: list[str]
    baseline: Selection
    current: Selection
    baseline_agg: Aggregate
    current_agg: Aggregate
    cohens_h: np.ndarray
    z: np.ndarray
    p_prevalence: np.ndarray
    q_prevalence: np.ndarray
    smd: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p_mean: np.ndarray
    q_mean: np.ndarray
    alpha: float = 0.05

    @property
    def n_tested(self) -> int:
        return len(self.concept_names)

    def row(self, i: int) -> dict[str, Any]:
        b, c = self.baseline_agg, self.current_agg
        return {
            "concept": self.concept_names[i],
            "concept_index": int(i),
            "baseline_presence": int(b.presence[i]),
            "current_presence": int(c.presence[i]),
            "baseline_prevalence": float(b.prevalence[i]),
            "current_prevalence": float(c.prevalence[i]),
            "prevalence_change": float(c.prevalence[i] - b.prevalence[i]),
            "cohens_h": float(self.cohens_h[i]),
            "z": float(self.z[i]),
            "p_prevalence": float(self.p_prevalence[i]),
            "q_prevalence": float(self.q_prevalence[i]),
            "baseline_mean": float(b.mean_activation[i]),
            "current_mean": float(c.mean_activation[i]),
            "smd": float(self.smd[i]),
            "t": float(self.t[i]),
            "df": float(self.df[i]),
            "p_mean": float(self.p_mean[i]),
            "q_mean": float(self.q_mean[i]),
            "significant": bool(self.q_prevalence[i] < self.alpha),
        }

    def ranking(
        self, direction: str = "up", *, by: str = "prevalence", significant_only: bool = True
    ) -> np.ndarray:
        """Concept ids ordered by effect size in ``direction`` ("up" or "down"); with ``significant_only`` only
        those whose q-value (of the chosen test) is below alpha."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if by not in ("prevalence", "activation"):
            raise ValueError(f"by must be 'prevalence' or 'activation', got {by!r}")
        effect, q = (self.cohens_h, self.q_prevalence) if by == "prevalence" else (self.smd, self.q_mean)
        signed = effect if direction == "up" else -effect
        mask = signed > 0
        if significant_only:
            mask &= q < self.alpha
        ids = np.flatnonzero(mask)
        # ties (common for tiny counts) are broken by the p-value, then the concept id for determinism
        order = np.lexsort((ids, q[ids], -signed[ids]))
        return ids[order]

    def rows(
        self, direction: str = "up", k: int | None = 20, *, by: str = "prevalence", significant_only: bool = True
    ) -> list[dict[str, Any]]:
        ids = self.ranking(direction, by=by, significant_only=significant_only)
        if k is not None:
            ids = ids[:k]
        out = []
        for i in ids:
            r = self.row(int(i))
            r["significant"] = bool((self.q_prevalence if by == "prevalence" else self.q_mean)[i] < self.alpha)
            out.append(r)
        return out

    def summary(self) -> dict[str, Any]:
        def side(sel: Selection, agg: Aggregate) -> dict[str, Any]:
            return {
                **sel.to_dict(),
                "source": agg.source,
                "n_images": agg.n_images,
                "n_windows": agg.n_windows,
                "mean_fidelity": agg.mean_fidelity,
                "mean_l0": agg.mean_l0,
            }

        return {
            "concept_space": self.concept_space,
            "baseline": side(self.baseline, self.baseline_agg),
            "current": side(self.current, self.current_agg),
            "alpha": self.alpha,
            "multiple_testing": (
                f"Benjamini-Hochberg false discovery rate over all {self.n_tested} concepts of the space; "
                f"'significant' means q < {self.alpha}"
            ),
            "tests": "prevalence: pooled two-proportion z-test, effect = Cohen's h; mean activation: Welch's t, "
            "effect = standardized mean difference (average-variance pooled SD)",
        }

    def to_dict(self, k: int | None = 20, *, by: str = "prevalence", significant_only: bool = True) -> dict[str, Any]:
        return {
            **self.summary(),
            "rank_by": by,
            "rising": self.rows("up", k, by=by, significant_only=significant_only),
            "falling": self.rows("down", k, by=by, significant_only=significant_only),
        }


def compare(
    store: HistoryStore,
    baseline: Selection,
    current: Selection,
    *,
    current_store: HistoryStore | None = None,
    alpha: float = 0.05,
) -> Comparison:
    """Test every concept for a change from ``baseline`` to ``current`` (optionally read from another store of the
    same concept space; a different space raises ConfigError)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    other = store if current_store is None else current_store
    if other is not store:
        store.check_same_space(other)
    a = aggregate(store, baseline)
    b = aggregate(other, current)
    for name, sel, agg in (("baseline", baseline, a), ("current", current, b)):
        if agg.n_images == 0:
            raise NoDataError(f"no stored images in the {name} selection ({sel.describe()})")
    n1, n2 = a.n_images, b.n_images
    h, z, p_prev = _two_proportion(a.presence, n1, b.presence, n2)
    d, t, df, p_mean = _welch(a.weight_sum, a.weight_sq_sum, n1, b.weight_sum, b.weight_sq_sum, n2)
    m = store.n_concepts
    return Comparison(
        concept_space=store.concept_space,
        concept_names=store.concept_names,
        baseline=baseline,
        current=current,
        baseline_agg=a,
        current_agg=b,
        cohens_h=h,
        z=z,
        p_prevalence=p_prev,
        q_prevalence=benjamini_hochberg(p_prev, m),
        smd=d,
        t=t,
        df=df,
        p_mean=p_mean,
        q_mean=benjamini_hochberg(p_mean, m),
        alpha=alpha,
    )


# ---------------------------------------------------------------------------------------------------- trends


@dataclass
class Trend:
    """Per-bucket prevalence and mean activation of chosen concepts; buckets with no images hold NaN."""

    granularity: str
    concepts: list[str]
    concept_indices: np.ndarray
    bucket_start: np.ndarray  # (B,) unix seconds
    n_images: np.ndarray  # (B,)
    n_windows: np.ndarray  # (B,)
    presence: np.ndarray  # (B, k)
    weight_sum: np.ndarray  # (B, k)
    weight_sq_sum: np.ndarray  # (B, k)
    selection: Selection = field(default_factory=Selection)

    @property
    def prevalence(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_images[:, None] > 0, self.presence / self.n_images[:, None], np.nan)

    @property
    def mean_activation(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_images[:, None] > 0, self.weight_sum / self.n_images[:, None], np.nan)

    def prevalence_interval(self, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
        """Wilson score interval of each bucket's prevalence (NaN for empty buckets)."""
        n = self.n_images[:, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = self.presence / n
            denom = 1 + z * z / n
            centre = (p + z * z / (2 * n)) / denom
            half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        return centre - half, centre + half

    def rows(self) -> list[dict[str, Any]]:
        prev, mean = self.prevalence, self.mean_activation
        out = []
        for b, start in enumerate(self.bucket_start):
            for j, name in enumerate(self.concepts):
                out.append(
                    {
                        "bucket_start": float(start),
                        "bucket_start_iso": _iso(float(start)),
                        "concept": name,
                        "n_images": int(self.n_images[b]),
                        "presence": int(self.presence[b, j]),
                        "prevalence": _nan_to_none(prev[b, j]),
                        "mean_activation": _nan_to_none(mean[b, j]),
                    }
                )
        return out


def _nan_to_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def bucket_of(t: np.ndarray, granularity: str) -> np.ndarray:
    """Start of the bucket holding each time (hour, day, or Monday-aligned UTC week)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)}, got {granularity!r}")
    width, origin = GRANULARITIES[granularity]
    t = np.asarray(t, dtype=np.float64)
    return np.floor((t - origin) / width) * width + origin


@retry_if_compacted
def trend(
    store: HistoryStore,
    concepts: Sequence[str | int],
    *,
    start: str | float | None = None,
    end: str | float | None = None,
    stream: str | Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
    granularity: str = "day",
) -> Trend:
    """Prevalence and mean activation of ``concepts`` per bucket of ``granularity`` over [start, end).

    A window counts in the bucket holding its start; without start/end the stored span is used.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)}, got {granularity!r}")
    if not concepts:
        raise ValueError("trend needs at least one concept")
    idx = store.concept_index(concepts)
    names = [store.concept_names[i] for i in idx]
    sel = Selection.make(start, end, stream, where)
    k = len(idx)
    pos = np.full(store.n_concepts, -1, dtype=np.int64)
    pos[idx] = np.arange(k)
    if sel.where:
        table = _codes_or_explain(store, sel, columns=["timestamp", "concept_index", "weight"])
        times = table["timestamp"].to_numpy()
        ids, weights, lengths = _flatten_codes(table)
        item_time = np.repeat(times, lengths)
        unit_time, unit_images, unit_windows = times, np.ones(len(times)), np.zeros(len(times))
        entry_time, entry_ids, entry_pres, entry_w, entry_w2 = item_time, ids, np.ones(len(ids)), weights, weights**2
    else:
        header, batches = store.iter_windows(
            streams=sel.streams,
            start=sel.start,
            end=sel.end,
            concepts=idx,
            columns=["start", "concept_index", "presence", "weight_sum", "weight_sq_sum"],
            header_columns=["n_images"],
        )
        unit_time = header["start"].to_numpy()
        unit_images = header["n_images"].to_numpy().astype(np.float64)
        unit_windows = np.ones(len(unit_time))
        parts = [b for _, b in batches if b.num_rows]
        tbl = pa.Table.from_batches(parts) if parts else None
        if tbl is None:
            entry_time = entry_ids = entry_pres = entry_w = entry_w2 = np.zeros(0)
        else:
            entry_time = tbl["start"].to_numpy()
            entry_ids = tbl["concept_index"].to_numpy()
            entry_pres = tbl["presence"].to_numpy().astype(np.float64)
            entry_w = tbl["weight_sum"].to_numpy()
            entry_w2 = tbl["weight_sq_sum"].to_numpy()
    if len(unit_time) == 0:
        raise NoDataError(f"no stored images in {sel.describe()}")
    lo = bucket_of(np.array([sel.start if sel.start is not None else unit_time.min()]), granularity)[0]
    width = GRANULARITIES[granularity][0]
    if sel.end is not None:
        n_buckets = max(int(math.ceil((sel.end - lo) / width)), 1)
    else:  # up to the bucket holding the last stored unit
        n_buckets = int(round((bucket_of(np.array([unit_time.max()]), granularity)[0] - lo) / width)) + 1
    if n_buckets > _MAX_BUCKETS:
        raise ValueError(f"{n_buckets} {granularity} buckets requested; use a coarser granularity or a shorter range")
    bucket_start = lo + width * np.arange(n_buckets)
    ub = ((bucket_of(unit_time, granularity) - lo) / width).round().astype(np.int64)
    n_images = np.bincount(ub, weights=unit_images, minlength=n_buckets)[:n_buckets]
    n_windows = np.bincount(ub, weights=unit_windows, minlength=n_buckets)[:n_buckets]
    presence = np.zeros(n_buckets * k)
    wsum = np.zeros(n_buckets * k)
    wsq = np.zeros(n_buckets * k)
    if len(entry_time):
        eb = ((bucket_of(entry_time, granularity) - lo) / width).round().astype(np.int64)
        ep = pos[np.asarray(entry_ids, dtype=np.int64)]
        keep = ep >= 0
        flat = eb[keep] * k + ep[keep]
        presence += np.bincount(flat, weights=np.asarray(entry_pres)[keep], minlength=n_buckets * k)
        wsum += np.bincount(flat, weights=np.asarray(entry_w)[keep], minlength=n_buckets * k)
        wsq += np.bincount(flat, weights=np.asarray(entry_w2)[keep], minlength=n_buckets * k)
    return Trend(
        granularity=granularity,
        concepts=names,
        concept_indices=idx,
        bucket_start=bucket_start,
        n_images=n_images.astype(np.int64),
        n_windows=n_windows.astype(np.int64),
        presence=presence.reshape(n_buckets, k),
        weight_sum=wsum.reshape(n_buckets, k),
        weight_sq_sum=wsq.reshape(n_buckets, k),
        selection=sel,
    )


# ---------------------------------------------------------------------------------------------------- co-occurrence


@dataclass
class Cooccurrence:
    """Concept pairs that appear in the same image more often than independence predicts."""

    selection: Selection
    n_images: int
    pairs: list[dict[str, Any]]
    by: str


@retry_if_compacted
def cooccur(
    store: HistoryStore,
    sel: Selection,
    *,
    concepts: Sequence[str | int] | None = None,
    top_concepts: int = 200,
    min_count: int = 5,
    limit: int = 20,
    by: str = "npmi",
) -> Cooccurrence:
    """Pairs of concepts active in the same image, from per-image codes.

    With ``concepts``, pairs each of them with every other concept; otherwise pairs among the ``top_concepts`` most
    frequent. Each pair reports its count, P(b|a), lift = P(a,b)/(P(a)P(b)) and normalized PMI in [-1, 1]; pairs
    seen fewer than ``min_count`` times are dropped; ranked by ``by`` ("npmi", "lift" or "count").
    """
    from scipy import sparse

    if by not in ("npmi", "lift", "count"):
        raise ValueError(f"by must be 'npmi', 'lift' or 'count', got {by!r}")
    if min_count < 1 or top_concepts < 2 or limit < 1:
        raise ValueError(
            f"need min_count >= 1, top_concepts >= 2, limit >= 1; got {min_count}, {top_concepts}, {limit}"
        )
    table = _codes_or_explain(store, sel, columns=["concept_index"])
    n = table.num_rows
    if n == 0:
        raise NoDataError(f"no per-image codes in {sel.describe()}")
    ids, _, lengths = _flatten_codes(table)
    rows = np.repeat(np.arange(n), lengths)
    x = sparse.csr_matrix((np.ones(len(ids), dtype=np.float64), (rows, ids)), shape=(n, store.n_concepts))
    x.data[:] = 1.0  # presence, even if a concept were listed twice in a row
    freq = np.asarray(x.sum(axis=0)).ravel()
    if concepts:
        anchors = store.concept_index(concepts)
        partners = np.arange(store.n_concepts)
    else:
        anchors = np.argsort(-freq, kind="stable")[:top_concepts]
        anchors = anchors[freq[anchors] > 0]
        partners = anchors
    counts = (x[:, anchors].T @ x[:, partners]).toarray()
    out = []
    for ai, a in enumerate(anchors):
        for bi, b in enumerate(partners):
            if a == b or (not concepts and b <= a) or counts[ai, bi] < min_count:
                continue
            n_ab = counts[ai, bi]
            p_ab, p_a, p_b = n_ab / n, freq[a] / n, freq[b] / n
            pmi = math.log(p_ab / (p_a * p_b))
            npmi = 1.0 if p_ab >= 1.0 else pmi / -math.log(p_ab)
            out.append(
                {
                    "concept_a": store.concept_names[a],
                    "concept_b": store.concept_names[b],
                    "count": int(n_ab),
                    "count_a": int(freq[a]),
                    "count_b": int(freq[b]),
                    "p_b_given_a": n_ab / freq[a],
                    "lift": p_ab / (p_a * p_b),
                    "npmi": npmi,
                }
            )
    out.sort(key=lambda r: (-r[by], -r["count"], r["concept_a"], r["concept_b"]))
    return Cooccurrence(selection=sel, n_images=n, pairs=out[:limit], by=by)
