"""What an executor needs of the engine to run one algorithm: data streams, sides, link, round order."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .._rng import generator
from ..config import Config
from ..data import ClientStreams
from .link import Link
from .optim import LossFn, LRSchedule, SideOptimizer, side_optimizer
from .side import Meter, Side, State
from .user_optim import TorchOptimizer

UNION = -1  # the participant that holds the union of the round's clients' data (centralized training)


@dataclass
class PartSpec:
    """One part of what an algorithm trains: its template module, initial state, whose optimizer settings
    it trains with ("client" or "server"), and its training FLOPs per sample (forward + backward)."""

    module: nn.Module
    init: State
    optimizer: str
    flops: float


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
    # the mean loss of a batch, loss(output, target), on every side created after it is set (Side's
    # docstring has the contract)
    loss: LossFn = F.cross_entropy
    # the parts of the algorithm being run, by name (made by the executor from its definition)
    parts: dict[str, PartSpec] = field(default_factory=dict)
    _schedules: dict[str, LRSchedule] = field(default_factory=dict, init=False, repr=False)  # by part

    @property
    def num_clients(self) -> int:
        return len(self.data_sizes)

    @property
    def copies_per_round(self) -> int:
        """How many clients take part in a round (so how many client-side copies can be live at once)."""
        return self.cfg.clients_per_round or self.num_clients

    def side(self, part: str, copies: int, location: str, vectorised: bool = False) -> Side:
        """``copies`` of part ``part``, computed at ``location`` ("client" or "main_server"), trained with
        its optimizer settings; every copy starts at the part's initial state."""
        spec = self.parts[part]
        opt = side_optimizer(self.cfg, spec.optimizer, spec.module)
        side = Side(
            spec.module,
            spec.init,
            copies,
            opt,
            location=location,
            meter=self.meter,
            vectorised=vectorised,
            loss=self.loss,
            precision=self.cfg.precision,
            channels_last=self.cfg.channels_last,
        )
        side.part, side.flops_per_sample = part, spec.flops
        self.sides.append(side)
        self._schedule(part, opt)
        return side

    def set_round(self, rnd: int) -> None:
        """Set every side's learning rate to round ``rnd``'s (from 1) under its side's ``lr_schedule``;
        call it before the round trains. The rate depends on ``rnd`` alone, so a resumed run needs
        nothing saved for it."""
        for side in self.sides:
            side.set_lr(self._schedule(side.part).rates(rnd))

    def rates(self, rnd: int) -> dict[str, float]:
        """Round ``rnd``'s rate of the client-side and the server-side optimizers (their first parameter
        group's), as ``lr_client`` and ``lr_server``: what a round's record reports."""
        found: dict[str, float] = {}
        for part, spec in self.parts.items():
            if f"lr_{spec.optimizer}" not in found:
                found[f"lr_{spec.optimizer}"] = self._schedule(part).rates(rnd)[0]
        return dict(sorted(found.items()))

    def _schedule(self, part: str, opt: SideOptimizer | None = None) -> LRSchedule:
        """Part ``part``'s schedule (the same for each of its sides), made on first use: its optimizer
        given as an object is the schedule's twin, so each parameter group gets its own rate."""
        if part not in self._schedules:
            spec = self.parts[part]
            opt = opt or side_optimizer(self.cfg, spec.optimizer, spec.module)
            twin = opt if isinstance(opt, TorchOptimizer) else None
            self._schedules[part] = LRSchedule(self.cfg, opt.lr, spec.optimizer, twin)
        return self._schedules[part]

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
