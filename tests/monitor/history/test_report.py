"""Tests for monitor.history.report: the HTML report is self-contained and, rendered by headless Debian chromium, shows the
concepts that rose and fell, its plots and its alarms."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from monitor.cli.main import main
from monitor.history.store import HistoryStore, parse_time
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary
from monitor.history.report import render_report, write_report

NAMES = ["snow", "beach", "umbrella", "traffic cone", "dog <b>bold</b>", "tree", "car", "bicycle"]
T0 = parse_time("2026-03-01")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> HistoryStore:
    rng = np.random.default_rng(0)
    s = HistoryStore(tmp_path_factory.mktemp("hist"), concept_space="report-space", concept_names=NAMES)
    windows, dense_all, items = [], [], []
    for h in range(96):
        n = 120
        p = np.array([0.03, 0.35, 0.3, 0.05, 0.2, 0.3, 0.2, 0.1])
        if h >= 48:
            p[0], p[3], p[1] = 0.45, 0.3, 0.04  # snow and traffic cones arrive, the beach goes
        dense = (rng.random((n, len(NAMES))) < p) * rng.uniform(0.05, 0.4, (n, len(NAMES)))
        start = T0 + h * 3600.0
        windows.append(
            WindowSummary("cam-7", start, start + 3600, n, dense.sum(0), (dense**2).sum(0), (dense > 0).sum(0),
                          fidelity_sum=0.8 * n, l0_sum=float((dense > 0).sum()), concept_space="report-space")
        )
        dense_all.append(dense)
        items += [ItemMeta(f"{h}-{i}", start + i, "cam-7", {"site": "north"}) for i in range(n)]
    s.write_windows(windows)
    dense = np.concatenate(dense_all)
    s.write_codes(SparseCodes.from_dense(dense, np.full(len(dense), 0.8), 0.25), items)
    s.write_alarms([
        Alarm("cam-7", "prevalence", "up", 0, "snow", 0.03, 0.45, 0.01, 0.1, 1.0, 30.0, 1e-12,
              T0 + 49 * 3600, T0 + 50 * 3600)
    ])
    return s


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "script", "iframe") and "src" in a:
            self.srcs.append(a["src"])
        if tag == "link" and "href" in a:
            self.links.append(a["href"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_and_lists_movers(store: HistoryStore) -> None:
    text = render_report(store, start="2026-03-03", end="2026-03-05")
    doc = _Collect()
    doc.feed(text)
    assert not doc.links, "no external stylesheets"
    assert len(doc.srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in doc.srcs)
    for src in doc.srcs:
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    body = " ".join(doc.text)
    rising = body.split("Rising concepts")[1].split("Falling concepts")[0]
    falling = body.split("Falling concepts")[1].split("Largest changes")[0]
    assert "snow" in rising and "traffic cone" in rising and "beach" not in rising
    assert "beach" in falling and "snow" not in falling
    assert "'snow' prevalence on cam-7: 3.0% -> 45.0%" in body  # the alarm
    assert "What co-occurs with 'snow'" in body
    assert "dog <b>bold</b>" not in text  # concept names are escaped


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed")
def test_report_renders_in_headless_chromium(store: HistoryStore, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["history", "report", "--store", str(store.root), "--from", "2026-03-03", "--to", "2026-03-05",
                 "-o", str(out)]) == 0
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(flags + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<h1>splice-monitor history report" in dom
    rising = dom.split("<h2>Rising concepts</h2>")[1].split("<h2>")[0]
    concepts = re.findall(r'<td class="concept">([^<]+)</td>', rising)
    assert set(concepts[:2]) == {"snow", "traffic cone"}
    assert dom.count('src="data:image/png;base64,') == 2
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1100,1600", out.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    # the page painted: plenty of non-white pixels and the orange of the "current" bars somewhere
    assert (img.sum(axis=2) < 600).mean() > 0.02
    orange = (img[..., 0] > 190) & (img[..., 1] > 50) & (img[..., 1] < 110) & (img[..., 2] < 60)
    assert orange.sum() > 200


def test_report_baseline_defaults_to_the_preceding_range(store: HistoryStore, tmp_path: Path) -> None:
    text = render_report(store, start="2026-03-03", end="2026-03-04", granularity="hour")
    assert "2026-03-02T00:00:00Z .. 2026-03-03T00:00:00Z" in text
    path = write_report(tmp_path / "sub" / "r.html", text)
    assert path.read_text(encoding="utf-8") == text
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_report_cli_requires_a_range(store: HistoryStore, tmp_path: Path, capsys) -> None:
    code = main(["history", "report", "--store", str(store.root), "--from", "2026-03-03", "-o", str(tmp_path / "x")])
    assert code == 2 and "needs --from and --to" in capsys.readouterr().err


T1 = parse_time("2026-05-01T10:00:00Z")


@pytest.fixture(scope="module")
def short_store(tmp_path_factory) -> HistoryStore:
    """50 one-minute windows; snow takes over in the last 25 minutes and raises two alarms."""
    rng = np.random.default_rng(1)
    s = HistoryStore(tmp_path_factory.mktemp("short"), concept_space="report-space", concept_names=NAMES)
    windows = []
    for m in range(50):
        n = 60
        p = np.array([0.03, 0.35, 0.3, 0.05, 0.2, 0.3, 0.2, 0.1])
        if m >= 25:
            p[0], p[1] = 0.5, 0.05
        dense = (rng.random((n, len(NAMES))) < p) * rng.uniform(0.05, 0.4, (n, len(NAMES)))
        start = T1 + 60.0 * m
        windows.append(WindowSummary("cam-7", start, start + 60, n, dense.sum(0), (dense**2).sum(0),
                                     (dense > 0).sum(0), fidelity_sum=0.8 * n, l0_sum=float((dense > 0).sum()),
                                     concept_space="report-space"))
    s.write_windows(windows)
    s.write_alarms([
        Alarm("cam-7", "prevalence", "down", 1, "beach", 0.35, 0.05, 0.1, 0.01, -0.8, 20.0, 1e-9,
              T1 + 29 * 60, T1 + 30 * 60),
        Alarm("cam-7", "prevalence", "up", 0, "snow", 0.03, 0.5, 0.01, 0.1, 1.2, 30.0, 1e-12,
              T1 + 27 * 60, T1 + 28 * 60),
        Alarm("cam-7", "prevalence", "up", 3, "traffic cone", 0.05, 0.06, 0.01, 0.01, 0.1, 5.0, 1e-3,
              T1 + 10 * 60, T1 + 11 * 60),  # before the reported range: not listed
    ])
    return s


def _section(text: str, heading_start: str) -> str:
    return text.split(heading_start, 1)[1].split("<h2>", 1)[0]


def test_a_25_minute_report_draws_minute_buckets_and_lists_its_alarms(short_store: HistoryStore) -> None:
    text = render_report(short_store, start="2026-05-01T10:25:00Z", end="2026-05-01T10:50:00Z")
    trend = _section(text, "<h2>Trend of the largest movers (per 1m)</h2>")
    # baseline (10:00-10:25) and current range (10:25-10:50): 50 one-minute points instead of one
    assert "50 buckets of 1m from 2026-05-01T10:00:00Z" in trend
    alarms = _section(text, "<h2>Alarms in the current range (2)</h2>")
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td class=concept>([^<]+)</td>", alarms)
    assert [(fired, what) for fired, _, what in rows] == [
        ("2026-05-01T10:28:00Z", "&#x27;snow&#x27; prevalence on cam-7: 3.0% -&gt; 50.0%"),
        ("2026-05-01T10:30:00Z", "&#x27;beach&#x27; prevalence on cam-7: 35.0% -&gt; 5.0%"),
    ]
    assert rows[0][1] == "2026-05-01T10:27:00Z .. 2026-05-01T10:28:00Z"


def test_granularity_flag_accepts_5m(short_store: HistoryStore, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert main(["history", "report", "--store", str(short_store.root), "--from", "2026-05-01T10:25:00Z",
                 "--to", "2026-05-01T10:50:00Z", "--granularity", "5m", "-o", str(out)]) == 0
    assert "10 buckets of 5m from 2026-05-01T10:00:00Z" in out.read_text(encoding="utf-8")


def test_a_range_without_alarms_says_so(short_store: HistoryStore) -> None:
    text = render_report(short_store, start="2026-05-01T10:40:00Z", end="2026-05-01T10:50:00Z")
    assert "<h2>Alarms in the current range (0)</h2>" in text and "no alarm fired in this range" in text


def test_auto_granularity_keeps_every_trend_between_a_few_and_60_points() -> None:
    from monitor.cli.history import GRANULARITY_CHOICES
    from monitor.history.analysis import GRANULARITIES
    from monitor.history.report import auto_granularity

    assert set(GRANULARITY_CHOICES) == set(GRANULARITIES)
    cases = {25 * 60: "1m", 3600: "1m", 4 * 3600: "5m", 86400: "1h", 7 * 86400: "6h", 40 * 86400: "1d",
             365 * 86400: "1w"}
    for span, expected in cases.items():
        gran = auto_granularity(0.0, float(span))
        assert gran == expected, (span, gran)
        assert span / GRANULARITIES[gran][0] <= 60
