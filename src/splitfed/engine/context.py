"""What an algorithm sees of the engine: its data, sides, message link and round schedule."""

from dataclasses import dataclass, field

import torch
from torch import nn

from .._rng import generator
from ..config import Config
from ..data import ClientStreams
from .link import Link
from .side import SGD, Meter, Side, State


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

    def _side(
        self,
        module: nn.Module,
        init: State,
        copies: int,
        lr: float | None,
        location: str,
        vectorised: bool = False,
    ) -> Side:
        opt = SGD(lr or self.cfg.lr, self.cfg.momentum, self.cfg.weight_decay)
        side = Side(module, init, copies, opt, location, self.meter, vectorised)
        self.sides.append(side)
        return side

    def client_side(self, copies: int, location: str = "client") -> Side:
        """Copies of the client-side model, trained with η_c; starts at w_c^0."""
        vectorised = self.cfg.execution == "vmap"
        return self._side(self.client_module, self.init_c, copies, self.cfg.client_lr, location, vectorised)

    def server_side(self, copies: int, location: str = "main_server") -> Side:
        """Copies of the server-side model, trained with η_s; starts at w_s^0."""
        return self._side(self.server_module, self.init_s, copies, self.cfg.server_lr, location)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client n's next mini-batch of b_n samples."""
        return self.streams.batch(n, self.batch_sizes[n])

    def union_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of b samples from the union of all clients' data (centralized training)."""
        return self.streams.batch(self.num_clients, self.cfg.batch_size)

    def weights(self, clients: list[int]) -> list[float]:
        """FedAvg weights p_n = |D_n| / Σ_m |D_m| over the given clients."""
        total = sum(self.data_sizes[n] for n in clients)
        return [self.data_sizes[n] / total for n in clients]

    def order(self, clients: list[int], *keys: object) -> list[int]:
        """The clients in a random order drawn for (keys), e.g. (round,) or (round, iteration)."""
        perm = torch.randperm(
            len(clients), generator=generator(self.cfg.seed_for("sampling"), "order", *keys)
        )
        return [clients[i] for i in perm.tolist()]

    def grad_scale(self, b_n: int, giant: int) -> float:
        """Factor on client n's slice of ∂L/∂Z for the giant-batch mean loss L (spec §2)."""
        return giant / b_n if self.cfg.client_grad_scale == "local_mean" else 1.0
