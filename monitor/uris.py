"""Credentials out of URIs before they are logged or stored: ``redact_uri`` for one URI, ``redact_text`` for a
message that may quote one (an exception text, a dead letter's reason). Every place that writes a source, sink,
history or gateway URI to a log, a dead letter, the history store or a summary goes through here.

>>> redact_uri("rediss://monitor:S3cretPW@redis.data.svc:6380/0?stream=frames&password=x")
'rediss://monitor:***@redis.data.svc:6380/0?stream=frames&password=***'
>>> redact_uri("redis://:S3cretPW@127.0.0.1:6379/0")
'redis://:***@127.0.0.1:6379/0'
>>> redact_uri("s3://AKIAEXAMPLE:secret@bucket/history")
's3://***@bucket/history'
>>> redact_uri("/data/frames.parquet")
'/data/frames.parquet'
>>> redact_text("Error connecting to redis://:S3cretPW@10.0.0.5:6379/0: refused")
'Error connecting to redis://:***@10.0.0.5:6379/0: refused'
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["MASK", "SECRET_QUERY_KEYS", "redact_text", "redact_uri"]

MASK = "***"
# Query parameters that carry secrets in the URI forms people paste (redis-py, fsspec/pyarrow, presigned object-store
# URLs); matched case-insensitively.
SECRET_QUERY_KEYS = frozenset({
    "password", "passwd", "pass", "pwd", "secret", "token", "access_token", "auth", "key", "secret_key",
    "secret_access_key", "aws_secret_access_key", "session_token", "sig", "signature", "x-amz-signature",
    "x-amz-security-token", "sas", "sv",
})

# Where the user part is a name worth keeping (a Redis ACL user) and where it is not a credential at all (Azure's
# abfs://container@account). Everywhere else any userinfo is masked whole.
_USER_IS_A_NAME = frozenset({"redis", "rediss"})
_USER_IS_A_CONTAINER = frozenset({"abfs", "abfss"})

# scheme://userinfo@ with a password part (user:pass@ or :pass@); stops at the first '@' after the scheme's '//'.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@]*):(?P<pw>[^\s/@]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:" + "|".join(re.escape(k) for k in sorted(SECRET_QUERY_KEYS, key=len, reverse=True))
    + r"))=(?P<val>[^&\s#'\"]*)", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` with its credentials replaced by ``***``: the password of a Redis URI (the ACL user name stays), the
    whole userinfo of any other URI (object stores put an access key id there; Azure's container name stays), and
    every secret-looking query value. Host, path and other parameters stay, so the result still says where it
    points. Non-URIs pass through."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # not parseable as a URI: fall back to the pattern, which never needs a parse
        return redact_text(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        scheme = parts.scheme.lower()
        if scheme in _USER_IS_A_NAME:
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        elif scheme not in _USER_IS_A_CONTAINER:
            userinfo = MASK  # object stores and HTTP put an access key id or a login there: mask it all
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*/:")
    # Swap the pieces in the original text: urlunsplit would drop the empty authority of parquet:///path.
    out = uri
    if netloc != parts.netloc:
        out = out.replace("//" + parts.netloc, "//" + netloc, 1)
    if query != parts.query:
        out = out.replace("?" + parts.query, "?" + query, 1)
    return out


def redact_text(text: str) -> str:
    """Every URI password and secret query value in free text masked (messages quote URIs in any position)."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}={MASK}", text)
