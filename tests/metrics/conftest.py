"""Fixtures: a random-weight FID InceptionV3 weights file (tests only; never the real network)."""
import pytest
import torch


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 built with random init, its state dict saved to a file."""
    from groupdiff.metrics.inception import random_inception_extractor

    net = random_inception_extractor(seed=0)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def one_blas_thread():
    """2048-dim eigendecompositions thrash with >1 BLAS thread on a shared 2-core machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
