"""Algorithms, one short module each: what every party does and in what order, created by name."""

from . import (  # noqa: F401  (fill the registry)
    centralized,
    fedavg,
    fedbn,
    fedopt,
    fedprox,
    minibatch_sfl,
    scaffold,
    sfl_local_loss,
    sfl_v1,
    sfl_v2,
    sl,
    ushaped_sl,
)
from .base import ALGORITHMS, Algorithm, MainServer, Smashed, create, register

__all__ = ["ALGORITHMS", "Algorithm", "MainServer", "Smashed", "create", "register"]
