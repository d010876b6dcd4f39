"""Centralized training (spec §3): the unsplit model on the union of the clients' data, same optimizer and
batch size b. A round processes as many samples as a round of the others: τ·m steps of b.

    for round r:
        one participant, the union of the m clients' data      participants = [UNION]
        τ·m SGD steps of the whole model on batches of b        FedAvg's client, iterations = τ·m
"""

from .base import UNION, register
from .fedavg import FedAvg


@register("centralized")
class Centralized(FedAvg):
    """Centralized: the unsplit model on the union of the clients' data (the upper bound)."""

    def participants(self, clients: list[int]) -> list[int]:
        return [UNION]

    def iterations(self, tau: int, clients: list[int]) -> int:
        return tau * len(clients)
