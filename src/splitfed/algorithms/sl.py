"""Vanilla split learning (spec §3): one client-side and one server-side model, no averaging. Clients
take turns in a random order; each receives the client-side weights the previous one left, trains τ
iterations with the server and hands them on."""

from .base import ALGORITHMS, Algorithm


@ALGORITHMS.register("sl")
class SL(Algorithm):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.client = ctx.client_side(copies=1)
        self.main_server = ctx.server_side(copies=1)

    def run_round(self, rnd: int, clients: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        self.client.load(0, self.w_c)
        self.main_server.load(0, self.w_s)
        for n in ctx.order(clients, rnd):
            # The relay: client n receives the weights the previous client left, and later passes them on.
            # Counted as one download and one upload per turn, whichever route they take.
            link.down("global_client_weights", n, self.client.state(0))
            for _ in range(ctx.tau):
                x, y = ctx.batch(n)
                smashed = link.up("smashed", n, self.client.forward(0, x)).requires_grad_()
                smashed_grad = self.main_server.train_step(0, smashed, link.up("labels", n, y))
                self.client.backward(0, link.down("smashed_grad", n, smashed_grad))
            link.up("client_weights", n, self.client.state(0))
        self.w_c = self.client.state(0).clone()
        self.w_s = self.main_server.state(0).clone()
