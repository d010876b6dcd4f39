"""MiniBatch-SFL (spec §2): clients train the client side FL-style; the main server trains ONE server-side
model on all clients' smashed data of an iteration as one giant mini-batch, one step per iteration."""

from collections.abc import Callable

import torch

from ..engine.side import Side, weighted_average
from .base import ALGORITHMS, Algorithm


def main_server_step(
    server: Side,
    smashed: list[torch.Tensor],
    labels: list[torch.Tensor],
    grad_scale: Callable[[int, int], float],
) -> list[torch.Tensor]:
    """The main server's iteration, shared by the simulation and the networked main server.

    Z, Y = the giant mini-batch (size B, clients in the order given); ONE step of w_s on its mean loss;
    ∂L/∂Z at the same w_s, cut back into each client's slice and scaled per ``client_grad_scale``.
    """
    giant = torch.cat(smashed).requires_grad_()
    grad = server.train_step(0, giant, torch.cat(labels))
    return [a * grad_scale(len(a), len(giant)) for a in grad.split([len(y) for y in labels])]


@ALGORITHMS.register("minibatch_sfl")
class MiniBatchSFL(Algorithm):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.clients = ctx.client_side(copies=ctx.copies_per_round)  # w_{c,n}, one per participant
        self.main_server = ctx.server_side(copies=1)  # the one w_s: never copied, never averaged

    def run_round(self, rnd: int, clients: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        for i, n in enumerate(clients):  # fed server: every participant sets w_{c,n} := w_c^r
            self.clients.load(i, link.down("global_client_weights", n, self.w_c))
        self.main_server.load(0, self.w_s)
        for _ in range(ctx.tau):
            # Each client, in parallel: draw (x_n, y_n); z_n := f_c(x_n; w_{c,n}); send (z_n, y_n).
            batches = [ctx.batch(n) for n in clients]
            smashed = self.clients.forward_all([x for x, _ in batches])
            smashed = [link.up("smashed", n, z) for n, z in zip(clients, smashed, strict=True)]
            labels = [link.up("labels", n, y) for n, (_, y) in zip(clients, batches, strict=True)]
            # Main server: one step of the one w_s on the giant mini-batch; each client's slice of ∂L/∂Z.
            smashed_grad = main_server_step(self.main_server, smashed, labels, ctx.grad_scale)
            # Each client: back-propagate its slice (scaled per client_grad_scale) and step w_{c,n}.
            self.clients.backward_all(
                [link.down("smashed_grad", n, a) for n, a in zip(clients, smashed_grad, strict=True)]
            )
        self.w_s = self.main_server.state(0).clone()
        # fed server: w_c^{r+1} := Σ_n p_n w_{c,n}
        uploads = [link.up("client_weights", n, self.clients.state(i)) for i, n in enumerate(clients)]
        self.w_c = weighted_average(uploads, ctx.weights(clients))
