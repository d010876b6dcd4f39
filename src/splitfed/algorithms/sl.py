"""Vanilla split learning (spec §3): one client-side and one server-side model, no averaging.

for round r:
    clients take turns in a random order                        schedule = CLIENT_SEQUENTIAL
        client n receives the client-side model the previous     client_side = RELAY
        client left, trains τ iterations with the shared server, server_side = ONE
        and hands it on
    nothing is averaged: both models are kept
"""

import torch

from .base import CLIENT_SEQUENTIAL, ONE, RELAY, Algorithm, MainServer, Smashed, register


@register("sl")
class SL(Algorithm):
    client_side = RELAY
    server_side = ONE
    schedule = CLIENT_SEQUENTIAL

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[torch.Tensor]:
        return server.step_each(batch)
