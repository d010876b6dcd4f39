"""Centralized training (spec §3): the unsplit model on the union of the clients' data, same optimizer and
batch size b. A round processes as many samples as a round of the others: τ·m steps of b.

    for round r:
        one participant, the union of the m clients' data      participants = [UNION]
        τ·m SGD steps of the whole model on batches of b        server_side = ON_CLIENT, iterations = τ·m
"""

from .base import ON_CLIENT, PER_CLIENT, UNION, Algorithm, register


@register("centralized")
class Centralized(Algorithm):
    client_side = PER_CLIENT
    server_side = ON_CLIENT

    def participants(self, clients: list[int]) -> list[int]:
        return [UNION]

    def iterations(self, tau: int, clients: list[int]) -> int:
        return tau * len(clients)
