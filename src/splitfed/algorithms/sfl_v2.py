"""SFL-V2 (spec §3): one server-side model stepped once per client batch, the clients taking turns; the
fed server averages the client sides at round end.

C. Thapa, M. A. P. Chamikara, S. Camtepe, L. Sun, "SplitFed: When Federated Learning Meets Split
Learning", AAAI 2022 (arXiv 2004.12088).

    for round r:
        every client n starts from w_c^r                          fed_server (Average)
        clients take turns (``sfl_v2.schedule``):                    schedule
            client_sequential (reference code): in a random order, each doing all τ iterations;
            interleaved (SplitFed paper text): every iteration, in a random order, one batch each
        main server, ONE model w_s: one step per client batch,     parts: server shared; main_server
            the next client seeing the model the previous one left
        round end: w_c^{r+1} := Σ p_n w_{c,n}                      fed_server (Average)
"""

from .base import SPLIT, Algorithm, MainServer, Message, Smashed, register


@register("sfl_v2")
class SFLV2(Algorithm):
    """SFL-V2: one server-side model stepped per client batch, clients taking turns."""

    parts = SPLIT

    @property
    def schedule(self) -> str:  # type: ignore[override]
        return self.cfg.sfl_v2.schedule  # "client_sequential" | "interleaved", the base's schedule names

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[Message]:
        return [{"smashed_grad": a} for a in server.step_each(batch)]
