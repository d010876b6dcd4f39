"""FL, FedAvg (spec §3): each client trains the whole model τ iterations from the global model; the
server averages the models with weights p_n. No split: the whole model runs on the client."""

from ..engine.side import WeightedSum, joint_step
from .base import ALGORITHMS, Algorithm


@ALGORITHMS.register("fedavg")
class FedAvg(Algorithm):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        # Clients are independent within a round: simulated one after another on one model copy whose
        # both halves compute on the client.
        self.client_half = ctx.client_side(copies=1)
        self.server_half = ctx.server_side(copies=1, location="client")

    def run_round(self, rnd: int, clients: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        w_c, w_s = WeightedSum(), WeightedSum()
        for n, p_n in zip(clients, ctx.weights(clients), strict=True):
            self.client_half.load(0, link.down("global_client_weights", n, self.w_c))
            self.server_half.load(0, link.down("global_client_weights", n, self.w_s))
            for _ in range(ctx.tau):
                x, y = ctx.batch(n)
                joint_step(self.client_half, self.server_half, 0, x, y)
            w_c.add(link.up("client_weights", n, self.client_half.state(0)), p_n)
            w_s.add(link.up("client_weights", n, self.server_half.state(0)), p_n)
        self.w_c, self.w_s = w_c.result, w_s.result
