"""``splice-monitor vocab list|show|build``: the named vocabularies, their sizes and hashes, as text and as JSON."""

from __future__ import annotations

import json

from monitor.cli.main import main
from monitor.concepts.vocab import named_vocabulary


def test_list_json_names_splice_vocabularies_and_the_default(capsys):
    assert main(["vocab", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = {v["name"]: v for v in doc["vocabularies"]}
    assert set(names) == {"laion", "laion-bigrams", "mscoco", "builtin"}
    assert names["laion"]["default_size"] == 10_000 and names["laion-bigrams"]["default_size"] == 15_000
    assert [v["name"] for v in doc["vocabularies"] if v["default"]] == [doc["default"]]


def test_show_json_reports_size_hash_and_head(capsys):
    assert main(["vocab", "show", "--vocab", "laion", "--vocab-size", "500", "--head", "3", "--json",
                 "--template", "a photo of {}"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = named_vocabulary("laion", 500)
    assert doc["concepts"] == 500 and doc["hash"] == expected.hash
    assert doc["head"] == list(expected.concepts[:3])
    assert doc["prompts"] == [f"a photo of {c}" for c in expected.concepts[:3]]
    assert "last 500 lines" in doc["source"]


def test_show_text_counts_bigrams(capsys):
    assert main(["vocab", "show", "--vocab", "laion-bigrams", "--head", "2"]) == 0
    out = capsys.readouterr().out
    assert "concepts: 15000" in out and "multi-word concepts: 5001" in out


def test_build_json_with_output_file(capsys, tmp_path):
    out = tmp_path / "v.txt"
    assert main(["vocab", "build", "--size", "50", "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["concepts"] == 50 and doc["output"] == str(out) and "vocabulary" not in doc
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 50
