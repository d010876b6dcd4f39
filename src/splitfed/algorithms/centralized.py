"""Centralized training (spec §3): the unsplit model on the union of the clients' data, same optimizer
and batch size b. A round processes as many samples as a round of the others: τ·m steps of b."""

from ..engine.side import joint_step
from .base import ALGORITHMS, Algorithm


@ALGORITHMS.register("centralized")
class Centralized(Algorithm):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.client_half = ctx.client_side(copies=1, location="main_server")
        self.server_half = ctx.server_side(copies=1)

    def run_round(self, rnd: int, clients: list[int]) -> None:
        self.client_half.load(0, self.w_c)
        self.server_half.load(0, self.w_s)
        for _ in range(self.ctx.tau * len(clients)):
            x, y = self.ctx.union_batch()
            joint_step(self.client_half, self.server_half, 0, x, y)
        self.w_c = self.client_half.state(0).clone()
        self.w_s = self.server_half.state(0).clone()
