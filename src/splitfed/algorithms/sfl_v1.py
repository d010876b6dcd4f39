"""SFL-V1 (spec §3): each client trains with its own server-side copy on the main server; at round end
the main server averages the copies and the fed server the client sides.

    for round r:
        every client n starts from (w_c^r, w_s^r)     client_side = PER_CLIENT, server_side = PER_CLIENT
        each iteration, each client n: send (z_n, y_n)  schedule = LOCKSTEP (the clients are independent)
            main server: one step of w_{s,n} on         main_server
            client n's batch; return ∂L_n/∂z_n
        round end: w_s^{r+1} := Σ p_n w_{s,n};          fed_server (over every per-client copy)
                   w_c^{r+1} := Σ p_n w_{c,n}

With plain SGD and η_c = η_s it equals FedAvg of the whole model for any τ (a test).
"""

import torch

from .base import LOCKSTEP, PER_CLIENT, Algorithm, MainServer, Smashed, register


@register("sfl_v1")
class SFLV1(Algorithm):
    client_side = PER_CLIENT
    server_side = PER_CLIENT
    schedule = LOCKSTEP

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[torch.Tensor]:
        return server.step_each(batch)  # each batch steps the copy of the client that sent it
