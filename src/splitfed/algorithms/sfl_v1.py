"""SFL-V1 (spec §3): a server-side copy per client on the main server, trained on that client's batches
only; the main server averages the copies and the fed server the client sides at round end."""

from ..engine.side import WeightedSum
from .base import ALGORITHMS, Algorithm


@ALGORITHMS.register("sfl_v1")
class SFLV1(Algorithm):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        # Within a round the clients are independent, so they are simulated one after another on one
        # client-side and one server-side copy, each folded into the averages as it finishes.
        self.client = ctx.client_side(copies=1)
        self.main_server = ctx.server_side(copies=1)  # w_{s,n} of the client being simulated

    def run_round(self, rnd: int, clients: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        w_c, w_s = WeightedSum(), WeightedSum()
        for n, p_n in zip(clients, ctx.weights(clients), strict=True):
            self.client.load(0, link.down("global_client_weights", n, self.w_c))
            self.main_server.load(0, self.w_s)
            for _ in range(ctx.tau):
                x, y = ctx.batch(n)
                smashed = link.up("smashed", n, self.client.forward(0, x)).requires_grad_()
                smashed_grad = self.main_server.train_step(0, smashed, link.up("labels", n, y))
                self.client.backward(0, link.down("smashed_grad", n, smashed_grad))
            w_c.add(link.up("client_weights", n, self.client.state(0)), p_n)
            w_s.add(self.main_server.state(0), p_n)
        self.w_c, self.w_s = w_c.result, w_s.result
