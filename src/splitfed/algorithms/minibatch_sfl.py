"""MiniBatch-SFL (spec §2): clients train the client side FL-style; the main server trains ONE server-side
model on all clients' smashed data of an iteration as one giant mini-batch, one step per iteration.

    for round r:
        fed server: every participating client sets w_{c,n} := w_c^r         client_side = PER_CLIENT
        repeat τ times, each client n in parallel: send (z_n, y_n)            schedule = LOCKSTEP
            main server, ONE model w_s:                                       server_side = ONE
                Z, Y := the giant mini-batch; ONE step of w_s on its mean loss   main_server
                a_n := client n's slice of ∂L/∂Z, scaled per client_grad_scale
            each client n: back-propagate a_n through f_c; step w_{c,n}
        fed server: w_c^{r+1} := Σ_n p_n w_{c,n}; w_s is never averaged        fed_server
"""

import torch

from .base import LOCKSTEP, ONE, PER_CLIENT, Algorithm, MainServer, Smashed, register


@register("minibatch_sfl")
class MiniBatchSFL(Algorithm):
    client_side = PER_CLIENT
    server_side = ONE
    schedule = LOCKSTEP

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[torch.Tensor]:
        giant = torch.cat([s.smashed for s in batch])  # Z: size B = Σ b_n, clients in slot order
        grad = server.step(giant, torch.cat([s.labels for s in batch]))
        return [a * self.grad_scale(len(a), len(giant)) for a in grad.split([len(s.labels) for s in batch])]

    def grad_scale(self, b_n: int, giant: int) -> float:
        """``local_mean``: a_n = ∂L_n/∂z_n for client n's own mean loss L_n, i.e. B/b_n times its slice of
        ∂L/∂Z, so each client takes a true local-SGD step; ``global_mean``: the raw slice."""
        return giant / b_n if self.cfg.client_grad_scale == "local_mean" else 1.0
