"""Vanilla split learning (spec §3): one client-side and one server-side model, no averaging.

O. Gupta, R. Raskar, "Distributed learning of deep neural network over multiple agents", Journal of
Network and Computer Applications 116, 2018; P. Vepakomma, O. Gupta, T. Swedish, R. Raskar, "Split
learning for health: Distributed deep learning without sharing raw patient data", arXiv 1812.00564, 2018.

    for round r:
        clients take turns in a random order                        schedule = CLIENT_SEQUENTIAL
            client n receives the client-side model the previous     fed_server (Relay): download
            client left (the first: the last round's),
            trains τ iterations with the shared server,              parts: server shared; main_server
            and hands it on                                          fed_server (Relay): upload
        nothing is averaged: both models are kept                   fed_server (Relay): end
"""

from .base import (
    CLIENT_SEQUENTIAL,
    SPLIT,
    Algorithm,
    FedServer,
    MainServer,
    Message,
    Model,
    Payload,
    Smashed,
    register,
)


class Relay(FedServer):
    """The fed server of split learning: each client starts from the model the client before it in the
    round's order left (clients left out are passed over); the round's model is the last one's."""

    def begin(self, rnd: int, model: Model, turns: list[int], weights: dict[int, float]) -> None:
        self.turns, self.held = list(turns), model
        self.done: set[int] = set()

    def download(self, n: int) -> Payload | None:
        for m in self.turns[: self.turns.index(n)]:
            if m not in self.done:
                return None  # m still trains: n waits for what m hands on
        return Payload(self.held)

    def upload(self, n: int, payload: Payload) -> None:
        self.held = {name: state.clone() for name, state in payload.model.items()}
        self.done.add(n)

    def skip(self, n: int) -> None:
        self.done.add(n)

    def end(self) -> Model:
        return self.held


@register("sl")
class SL(Algorithm):
    """Vanilla split learning: one model, handed from client to client; nothing averaged."""

    parts = SPLIT
    schedule = CLIENT_SEQUENTIAL

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[Message]:
        return [{"smashed_grad": a} for a in server.step_each(batch)]

    def fed_server(self) -> FedServer:
        return Relay()
