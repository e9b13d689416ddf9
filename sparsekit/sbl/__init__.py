"""Sparse Bayesian learning with a diagonal quasi-Newton solver (DQN-SBL)."""

from ._regressor import DQNSBLRegressor

__all__ = ["DQNSBLRegressor", "DQNSBLClassifier"]


def __getattr__(name):
    if name == "DQNSBLClassifier":
        from ._classifier import DQNSBLClassifier

        return DQNSBLClassifier
    raise AttributeError(f"module 'sparsekit.sbl' has no attribute {name!r}")
