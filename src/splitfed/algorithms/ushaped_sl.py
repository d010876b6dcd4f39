"""U-shaped split learning: the model cut twice, so that the client holds its head and its tail and the
labels never leave it; the main server holds the body.

P. Vepakomma, O. Gupta, T. Swedish, R. Raskar, "Split learning for health: Distributed deep learning
without sharing raw patient data", arXiv 1812.00564, 2018 (the U-shaped configuration); as vanilla split
learning, clients take turns and hand their parts on.

    for round r: clients take turns in a random order        schedule = CLIENT_SEQUENTIAL
        client n starts from the parts the last one left      fed_server (Relay, as SL)
        for each iteration:
            client: z := head(x); send z (not y)              client: yield smashed
            main server: h := body(z); send h                 main_server: yield features
            client: L := loss(tail(h), y); step the tail;     client: step("tail"); yield features_grad
                send ∂L/∂h
            main server: back-propagate into the body, step;  main_server: backward; return smashed_grad
                send ∂L/∂z
            client: back-propagate into the head, step        client: backward("client")

``[ushaped_sl] tail_cut`` is the second cut (default: the model's last, so the tail is the classifier).
With several clients in one slot (another schedule), the body steps on their joint mean loss Σ (b_n/B) L_n
and each client gets the gradient of its own mean loss, as MiniBatch-SFL's ``local_mean``.
"""

from collections.abc import Generator

import torch

from ..errors import SplitfedError
from .base import (
    CLIENT,
    CLIENT_SEQUENTIAL,
    MAIN_SERVER,
    Algorithm,
    Clients,
    FedServer,
    MainServer,
    Message,
    Part,
    Smashed,
    register,
)
from .sl import Relay


@register("ushaped_sl")
class UShapedSL(Algorithm):
    """Split learning with the head and the tail (and the labels) on the client."""

    parts = (Part("client", CLIENT), Part("server", MAIN_SERVER, shared=True), Part("tail", CLIENT))
    schedule = CLIENT_SEQUENTIAL
    knobs = ("ushaped_sl.tail_cut",)

    def cuts(self, cut_layer: int | str, cut_points: list[int | str]) -> list[int | str]:
        given = self.cfg.ushaped_sl.tail_cut
        tail = given if given is not None else cut_points[-1]
        if isinstance(tail, str) != isinstance(cut_layer, str):
            raise SplitfedError(
                f"ushaped_sl.tail_cut ({tail!r}) and cut_layer ({cut_layer!r}) must both be numbers or both "
                "module names"
            )
        # Names are ordered by the model's forward; splitting refuses a tail named before the cut.
        if isinstance(tail, int) and isinstance(cut_layer, int) and tail <= cut_layer:
            raise SplitfedError(
                f"ushaped_sl.tail_cut ({tail}) must come after cut_layer ({cut_layer}); cuts: {cut_points}"
            )
        return [cut_layer, tail]

    def client(self, clients: Clients, x: torch.Tensor, y: torch.Tensor) -> Generator[Message, Message, None]:
        z = clients.forward("client", x)
        reply = yield {"smashed": z}  # the labels stay here
        grad_h = clients.step("tail", reply["features"], y)  # the loss, on the client
        reply = yield {"features_grad": grad_h}
        clients.backward("client", reply["smashed_grad"])

    def main_server(
        self, server: MainServer, batch: list[Smashed]
    ) -> Generator[list[Message], list[Smashed], list[Message]]:
        sizes = [len(s.smashed) for s in batch]
        giant = sum(sizes)
        h = server.forward("server", torch.cat([s.smashed for s in batch]))
        grads = yield [{"features": f} for f in h.split(sizes)]
        joint = torch.cat([g["features_grad"] * (b / giant) for g, b in zip(grads, sizes, strict=True)])
        grad_z = server.backward("server", joint)
        return [{"smashed_grad": a * (giant / b)} for a, b in zip(grad_z.split(sizes), sizes, strict=True)]

    def fed_server(self) -> FedServer:
        return Relay()
