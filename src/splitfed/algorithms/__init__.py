"""Algorithms, one short module each over the shared engine, created by name."""

from . import centralized, fedavg, minibatch_sfl, sfl_v1, sfl_v2, sl  # noqa: F401  (fill the registry)
from .base import ALGORITHMS, Algorithm

__all__ = ["ALGORITHMS", "Algorithm"]
