"""What an executor needs of the engine to run one algorithm: data streams, sides, link, round order."""

from dataclasses import dataclass, field

import torch
from torch import nn

from .._rng import generator
from ..config import Config
from ..data import ClientStreams
from .link import Link
from .side import SGD, Meter, Side, State

UNION = -1  # the participant that holds the union of the round's clients' data (centralized training)


@dataclass
class Context:
    """Shared by one algorithm's rounds. Stream n < N is client n's data; stream N is their union."""

    cfg: Config
    streams: ClientStreams
    client_module: nn.Module  # template of the client-side half
    server_module: nn.Module  # template of the server-side half
    init_c: State  # w_c^0, the same for every algorithm
    init_s: State  # w_s^0
    tau: int  # local iterations per round
    batch_sizes: list[int]  # b_n
    data_sizes: list[int]  # |D_n|
    link: Link
    meter: Meter = field(default_factory=Meter)
    sides: list[Side] = field(default_factory=list)

    @property
    def num_clients(self) -> int:
        return len(self.data_sizes)

    @property
    def copies_per_round(self) -> int:
        """How many clients take part in a round (so how many client-side copies can be live at once)."""
        return self.cfg.clients_per_round or self.num_clients

    def _side(self, module: nn.Module, init: State, copies: int, lr: float | None, **kw) -> Side:
        opt = SGD(lr or self.cfg.lr, self.cfg.momentum, self.cfg.weight_decay)
        side = Side(module, init, copies, opt, meter=self.meter, **kw)
        self.sides.append(side)
        return side

    def client_side(self, copies: int, location: str = "client", vectorised: bool = False) -> Side:
        """Copies of the client-side model, trained with η_c; starts at w_c^0."""
        return self._side(
            self.client_module,
            self.init_c,
            copies,
            self.cfg.client_lr,
            location=location,
            vectorised=vectorised,
        )

    def server_side(self, copies: int, location: str = "main_server", vectorised: bool = False) -> Side:
        """Copies of the server-side model, trained with η_s; starts at w_s^0."""
        return self._side(
            self.server_module,
            self.init_s,
            copies,
            self.cfg.server_lr,
            location=location,
            vectorised=vectorised,
        )

    def batch_size(self, n: int) -> int:
        """b_n; the union draws batches of b."""
        return self.cfg.batch_size if n == UNION else self.batch_sizes[n]

    def batches(self, participants: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Each participant's next mini-batch of b_n samples, concatenated: (x, y, sizes)."""
        sizes = [self.batch_size(n) for n in participants]
        streams = [self.num_clients if n == UNION else n for n in participants]
        x, y = self.streams.batches(streams, sizes)
        return x, y, sizes

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Participant n's next mini-batch of b_n samples."""
        x, y, _ = self.batches([n])
        return x, y

    def weights(self, participants: list[int]) -> list[float]:
        """FedAvg weights p_n = |D_n| / Σ_m |D_m| over the given participants."""
        sizes = [sum(self.data_sizes) if n == UNION else self.data_sizes[n] for n in participants]
        return [s / sum(sizes) for s in sizes]

    def order(self, clients: list[int], *keys: object) -> list[int]:
        """The clients in a random order drawn for (keys), e.g. (round,) or (round, iteration)."""
        perm = torch.randperm(
            len(clients), generator=generator(self.cfg.seed_for("sampling"), "order", *keys)
        )
        return [clients[i] for i in perm.tolist()]
