"""monitor.concepts.vocab: the shipped vocabulary is exactly what the builder produces and is free of junk; custom files
parse as documented; the hash follows content and order."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from monitor.cli.main import main
from monitor.errors import ConfigError
from monitor.concepts.vocab import (
    DEFAULT_VOCAB_FILE,
    DuplicateConceptWarning,
    Vocabulary,
    build_vocabulary,
    default_vocabulary,
    load_vocabulary,
    resolve_vocabulary,
)


@pytest.fixture(scope="module")
def builtin():
    return default_vocabulary()


def test_builtin_vocabulary_has_ten_thousand_unique_concepts(builtin):
    assert len(builtin) == 10_000
    assert len(set(builtin)) == 10_000


def test_builtin_vocabulary_has_no_stopwords_numerals_or_punctuation(builtin):
    words = set(builtin)
    assert not {"in", "and", "the", "of", "-", "a", "to", "is", "with", "it's", "one", "two", "1", "2020"} & words
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)?", w) and len(w) >= 3 for w in builtin)
    assert not {"ii", "iii", "xiv", "www", "http", "html"} & words


def test_builtin_vocabulary_has_everyday_visual_concepts(builtin):
    for word in ["cat", "dog", "sofa", "motorcycle", "policeman", "snow", "beach", "pizza", "car", "tree", "glasses"]:
        assert word in builtin, word
    assert "cats" not in builtin  # folded into "cat"


def test_shipped_file_is_reproduced_by_the_builder(builtin):
    rebuilt = build_vocabulary(10_000)
    assert rebuilt.concepts == builtin.concepts
    header = resources.files("monitor.concepts").joinpath("data", DEFAULT_VOCAB_FILE).read_text(encoding="utf-8")
    assert f"concept hash: {builtin.hash}" in header


def test_smaller_build_is_a_prefix_of_the_larger_one(builtin):
    assert build_vocabulary(300).concepts == builtin.concepts[:300]


def test_plural_folding_can_be_turned_off():
    assert "years" in build_vocabulary(400, fold_plurals=False)
    assert "years" not in build_vocabulary(400)


def test_build_rejects_bad_size():
    with pytest.raises(ConfigError, match="size must be a positive integer"):
        build_vocabulary(0)


def test_custom_file_comments_blanks_whitespace_and_multiword(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# my concepts\n\ncat\n  ice   cream \n\tteddy bear\n# trailing comment\nCafé\n", encoding="utf-8")
    vocab = load_vocabulary(path)
    assert vocab.concepts == ("cat", "ice cream", "teddy bear", "Café")
    assert vocab.index("ice cream") == 1 and "teddy bear" in vocab


def test_custom_file_duplicates_are_reported_and_dropped(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("cat\ndog\ncat\nsnow\ndog\ncat\n", encoding="utf-8")
    with pytest.warns(DuplicateConceptWarning, match=r"3 duplicate concept line\(s\) dropped: 'cat', 'dog', 'cat'"):
        vocab = load_vocabulary(path)
    assert vocab.concepts == ("cat", "dog", "snow")


def test_custom_file_with_bom_loads(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes("\ufeffcat\ndog\n".encode("utf-8"))
    assert load_vocabulary(path).concepts == ("cat", "dog")


def test_non_utf8_missing_and_empty_files_are_config_errors(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_vocabulary(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_vocabulary(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no concepts"):
        load_vocabulary(empty)


def test_hash_is_stable_and_follows_content_and_order(tmp_path):
    a = Vocabulary(("cat", "dog"))
    assert a.hash == Vocabulary(("cat", "dog"), source="elsewhere").hash
    assert a.hash != Vocabulary(("dog", "cat")).hash
    assert a.hash != Vocabulary(("cat", "dogs")).hash
    path = tmp_path / "v.txt"
    a.save(path, header="hello")
    assert load_vocabulary(path).hash == a.hash


def test_template_must_have_one_placeholder():
    vocab = Vocabulary(("cat",))
    assert vocab.prompts("a photo of a {}.") == ["a photo of a cat."]
    assert vocab.prompts(None) == ["cat"]
    for bad in ("a photo of", "{} and {}", "{0}"):
        with pytest.raises(ConfigError, match="exactly one"):
            vocab.prompts(bad)


def test_resolve_accepts_none_path_list_and_vocabulary(tmp_path, builtin):
    assert resolve_vocabulary(None).hash == builtin.hash
    assert resolve_vocabulary(["cat", " dog "]).concepts == ("cat", "dog")
    v = Vocabulary(("x", "y"))
    assert resolve_vocabulary(v) is v
    (tmp_path / "v.txt").write_text("a b\n", encoding="utf-8")
    assert resolve_vocabulary(str(tmp_path / "v.txt")).concepts == ("a b",)


def test_vocab_build_and_show_commands(tmp_path, capsys):
    out = tmp_path / "v.txt"
    assert main(["vocab", "build", "-o", str(out), "--size", "250"]) == 0
    vocab = load_vocabulary(out)
    assert len(vocab) == 250 and vocab.concepts == build_vocabulary(250).concepts
    capsys.readouterr()
    assert main(["vocab", "show", "--vocab", str(out), "--head", "3", "--template", "a photo of {}"]) == 0
    shown = capsys.readouterr().out
    assert "concepts: 250" in shown and f"hash:     {vocab.hash}" in shown
    assert f"0  {vocab[0]}\ta photo of {vocab[0]}" in shown
    assert main(["vocab", "show", "--vocab", str(tmp_path / "none.txt")]) == 2


@pytest.mark.parametrize("module", ["monitor.concepts.vocab", "monitor.concepts.images", "monitor.concepts.dictionary"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
