"""MiniBatch-SFL (spec §2): clients train the client side FL-style; the main server trains ONE server-side
model on all clients' smashed data of an iteration as one giant mini-batch, one step per iteration.

C. Huang, G. Tian, M. Tang, "When MiniBatch SGD Meets SplitFed Learning: Convergence Analysis and
Performance Evaluation", arXiv 2308.11953, 2023.

    for round r:
        fed server: every participating client sets w_{c,n} := w_c^r         fed_server (Average)
        repeat τ times, each client n in parallel: send (z_n, y_n)            schedule = LOCKSTEP, client
            main server, ONE model w_s:                                       parts: server shared
                Z, Y := the giant mini-batch; ONE step of w_s on its mean loss   main_server
                a_n := client n's slice of ∂L/∂Z, scaled per minibatch_sfl.client_grad_scale
            each client n: back-propagate a_n through f_c; step w_{c,n}       client
        fed server: w_c^{r+1} := Σ_n p_n w_{c,n}; w_s is never averaged        fed_server (Average)
"""

import torch

from .base import LOCKSTEP, SPLIT, Algorithm, MainServer, Message, Smashed, register


@register("minibatch_sfl")
class MiniBatchSFL(Algorithm):
    """MiniBatch-SFL: ONE server step per iteration on all clients' smashed data (the giant batch)."""

    parts = SPLIT
    schedule = LOCKSTEP

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[Message]:
        giant = torch.cat([s.smashed for s in batch])  # Z: size B = Σ b_n, clients in slot order
        grad = server.step(giant, torch.cat([s.labels for s in batch]))
        slices = grad.split([len(s.labels) for s in batch])
        return [{"smashed_grad": a * self.grad_scale(len(a), len(giant))} for a in slices]

    def grad_scale(self, b_n: int, giant: int) -> float:
        """``local_mean``: a_n = ∂L_n/∂z_n for client n's own mean loss L_n, i.e. B/b_n times its slice of
        ∂L/∂Z, so each client takes a true local-SGD step; ``global_mean``: the raw slice."""
        return giant / b_n if self.cfg.minibatch_sfl.client_grad_scale == "local_mean" else 1.0
