"""SFL-V1 (spec §3): each client trains with its own server-side copy on the main server; at round end
the main server averages the copies and the fed server the client sides.

C. Thapa, M. A. P. Chamikara, S. Camtepe, L. Sun, "SplitFed: When Federated Learning Meets Split
Learning", AAAI 2022 (arXiv 2004.12088).

    for round r:
        every client n starts from (w_c^r, w_s^r)     fed_server; parts: server per client (not shared)
        each iteration, each client n: send (z_n, y_n)  schedule = LOCKSTEP (the clients are independent)
            main server: one step of w_{s,n} on         main_server
            client n's batch; return ∂L_n/∂z_n
        round end: w_s^{r+1} := Σ p_n w_{s,n};          combine_server_copies
                   w_c^{r+1} := Σ p_n w_{c,n}           fed_server (Average)

With plain SGD and η_c = η_s it equals FedAvg of the whole model for any τ (a test).
"""

from .base import LOCKSTEP, MAIN_SERVER, Algorithm, MainServer, Message, Part, Smashed, register


@register("sfl_v1")
class SFLV1(Algorithm):
    """SFL-V1: a server-side copy per client, averaged each round with the client sides."""

    parts = (Part("client"), Part("server", MAIN_SERVER, shared=False))
    schedule = LOCKSTEP

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[Message]:
        # each batch steps the copy of the client that sent it
        return [{"smashed_grad": a} for a in server.step_each(batch)]
