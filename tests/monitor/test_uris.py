"""One redaction function for every URI that is logged or stored."""

from __future__ import annotations

import pytest

from monitor.uris import redact_text, redact_uri


@pytest.mark.parametrize(("uri", "expected"), [
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://monitor:pw@h:6380/0?stream=s", "rediss://monitor:***@h:6380/0?stream=s"),
    ("redis://monitor@h:6379/0", "redis://monitor@h:6379/0"),
    ("http://u:p%40ss@gw:9091", "http://***@gw:9091"),
    ("s3://AKIAEXAMPLE@bucket/h", "s3://***@bucket/h"),
    ("abfs://container@account.dfs.core.windows.net/h", "abfs://container@account.dfs.core.windows.net/h"),
    ("s3://bucket/p?access_key=AK&secret_key=SK&region=eu", "s3://bucket/p?access_key=AK&secret_key=***&region=eu"),
    ("https://acct.blob/x?sv=2024&sig=abc%2Bdef", "https://acct.blob/x?sv=***&sig=***"),
    ("/data/frames.parquet", "/data/frames.parquet"),
    ("parquet:///data/f.parquet?image_column=img", "parquet:///data/f.parquet?image_column=img"),
    ("", ""),
])
def test_redact_uri_masks_passwords_and_secret_parameters_and_keeps_the_rest(uri, expected):
    assert redact_uri(uri) == expected


def test_redact_text_masks_uris_anywhere_in_a_message():
    msg = "connect redis://:pw1@a:1/0 failed; retry rediss://u:pw2@b:2/0?password=pw3 then http://gw?token=t"
    out = redact_text(msg)
    assert not any(s in out for s in ("pw1", "pw2", "pw3", "=t"))
    assert "redis://:***@a:1/0" in out and "rediss://u:***@b:2/0?password=***" in out and "token=***" in out


def test_module_examples_run():
    import doctest

    import monitor.uris

    assert doctest.testmod(monitor.uris).failed == 0
