"""Source URIs: plain paths pick a scheme, unknown options and schemes are errors naming what is allowed."""

from __future__ import annotations

import pytest

from monitor.errors import ConfigError
from workers.sources import open_source, parse_uri


def test_plain_paths_pick_dir_or_parquet_scheme(tmp_path):
    assert parse_uri(str(tmp_path))[0] == "dir"
    assert parse_uri(str(tmp_path / "a.parquet"))[0] == "parquet"
    scheme, path, opts, _ = parse_uri(f"dir://{tmp_path}?glob=*.png&follow=1")
    assert (scheme, path, opts) == ("dir", str(tmp_path), {"glob": "*.png", "follow": "1"})


def test_unknown_option_error_names_it_and_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dir source option\(s\) \['colour'\].*allowed"):
        open_source(f"dir://{tmp_path}?colour=red")
    with pytest.raises(ConfigError, match="scheme"):
        open_source("ftp://host/x")
