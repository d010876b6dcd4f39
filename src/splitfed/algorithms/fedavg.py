"""FL, FedAvg (spec §3): no split; each client trains the whole model τ iterations from the global model,
and the server averages the models with weights p_n.

    for round r:
        every client n starts from w^r             client_side = PER_CLIENT, server_side = ON_CLIENT
        each client n: τ SGD steps of the whole model   schedule = LOCKSTEP (the clients are independent)
        w^{r+1} := Σ p_n w_n                           fed_server
"""

from .base import LOCKSTEP, ON_CLIENT, PER_CLIENT, Algorithm, register


@register("fedavg")
class FedAvg(Algorithm):
    client_side = PER_CLIENT
    server_side = ON_CLIENT
    schedule = LOCKSTEP
