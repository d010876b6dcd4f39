"""SFL-V2 (spec §3): one server-side model stepped once per client batch, the clients taking turns;
the fed server averages the client sides at round end.

Schedules (``sflv2_schedule``): "client_sequential" (reference code): clients in a random order, each doing
all its τ iterations; "interleaved" (SplitFed paper text): every iteration, the clients in a random order
each do one.
"""

from ..engine.side import WeightedSum, weighted_average
from .base import ALGORITHMS, Algorithm


@ALGORITHMS.register("sfl_v2")
class SFLV2(Algorithm):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.interleaved = ctx.cfg.sflv2_schedule == "interleaved"
        self.clients = ctx.client_side(copies=ctx.copies_per_round if self.interleaved else 1)
        self.main_server = ctx.server_side(copies=1)

    def step(self, i: int, n: int) -> None:
        """Client n (on client-side copy i) and the one server-side model train on one batch of n."""
        link = self.ctx.link
        x, y = self.ctx.batch(n)
        smashed = link.up("smashed", n, self.clients.forward(i, x)).requires_grad_()
        smashed_grad = self.main_server.train_step(0, smashed, link.up("labels", n, y))
        self.clients.backward(i, link.down("smashed_grad", n, smashed_grad))

    def run_round(self, rnd: int, clients: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        self.main_server.load(0, self.w_s)
        if self.interleaved:
            for i, n in enumerate(clients):
                self.clients.load(i, link.down("global_client_weights", n, self.w_c))
            slot = {n: i for i, n in enumerate(clients)}
            for t in range(ctx.tau):
                for n in ctx.order(clients, rnd, t):
                    self.step(slot[n], n)
            uploads = [link.up("client_weights", n, self.clients.state(i)) for i, n in enumerate(clients)]
            self.w_c = weighted_average(uploads, ctx.weights(clients))
        else:
            p = dict(zip(clients, ctx.weights(clients), strict=True))
            w_c = WeightedSum()
            for n in ctx.order(clients, rnd):
                self.clients.load(0, link.down("global_client_weights", n, self.w_c))
                for _ in range(ctx.tau):
                    self.step(0, n)
                w_c.add(link.up("client_weights", n, self.clients.state(0)), p[n])
            self.w_c = w_c.result
        self.w_s = self.main_server.state(0).clone()
