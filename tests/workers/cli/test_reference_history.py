"""``--reference history``: the aggregator compares each stream with its windows stored in a reference period; a
missing store, an empty period or a stray flag is a start-up error (exit 2) naming the flag."""

from __future__ import annotations

import re

import pytest

from monitor.cli.main import main as cli_main
from tests.workers.helpers import caption_parquet

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SNOW_WORDS = {"snow", "snowy", "skier", "snowman", "sled", "snowplow", "winter", "snowboarder", "ski", "frozen",
              "icy", "blizzard", "icicles", "freezing", "snowstorm", "slope", "mountain", "forest", "pine"}


def _model_args(test_vocab: str, cache_dir: str) -> list[str]:
    return ["--metrics-port", "-1", "--workers", "1", "--batch-size", "100", "--model", "minilm",
            "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir, "--window", "100"]


def test_a_shifted_run_alarms_against_the_reference_loaded_from_history(ray_local, test_vocab, cache_dir, tmp_path,
                                                                        capsys):
    store = str(tmp_path / "h")
    street = {"street": 1.0}
    ref_uri, _ = caption_parquet(tmp_path / "ref.parquet", 300, before=street, after=street, start=T0)
    assert cli_main(["run", "--source", ref_uri, "--history", store, *_model_args(test_vocab, cache_dir)]) == 0
    capsys.readouterr()
    # a day later the same camera sees only snow; its own first images (a fixed reference) would look normal
    snow_uri, ids = caption_parquet(tmp_path / "snow.parquet", 300, shift_at=0, after={"snow": 1.0},
                                    start=T0 + 86400, seed=1)
    rc = cli_main(["run", "--source", snow_uri, "--reference", "history", "--reference-store", store,
                   "--reference-from", "2026-01-01T00:00:00Z", "--reference-to", str(T0 + 300),
                   *_model_args(test_vocab, cache_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and f"images counted: {len(ids)}" in out
    fired = int(re.search(r"alarms:\s+(\d+) fired", out).group(1))
    assert fired >= 1
    alarmed = set(re.findall(r"^ALARM '([^']+)'", out, re.M))
    assert alarmed & SNOW_WORDS, out


@pytest.mark.parametrize("extra, message", [
    (["--reference-from", "2026-01-01", "--reference-to", "2026-01-02"], "no history store"),
    (["--reference-from", "2030-01-01", "--reference-to", "2030-01-02"], "no images"),
    (["--reference-from", "2026-01-02", "--reference-to", "2026-01-01"], "--reference-from must be before"),
    (["--reference-from", "yesterday-ish", "--reference-to", "2026-01-01"], "--reference-from"),
    (["--reference-to", "2026-01-01"], "needs --reference-from and --reference-to"),
])
def test_a_bad_history_reference_is_a_startup_error(extra, message, tmp_path, capsys):
    store = tmp_path / "h"
    if message == "no images":
        from monitor.history.store import HistoryStore

        HistoryStore(str(store), concept_space="s", concept_names=["a", "b"])  # a store with nothing in range
    rc = cli_main(["run", "--source", str(tmp_path), "--reference", "history", "--reference-store", str(store),
                   *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_reference_period_flags_need_history_mode(tmp_path, capsys):
    rc = cli_main(["backfill", "--source", str(tmp_path), "--history", str(tmp_path / "h"),
                   "--reference-from", "2026-01-01"])
    assert rc == 2
    assert "--reference-from needs --reference history" in capsys.readouterr().err
