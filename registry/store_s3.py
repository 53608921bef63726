"""The S3 object store (MinIO, SeaweedFS or any S3 server) through the ``minio`` client.

Endpoint from :class:`~registry.config.ObjectStoreConfig` or ``$GROUPDIFF_S3_ENDPOINT``; credentials only
from ``$AWS_ACCESS_KEY_ID`` / ``$AWS_SECRET_ACCESS_KEY`` (never stored, never printed). A write uploads to
``<prefix>/.partial/<uuid>`` (multipart above ``part_size_mib``), then server-side copies to the final key
with the sha256 as metadata and deletes the temporary object. Requests are retried with exponential
backoff by urllib3 (bounded by ``max_retries``).
"""
from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import S3Error

from groupdiff.atomic import atomic_write

from .config import (
    ENV_ACCESS_KEY, ENV_ENDPOINT, ENV_ENDPOINT_FALLBACK, ENV_REGION, ENV_SECRET_KEY, MIB, ObjectStoreConfig,
)
from .objectstore import (
    CHUNK, PARTIAL_DIR, ObjectInfo, ObjectNotFoundError, ObjectStore, ObjectStoreError,
    user_key, verify,
)
from .uri import check_key, join_key

SHA_META = "sha256"  # stored as the x-amz-meta-sha256 header
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidClientTokenId"}
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchBucket"}
T = TypeVar("T")


def resolve_endpoint(config: ObjectStoreConfig) -> tuple[str, bool]:
    """``(host:port, secure)`` from the config or the environment; ValueError when none or malformed."""
    url = config.endpoint or os.environ.get(ENV_ENDPOINT) or os.environ.get(ENV_ENDPOINT_FALLBACK)
    if not url:
        raise ValueError(
            f"no S3 endpoint: set objectstore endpoint in the config or ${ENV_ENDPOINT} (e.g. http://127.0.0.1:9000)"
        )
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
        raise ValueError(f"S3 endpoint {url!r} is malformed; expected 'http(s)://HOST[:PORT]' without a path")
    return parsed.netloc, parsed.scheme == "https"


def make_client(config: ObjectStoreConfig) -> tuple[Minio, str]:
    """A minio client for the configured endpoint with bounded retries; returns ``(client, endpoint_url)``."""
    netloc, secure = resolve_endpoint(config)
    access, secret = os.environ.get(ENV_ACCESS_KEY), os.environ.get(ENV_SECRET_KEY)
    if not access or not secret:
        raise ValueError(f"S3 credentials missing: set ${ENV_ACCESS_KEY} and ${ENV_SECRET_KEY}")
    retry = urllib3.Retry(
        total=config.max_retries, connect=config.max_retries, read=config.max_retries,
        backoff_factor=config.backoff_s, status_forcelist=[500, 502, 503, 504], allowed_methods=None,
        raise_on_status=False,
    )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=config.timeout_s, read=config.timeout_s), retries=retry, maxsize=10,
    )
    region = os.environ.get(ENV_REGION) or config.region
    client = Minio(netloc, access_key=access, secret_key=secret, secure=secure, region=region, http_client=http)
    return client, f"{'https' if secure else 'http'}://{netloc}"


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix``; the bucket is created on first write."""

    def __init__(self, bucket: str, prefix: str, config: ObjectStoreConfig):
        self.bucket, self.prefix, self.config = bucket, prefix.strip("/"), config
        self.progress_min_bytes = config.progress_min_mib * MIB
        self.client, self.endpoint = make_client(config)
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._bucket_ready = False

    # -- helpers -------------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        return join_key(self.prefix, key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._name(user_key(key))}"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one client call, turning transport and auth failures into clear :class:`ObjectStoreError`s."""
        try:
            return fn()
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise ObjectNotFoundError(f"{what}: no such object in {self.root}") from None
            if exc.code in _CREDENTIAL_CODES:
                raise ObjectStoreError(
                    f"{what}: the S3 endpoint {self.endpoint} rejected the credentials from "
                    f"${ENV_ACCESS_KEY}/${ENV_SECRET_KEY} ({exc.code})"
                ) from None
            raise ObjectStoreError(f"{what}: S3 error {exc.code}: {exc.message}") from None
        except urllib3.exceptions.MaxRetryError as exc:
            raise ObjectStoreError(
                f"{what}: cannot reach the S3 endpoint {self.endpoint} after {self.config.max_retries} "
                f"retries ({type(exc.reason).__name__}); is the server running?"
            ) from None

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        if not self._call("bucket check", lambda: self.client.bucket_exists(self.bucket)):
            try:
                self._call("bucket creation", lambda: self.client.make_bucket(self.bucket))
            except ObjectStoreError as exc:  # created concurrently by another writer
                if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                    raise
        self._bucket_ready = True

    # -- interface -----------------------------------------------------------------------------
    def put_stream(self, key: str, stream: BinaryIO, size: int) -> ObjectInfo:
        user_key(key)
        self._ensure_bucket()
        final = self._name(key)
        temp = join_key(self.prefix, PARTIAL_DIR, uuid.uuid4().hex)
        reader = self._reader(stream, size, f"put {key}")
        try:
            self._call(f"upload of {key!r}", lambda: self.client.put_object(
                self.bucket, temp, reader, size, part_size=self.config.part_size_mib * MIB,
            ))
            if reader.size != size:
                raise ObjectStoreError(f"upload of {key!r}: read {reader.size} bytes, expected {size}")
            sha = reader.hash.hexdigest()
            # server-side copy publishes the object in one step (above 5 GiB minio switches to compose)
            self._call(f"publishing {key!r}", lambda: self.client.copy_object(
                self.bucket, final, CopySource(self.bucket, temp),
                metadata={SHA_META: sha}, metadata_directive=REPLACE,
            ))
        finally:
            reader.close()
            try:
                self.client.remove_object(self.bucket, temp)
            except Exception:  # best effort: the temporary key is never listed and may be swept later
                pass
        return ObjectInfo(key, size, sha, self.uri(key))

    def stat(self, key: str) -> ObjectInfo:
        user_key(key)
        obj = self._call(f"stat of {key!r}", lambda: self.client.stat_object(self.bucket, self._name(key)))
        meta = {k.lower(): v for k, v in (obj.metadata or {}).items()}
        sha = meta.get(f"x-amz-meta-{SHA_META}")
        if not sha:
            raise ObjectStoreError(
                f"object {self.uri(key)} has no sha256 metadata; it was not written through the store, "
                "re-upload it with put_file"
            )
        return ObjectInfo(key, int(obj.size), sha, self.uri(key))

    def get_file(self, key: str, dest: str | Path) -> ObjectInfo:
        info = self.stat(key)
        response = self._call(f"download of {key!r}", lambda: self.client.get_object(self.bucket, self._name(key)))
        reader = self._reader(response, info.size, f"get {key}")
        try:
            with atomic_write(dest) as out:  # published only once the checksum matches
                for block in iter(lambda: reader.read(CHUNK), b""):
                    out.write(block)
                verify(key, info, reader.size, reader.hash.hexdigest())
        finally:
            reader.close()
            response.close()
            response.release_conn()
        return info

    def list(self, prefix: str = "") -> list[str]:
        check_key(prefix.strip("/"), allow_empty=True)
        if not self._bucket_ready and not self._call("bucket check", lambda: self.client.bucket_exists(self.bucket)):
            return []  # listing never creates the bucket
        base = self._name(prefix.strip("/"))
        start = f"{base}/" if base else ""
        cut = len(self.prefix) + 1 if self.prefix else 0
        objects = self._call("listing", lambda: list(self.client.list_objects(self.bucket, prefix=start, recursive=True)))
        keys = [o.object_name[cut:] for o in objects]
        return sorted(k for k in keys if not k.startswith("."))

    def delete(self, key: str) -> None:
        user_key(key)
        self._call(f"delete of {key!r}", lambda: self.client.remove_object(self.bucket, self._name(key)))

    def presigned_url(self, key: str, expires_s: int | None = None) -> str:
        self.stat(key)
        expires = timedelta(seconds=expires_s or self.config.presign_expiry_s)
        return self._call(
            f"presigning {key!r}", lambda: self.client.presigned_get_object(self.bucket, self._name(key), expires=expires)
        )
