"""The same object-store suite on ``file://`` and on a real S3 server (the local stack's SeaweedFS, through the
minio client)."""
from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import uuid

import pytest

from registry.config import ObjectStoreConfig
from registry.objectstore import ChecksumMismatchError, ObjectNotFoundError, ObjectStoreError
from registry.stores import open_store

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(f"file://{tmp_path / 'store'}")
    request.getfixturevalue("stack_env")
    # a fresh bucket per test: checks creation on first use and keeps tests independent
    return open_store(f"s3://t-{uuid.uuid4().hex[:12]}/root", ObjectStoreConfig(part_size_mib=5))


class FailingStream:
    """Yields ``fail_after`` bytes of ``data`` then raises, like a dropped connection mid-upload."""

    def __init__(self, data: bytes, fail_after: int):
        self._buf, self._fail_after, self._pos = io.BytesIO(data), fail_after, 0

    def read(self, n: int = -1) -> bytes:
        if self._pos >= self._fail_after:
            raise ConnectionResetError("simulated failure mid-upload")
        n = self._fail_after - self._pos if n < 0 else min(n, self._fail_after - self._pos)
        data = self._buf.read(n)
        self._pos += len(data)
        return data


def test_round_trip_and_listing_by_prefix(store, tmp_path):
    payloads = {"checkpoints/run1/00000010/model.pt": b"a" * 1000, "checkpoints/run1/00000020/model.pt": b"bb",
                "checkpoints/run10/00000001/model.pt": b"c", "data/fmnist/train.npz": os.urandom(4096)}
    for key, data in payloads.items():
        info = store.put_bytes(key, data)
        assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    for key, data in payloads.items():
        assert store.get_bytes(key) == data
        assert store.stat(key).sha256 == hashlib.sha256(data).hexdigest()
    # prefix = folder: 'checkpoints/run1' must not match 'checkpoints/run10'
    assert store.list("checkpoints/run1") == sorted(k for k in payloads if k.startswith("checkpoints/run1/"))
    assert store.list() == sorted(payloads)
    store.delete("data/fmnist/train.npz")
    assert not store.exists("data/fmnist/train.npz")
    with pytest.raises(ObjectNotFoundError):
        store.get_file("data/fmnist/train.npz", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_failed_upload_leaves_no_object_and_keeps_previous_version(store):
    data = os.urandom(200_000)
    with pytest.raises(Exception, match="simulated failure"):
        store.put_stream("groups/abc/table.npz", FailingStream(data, 150_000), len(data))
    assert not store.exists("groups/abc/table.npz")
    assert store.list() == []
    store.put_bytes("groups/abc/table.npz", b"old version")
    with pytest.raises(Exception, match="simulated failure"):
        store.put_stream("groups/abc/table.npz", FailingStream(data, 100_000), len(data))
    assert store.get_bytes("groups/abc/table.npz") == b"old version"
    assert store.list() == ["groups/abc/table.npz"]


def _corrupt(store, key: str, data: bytes) -> None:
    """Replace the stored bytes behind the store's back, keeping its recorded checksum."""
    if store.root.startswith("file://"):
        (store.path / key).write_bytes(data)
    else:
        sha = store.stat(key).sha256
        store.client.put_object(store.bucket, store._name(key), io.BytesIO(data), len(data), metadata={"sha256": sha})


def test_checksum_mismatch_is_detected(store, tmp_path):
    store.put_bytes("weights/sit.pt", b"x" * 100)
    _corrupt(store, "weights/sit.pt", b"x" * 99 + b"y")  # same size, one byte differs
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        store.get_file("weights/sit.pt", tmp_path / "sit.pt")
    # nothing half-verified is left at the destination
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "store") == []


def test_presigned_url_downloads_without_credentials(store, monkeypatch):
    data = os.urandom(3000)
    store.put_bytes("samples/run1/eval1/samples.npz", data)
    url = store.presigned_url("samples/run1/eval1/samples.npz", expires_s=60)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data


def test_presigned_url_expires(stack_env):
    """The lifetime is ObjectStoreConfig.presign_expiry_s (bounded: 1 s to S3's 7 days) and the S3 server enforces
    it: the URL downloads before and is refused with 403 after."""
    import time
    import urllib.error

    from pydantic import ValidationError

    for bad in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValidationError, match="presign_expiry_s"):
            ObjectStoreConfig(presign_expiry_s=bad)
    store = open_store(f"s3://t-{uuid.uuid4().hex[:12]}", ObjectStoreConfig(presign_expiry_s=2))
    data = os.urandom(1000)
    store.put_bytes("samples/run1/eval1/grid.png", data)
    signed = time.monotonic()
    url = store.presigned_url("samples/run1/eval1/grid.png")  # the config's lifetime
    assert "X-Amz-Expires=2&" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data
    time.sleep(max(0.0, signed + 3.5 - time.monotonic()))  # X-Amz-Date has whole seconds
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 403 and b"expired" in refused.value.read().lower()


def test_multipart_round_trip_of_a_file_larger_than_the_part_size(store, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(11 * MIB))  # 3 parts of 5 MiB
    info = store.put_file("embeddings/dinov2/d1/emb.npy", path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    store.get_file("embeddings/dinov2/d1/emb.npy", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == path.read_bytes()


def test_s3_upload_above_part_size_is_multipart(stack_env, tmp_path):
    store = open_store(f"s3://t-{uuid.uuid4().hex[:12]}", ObjectStoreConfig(part_size_mib=5))
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(11 * MIB))
    # the temporary upload is multipart (ETag '<md5>-<parts>'); observe it through minio's result
    from registry import store_s3

    seen = []
    original = store.client.put_object

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result.etag)
        return result

    store.client.put_object = spy
    store.put_file("weights/big.bin", path)
    assert seen and seen[0].endswith("-3"), seen
    assert store_s3.SHA_META == "sha256"


def test_put_dir_and_get_dir_mirror_a_folder(store, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"m" * 10)
    (src / "sub" / "opt.pt").write_bytes(b"o" * 20)
    store.put_dir("checkpoints/r/00000005", src)
    store.get_dir("checkpoints/r/00000005", tmp_path / "back")
    assert (tmp_path / "back" / "model.pt").read_bytes() == b"m" * 10
    assert (tmp_path / "back" / "sub" / "opt.pt").read_bytes() == b"o" * 20


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", ".partial/x", ".meta/x", "a/./b"])
def test_malformed_or_reserved_keys_are_rejected(store, key):
    with pytest.raises(ValueError, match="key"):
        store.put_bytes(key, b"x")


def test_unreachable_endpoint_fails_after_bounded_retries(monkeypatch):
    from infra.process import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-that-must-not-leak")
    config = ObjectStoreConfig(endpoint=f"http://127.0.0.1:{free_port()}", max_retries=2, backoff_s=0.01, timeout_s=2)
    store = open_store("s3://bucket-x", config)
    with pytest.raises(ObjectStoreError, match="cannot reach the S3 endpoint .* after 2 retries") as err:
        store.put_bytes("data/x", b"1")
    assert "a-secret-that-must-not-leak" not in str(err.value)


def test_missing_credentials_and_bad_endpoint_are_clear_errors(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID"):
        open_store("s3://bucket-x", ObjectStoreConfig(endpoint="http://127.0.0.1:9"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(ValueError, match="malformed"):
        open_store("s3://bucket-x", ObjectStoreConfig(endpoint="127.0.0.1:9000/path"))


@pytest.mark.parametrize("bad", ["secret", "access"])
def test_wrong_s3_credentials_are_a_clear_error_and_write_nothing(stack_env, monkeypatch, bad):
    """SeaweedFS checks signatures against the stack's identities file: a wrong secret (or an unknown access
    key) is refused, the error names the endpoint and the environment variables, and nothing is written."""
    endpoint = stack_env["GROUPDIFF_S3_ENDPOINT"]
    config = ObjectStoreConfig(max_retries=1, backoff_s=0.01)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    good = open_store(f"s3://{bucket}", config)
    good.put_bytes("data/x", b"payload")
    wrong = "not-the-secret" if bad == "secret" else "unknownkey0000"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY" if bad == "secret" else "AWS_ACCESS_KEY_ID", wrong)
    store = open_store(f"s3://{bucket}", config)
    for action in (lambda: store.put_bytes("data/y", b"other"), lambda: store.get_bytes("data/x"),
                   lambda: open_store(f"s3://{bucket}-new", config).put_bytes("data/z", b"1")):
        with pytest.raises(ObjectStoreError, match="rejected the credentials") as err:
            action()
        message = str(err.value)
        assert endpoint in message and "$AWS_ACCESS_KEY_ID" in message and "$AWS_SECRET_ACCESS_KEY" in message
        assert wrong not in message and stack_env["AWS_SECRET_ACCESS_KEY"] not in message
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack_env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack_env["AWS_SECRET_ACCESS_KEY"])
    assert good.list() == ["data/x"] and good.get_bytes("data/x") == b"payload"
    assert not good.client.bucket_exists(f"{bucket}-new")
    # nothing half-written either: no temporary upload under the reserved prefix
    assert [o.object_name for o in good.client.list_objects(bucket, recursive=True)] == ["data/x"]


def test_store_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPDIFF_STORE_ROOT", f"file://{tmp_path / 'envstore'}")
    store = open_store()
    store.put_bytes("data/a", b"1")
    assert (tmp_path / "envstore" / "data" / "a").read_bytes() == b"1"


def test_reading_a_missing_bucket_is_not_found_and_listing_does_not_create_it(stack_env):
    name = f"t-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{name}")
    assert store.list() == [] and not store.exists("data/x")
    assert not store.client.bucket_exists(name)
    store.put_bytes("data/x", b"1")  # the first write creates it
    assert store.client.bucket_exists(name) and store.list("data") == ["data/x"]


def test_large_transfers_show_a_progress_bar(tmp_path, capsys):
    store = open_store(f"file://{tmp_path / 's'}", ObjectStoreConfig(progress_min_mib=0))
    store.put_bytes("data/a", b"x" * 1000)
    assert "put data/a" in capsys.readouterr().err
    quiet = open_store(f"file://{tmp_path / 's'}", ObjectStoreConfig(progress_min_mib=1))
    quiet.get_bytes("data/a")
    assert "get data/a" not in capsys.readouterr().err
