"""SFL-V2 (spec §3): one server-side model stepped once per client batch, the clients taking turns; the
fed server averages the client sides at round end.

    for round r:
        every client n starts from w_c^r                          client_side = PER_CLIENT
        clients take turns (``sflv2_schedule``):                    schedule
            client_sequential (reference code): in a random order, each doing all τ iterations;
            interleaved (SplitFed paper text): every iteration, in a random order, one batch each
        main server, ONE model w_s: one step per client batch,     server_side = ONE
            the next client seeing the model the previous one left
        round end: w_c^{r+1} := Σ p_n w_{c,n}
"""

import torch

from .base import ONE, PER_CLIENT, Algorithm, MainServer, Smashed, register


@register("sfl_v2")
class SFLV2(Algorithm):
    client_side = PER_CLIENT
    server_side = ONE

    @property
    def schedule(self) -> str:
        return self.cfg.sflv2_schedule  # "client_sequential" | "interleaved", the base's schedule names

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[torch.Tensor]:
        return server.step_each(batch)
