"""Algorithms, one short module each: what every party does and in what order, created by name."""

from . import centralized, fedavg, minibatch_sfl, sfl_v1, sfl_v2, sl  # noqa: F401  (fill the registry)
from .base import ALGORITHMS, Algorithm, MainServer, Smashed, create, register

__all__ = ["ALGORITHMS", "Algorithm", "MainServer", "Smashed", "create", "register"]
