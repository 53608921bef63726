"""InceptionV3 features through torch-fidelity's port: weights loading, one-pass features, errors."""
import datetime

import numpy as np
import pytest
import torch

from groupdiff.metrics.inception import InceptionFeatures, resolve_weights_path, to_nchw_uint8

torch.set_num_threads(2)


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("GROUPDIFF_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05.*GROUPDIFF_INCEPTION_WEIGHTS"):
        resolve_weights_path(None)
    with pytest.raises(FileNotFoundError, match="not found. Put"):
        resolve_weights_path(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="s3://"):
        resolve_weights_path("s3://bucket/weights.pth")


def test_file_uri_and_env(random_inception_weights, monkeypatch):
    assert resolve_weights_path(f"file://{random_inception_weights}") == random_inception_weights
    monkeypatch.setenv("GROUPDIFF_INCEPTION_WEIGHTS", str(random_inception_weights))
    assert resolve_weights_path(None) == random_inception_weights


def test_weights_must_be_tensors_only(tmp_path):
    bad = tmp_path / "pickled.pth"
    torch.save({"fc.weight": torch.zeros(1), "when": datetime.datetime(2020, 1, 1)}, bad)
    with pytest.raises(ValueError, match="tensors-only"):
        InceptionFeatures(bad)


def test_one_pass_matches_torch_fidelity_on_the_same_weights_file(random_inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(3, 24, 24, 1), dtype=np.uint8)
    ours = InceptionFeatures(random_inception_weights, batch_size=2)(grey)
    assert {k: v.shape for k, v in ours.items()} == {"pool": (3, 2048), "logits": (3, 1008), "spatial": (3, 2023)}

    # reference: the library's extractor loading the same file, the spatial layer read by hand
    theirs = FeatureExtractorInceptionV3("ref", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(random_inception_weights))
    seen = {}
    theirs.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o.clone()))
    rgb = torch.from_numpy(np.repeat(grey, 3, axis=3)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        pool, logits = theirs(rgb)
    np.testing.assert_allclose(ours["pool"], pool.double().numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ours["logits"], logits.double().numpy(), rtol=1e-5, atol=1e-9)
    spatial = seen["x"][:, :7].permute(0, 2, 3, 1).reshape(3, -1)  # TF NHWC order, first 7 channels
    np.testing.assert_allclose(ours["spatial"], spatial.double().numpy(), rtol=1e-5, atol=1e-9)


def test_layouts():
    x = np.zeros((2, 5, 5, 3), np.uint8)
    x[0, 1, 2] = (10, 20, 30)
    nchw = to_nchw_uint8(x)
    assert nchw.shape == (2, 3, 5, 5) and nchw[0, :, 1, 2].tolist() == [10, 20, 30]
    np.testing.assert_array_equal(to_nchw_uint8(nchw), nchw)  # NCHW accepted as is
    assert to_nchw_uint8(np.zeros((1, 4, 4, 1), np.uint8)).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="uint8"):
        to_nchw_uint8(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_nchw_uint8(np.zeros((1, 4, 4, 4), np.uint8))


def test_tf32_is_off_during_the_pass_and_restored(random_inception_weights):
    extractor = InceptionFeatures(random_inception_weights, batch_size=2)
    seen = []
    extractor.net.register_forward_pre_hook(
        lambda m, a: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        extractor(np.zeros((1, 8, 8, 3), np.uint8))
        assert seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 is True  # the caller's setting comes back
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
