"""Fixtures: a random-weight FID InceptionV3 weights file (tests only; never the real network)."""
import io

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 built with random init, its state dict saved to a file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return nn.Module.load_state_dict(self, state_dict, strict=False)

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(0)
    net = RandomInit("random", ["2048"], feature_extractor_weights_path=empty)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def one_blas_thread():
    """2048-dim eigendecompositions thrash with >1 BLAS thread on a shared 2-core machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
