"""URI parsing and the DESIGN 2.3 key layout."""
from __future__ import annotations

from pathlib import Path

import pytest

from registry import layout
from registry.uri import parse_uri


def test_layout_keys():
    assert layout.data_key("fmnist/train.npz") == "data/fmnist/train.npz"
    assert layout.embeddings_prefix("dinov2-s", "ab12") == "embeddings/dinov2-s/ab12"
    assert layout.groups_prefix("ff00") == "groups/ff00"
    assert layout.checkpoint_prefix("run7", 1500) == "checkpoints/run7/00001500"
    assert layout.samples_key("run7", "fid5k") == "samples/run7/fid5k/samples.npz"
    assert layout.weights_key("sit-xl-2.pt") == "weights/sit-xl-2.pt"
    # zero padding keeps lexicographic order == numeric order
    steps = [5, 40, 300, 1000]
    assert sorted(layout.checkpoint_prefix("r", s) for s in steps) == [layout.checkpoint_prefix("r", s) for s in steps]


@pytest.mark.parametrize("call", [
    lambda: layout.groups_prefix("a/b"), lambda: layout.groups_prefix(".."), lambda: layout.embeddings_prefix("", "d"),
    lambda: layout.checkpoint_prefix("r", -1), lambda: layout.samples_key("r/x", "e"), lambda: layout.data_key("../x"),
])
def test_layout_rejects_bad_parts(call):
    with pytest.raises(ValueError):
        call()


def test_parse_uri():
    s3 = parse_uri("s3://my-bucket/some/prefix/")
    assert (s3.scheme, s3.bucket, s3.prefix) == ("s3", "my-bucket", "some/prefix")
    assert str(s3) == "s3://my-bucket/some/prefix"
    local = parse_uri("file:///tmp/store")
    assert local.scheme == "file" and local.path == Path("/tmp/store")


@pytest.mark.parametrize("uri", ["no-scheme", "s3://", "s3://UPPER/x", "s3://ab", "s3://b_ad/x", "gs://bucket/x",
                                 "file://", "s3://bucket/a/../b"])
def test_malformed_uris_are_rejected(uri):
    with pytest.raises(ValueError, match="URI|key"):
        parse_uri(uri)
