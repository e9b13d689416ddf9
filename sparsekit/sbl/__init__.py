"""Sparse Bayesian learning with a diagonal quasi-Newton solver (DQN-SBL)."""

from ._classifier import DQNSBLClassifier
from ._regressor import DQNSBLRegressor

__all__ = ["DQNSBLClassifier", "DQNSBLRegressor"]
