"""Parsing store URIs: ``s3://bucket/key`` and ``file:///path`` (or ``file://relative/path``)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# S3 bucket naming rules (the subset MinIO enforces): 3-63 chars, lowercase letters, digits, dots, hyphens.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreURI:
    """A parsed store location: ``scheme`` is 's3' or 'file'; for s3 ``bucket`` + ``prefix``, for file ``path``."""

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return Path(self.path).resolve().as_uri()


def parse_uri(uri: str) -> StoreURI:
    """Parse ``s3://BUCKET[/PREFIX]`` or ``file://PATH``; raise ValueError naming the bad URI otherwise."""
    if not isinstance(uri, str) or "://" not in uri:
        raise ValueError(f"store URI {uri!r} has no scheme; expected 's3://bucket/prefix' or 'file:///path'")
    scheme, rest = uri.split("://", 1)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise ValueError(
                f"store URI {uri!r}: bucket {bucket!r} is not a valid S3 bucket name "
                "(3-63 lowercase letters, digits, '.' or '-')"
            )
        prefix = prefix.strip("/")
        check_key(prefix, allow_empty=True, uri=uri)
        return StoreURI("s3", bucket=bucket, prefix=prefix)
    if scheme == "file":
        if not rest:
            raise ValueError(f"store URI {uri!r} has an empty path; expected 'file:///absolute/path' or 'file://relative/path'")
        return StoreURI("file", path=Path(rest))
    raise ValueError(f"store URI {uri!r}: unsupported scheme {scheme!r}; expected 's3' or 'file'")


def check_key(key: str, allow_empty: bool = False, uri: str | None = None) -> str:
    """Validate an object key: '/'-separated, no empty, '.' or '..' parts, no leading '/'; returns it."""
    where = f" in {uri!r}" if uri else ""
    if not isinstance(key, str):
        raise ValueError(f"object key{where} must be a string, got {type(key).__name__}")
    if not key:
        if allow_empty:
            return key
        raise ValueError(f"object key{where} is empty")
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"object key {key!r}{where} is malformed: use 'a/b/c' without empty, '.' or '..' parts")
    return key


def join_key(*parts: str) -> str:
    """Join key parts with '/', dropping empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
