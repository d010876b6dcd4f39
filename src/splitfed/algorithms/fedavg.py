"""FL, FedAvg (spec §3): no split; each client trains the whole model τ iterations from the global model,
and the server averages the models with weights p_n.

H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017.

    for round r:
        every client n starts from w^r                 fed_server (Average): download
        each client n: τ SGD steps of the whole model   parts = WHOLE (no main server), client
        w^{r+1} := Σ p_n w_n                           fed_server (Average): upload, end
"""

from collections.abc import Generator

import torch

from .base import LOCKSTEP, WHOLE, Algorithm, Clients, Message, register


@register("fedavg")
class FedAvg(Algorithm):
    """FL (FedAvg): the whole model trains on each client; the fed server averages."""

    parts = WHOLE
    schedule = LOCKSTEP  # the clients are independent: any order gives the same result

    def client(self, clients: Clients, x: torch.Tensor, y: torch.Tensor) -> Generator[Message, Message, None]:
        clients.step_model(x, y)  # one step of the whole model; nothing for a main server
        yield from ()
