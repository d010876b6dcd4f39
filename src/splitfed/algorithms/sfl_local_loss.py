"""Split federated learning with a client-side local loss: each client trains its side on the loss of a
small auxiliary head of its own and never waits for the main server's gradient; the main server trains
on the smashed data it receives.

D.-J. Han, H. I. Bhatti, J. Lee, J. Moon, "Accelerating Federated Learning with Split Learning on Locally
Generated Losses", ICML 2021 Workshop on Federated Learning for User Privacy and Data Confidentiality.

    for round r:
        every client n starts from (w_c^r, a^r)                  fed_server (Average): download
        each iteration, every client n in parallel:              schedule = LOCKSTEP, client
            z_n := f_c(x_n); L_n := loss(a(z_n), y_n)            parts: aux (the head a, on the client)
            step w_{c,n} and a_n on ∇L_n (no wait)               step("aux"), backward("client")
            send (z_n, y_n)                                       yield smashed, labels (no reply)
        main server: one step of w_s per client batch            main_server: step_each
        round end: w_c, a := Σ p_n (w_{c,n}, a_n); w_s kept      fed_server (Average); server shared

The auxiliary head is a linear classifier on the flattened smashed data (the paper's smallest auxiliary
network); it is left out of the evaluated and exported model. The main server steps once per client batch
in the slot's order (as SFL-V2 does within an iteration).
"""

import math
from collections.abc import Generator

import torch
from torch import nn

from .base import (
    CLIENT,
    LOCKSTEP,
    MAIN_SERVER,
    Algorithm,
    Clients,
    MainServer,
    Message,
    Part,
    Smashed,
    register,
)


@register("sfl_local_loss")
class SFLLocalLoss(Algorithm):
    """Clients step on an auxiliary head's local loss; the main server trains on their smashed data."""

    parts = (
        Part("client", CLIENT),
        Part("aux", CLIENT, in_model=False),
        Part("server", MAIN_SERVER, shared=True),
    )
    schedule = LOCKSTEP

    def build_part(self, name: str, smashed: torch.Size, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(smashed), num_classes))

    def client(self, clients: Clients, x: torch.Tensor, y: torch.Tensor) -> Generator[Message, Message, None]:
        z = clients.forward("client", x)
        grad = clients.step("aux", z, y)  # the local loss steps the head ...
        clients.backward("client", grad)  # ... and the client side, before anything comes back
        yield {"smashed": z, "labels": y}

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[Message]:
        server.step_each(batch)
        return [{} for _ in batch]
