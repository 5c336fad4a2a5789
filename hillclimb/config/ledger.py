"""Which ledger URIs `run.ledger_uri` accepts, checked without pyarrow (so at config load, offline).

    run.ledger_uri unset             → <run dir>/ledger, on the driver's disk
    /abs/path  or  file:///abs/path  → a directory on the disk of the node that writes it
    s3://bucket/prefix?endpoint_override=host:port&scheme=http,  gs://bucket/prefix
                                     → shared storage, the same from every node

Only filesystems on which the ledger can make every write whole-or-absent are accepted: a
local disk (temporary name, fsync, rename) and the object stores whose uploads become
visible only once complete (S3 and its look-alikes, Google Cloud Storage). pyarrow checks its
own query options when the ledger opens.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

LOCAL_SCHEMES = ("file",)
SHARED_SCHEMES = ("s3", "gs", "gcs")
SECRET_OPTION_WORDS = ("secret", "token", "key")


def check_ledger_uri(uri: str) -> str:
    """`uri` unchanged if a ledger can live there; else ValueError saying what is wrong."""
    parts = urlsplit(uri)
    options = [key for key, _ in parse_qsl(parts.query, keep_blank_values=True)]
    if parts.password is not None or any(word in key for key in options for word in SECRET_OPTION_WORDS):
        raise ValueError(
            "credentials in the URI would be written to the run's config.json: give them through the "
            "environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or a role)"
        )
    if not parts.scheme:
        if not Path(uri).is_absolute():
            raise ValueError(f"{uri!r} is a relative path: give an absolute path or a URI such as file:///abs/path")
        return uri
    if parts.scheme not in LOCAL_SCHEMES + SHARED_SCHEMES:
        raise ValueError(
            f"unknown scheme {parts.scheme!r} in {uri!r}: use one of {', '.join(LOCAL_SCHEMES + SHARED_SCHEMES)}"
        )
    if parts.scheme in LOCAL_SCHEMES and (parts.netloc or not parts.path.startswith("/")):
        raise ValueError(f"{uri!r}: a file URI names an absolute path on this host, as file:///abs/path")
    if parts.scheme in SHARED_SCHEMES and not parts.hostname:
        raise ValueError(f"{uri!r} names no bucket: write {parts.scheme}://bucket/prefix")
    return uri
