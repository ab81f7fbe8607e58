"""Count windows on a source without event times, end to end (issue 11 ran `--window 500` over 6,000 captions; this is
the same at a tenth of the size): 1,200 captions without timestamps close 12 windows of 100 that all start at the
same instant, and `history list` shows all 12 (before windows were numbered the store kept one, and compaction
deleted the other 11)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from monitor.cli.main import main as cli_main
from monitor.synthetic.captions import CaptionStream


def test_run_with_count_windows_and_no_event_times_stores_every_window(ray_local, test_vocab, cache_dir, tmp_path,
                                                                       capsys):
    texts = [c.text for c in CaptionStream(n=1200, seed=3)]
    source = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"text": texts}), source)  # no timestamp column: every item gets the same time
    store = tmp_path / "history"
    rc = cli_main(["run", "--source", f"parquet://{source}?text_column=text", "--history", str(store),
                   "--metrics-port", "-1", "--workers", "1", "--batch-size", "100", "--model", "minilm",
                   "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir, "--window", "100"])
    out = capsys.readouterr().out
    assert rc == 0 and "images counted: 1200" in out, out
    assert cli_main(["history", "compact", "--store", str(store)]) == 0  # the day-change compaction's path too
    capsys.readouterr()
    assert cli_main(["history", "list", "--store", str(store), "--format", "json"]) == 0
    streams = json.loads(capsys.readouterr().out)["streams"]
    (info,) = streams.values()
    assert (info["windows"], info["images"]) == (12, 1200)
