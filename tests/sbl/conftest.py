"""Fixtures shared by the SBL tests of the subset kernel path (classifier and regressor)."""

import pytest

import sparsekit.sbl._features as features
import sparsekit.sbl._kernel_basis as kb


@pytest.fixture
def kernel_shapes(monkeypatch):
    """Shapes of every kernel matrix computed during the test."""
    shapes = []
    real = features.pairwise_kernels

    def spy(X, Y=None, **kwargs):
        K = real(X, Y, **kwargs)
        shapes.append(K.shape)
        return K

    monkeypatch.setattr(features, "pairwise_kernels", spy)
    return shapes


@pytest.fixture
def small_pool(monkeypatch):
    """A starting pool of 40 samples, whatever the number of samples; scans in blocks of 32."""
    monkeypatch.setattr(kb, "SUBSET_MIN", 40)
    monkeypatch.setattr(kb, "SUBSET_MAX", 40)
    monkeypatch.setattr(kb, "SCAN_BLOCK", 32)
