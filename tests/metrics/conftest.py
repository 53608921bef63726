"""Fixtures of the metric tests: one BLAS thread (the random-weight InceptionV3 file is in tests/conftest.py)."""
import pytest


@pytest.fixture(autouse=True)
def one_blas_thread():
    """2048-dim eigendecompositions thrash with >1 BLAS thread on a shared 2-core machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
