"""A round's bookkeeping, once for the in-process executors and the network roles.

Who takes part and in which slots (``plan_round``: the same order wherever the round runs); a round's
start on a process (``begin_round``: its counters from zero, its learning rate); a participant's view of
its round (``client_view``); the main server's parts at a round's end (``ServerParts``) and the fed
server's (``fed_round_end``); the round's times (``RoundClock``); the model as a checkpoint holds it
(``model_dict``, ``model_on``). The local executor, the main server, the fed server and the clients use
these, so a change to what a round is happens in one place.
"""

import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch

from ..algorithms.base import Algorithm, ClientRound, FedServer, Model, Payload, Slot, slots
from ..engine.context import Context
from ..engine.side import Side, State
from ..errors import SplitfedError


@dataclass
class RoundPlan:
    """One round of a definition: who takes part, their weights, and the slots in execution order."""

    participants: list[int]
    weights: dict[int, float]
    slots: list[Slot]
    first: dict[int, int]  # participant -> index of its first slot
    last: dict[int, int]  # participant -> index of its last slot

    @property
    def turns(self) -> list[int]:
        """The participants in the order they start."""
        return sorted(self.first, key=self.first.__getitem__)

    @property
    def finish_order(self) -> list[int]:
        """The participants in the order they finish (the order their uploads reach the fed server)."""
        order = [n for slot in self.slots for n, _ in slot]
        return sorted(self.last, key=lambda n: (self.last[n], order.index(n)))


def plan_of(parts: list[int], weights: list[float], plan: list[Slot]) -> RoundPlan:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, slot in enumerate(plan):
        for n, _ in slot:
            first.setdefault(n, k)
            last[n] = k
    return RoundPlan(parts, dict(zip(parts, weights, strict=True)), plan, first, last)


def plan_round(algo: Algorithm, ctx: Context, rnd: int, clients: list[int], one_by_one: bool) -> RoundPlan:
    """The round's slots; ``one_by_one``: independent clients run each whole in turn (same result)."""
    parts = algo.participants(clients)
    iters = algo.iterations(ctx.tau, clients)

    def order(ps: list[int], *keys: object) -> list[int]:
        return ctx.order(ps, rnd, *keys)

    if one_by_one:
        plan = [[(n, t)] for n in parts for t in range(iters)]
    else:
        plan = slots(algo.schedule, parts, iters, order)
    return plan_of(parts, ctx.weights(parts), plan)


def begin_round(ctx: Context, rnd: int) -> None:
    """Round ``rnd`` starts on this process: its measures from zero (the loss meter, the bytes on the link,
    each side's samples and steps) and every side at the round's learning rate (lr_schedule)."""
    ctx.meter.reset()
    ctx.link.reset()
    ctx.set_round(rnd)
    for side in ctx.sides:
        side.samples = side.steps = 0


class Scratch(MutableMapping):
    """Copy k's round-local tensors of one side, as a dict (``ClientRound.scratch(part)``)."""

    def __init__(self, side: Side, k: int) -> None:
        self.side, self.k = side, k

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.side.scratch[name][self.k]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.side.set_scratch(self.k, name, value)

    def __delitem__(self, name: str) -> None:
        raise TypeError("round-local tensors are overwritten, not deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self.side.scratch)

    def __len__(self) -> int:
        return len(self.side.scratch)


def client_view(
    n: int, rnd: int, sides: dict[str, Side], copy: int, start: Payload, state: dict, num_clients: int
) -> ClientRound:
    """Client n's round ``rnd`` as its definition's hooks see it: its client parts (``sides``, by name) on
    copy ``copy``, what it starts from, its own state."""
    return ClientRound(
        n,
        rnd,
        {part: side.state(copy) for part, side in sides.items()},
        start,
        state,
        lambda part: Scratch(sides[part], copy),
        {part: side.layout for part, side in sides.items()},
        {part: side.lr_value for part, side in sides.items()},
        num_clients,
    )


class ServerParts:
    """The main server's parts at a round's end: a shared part as its one copy left it; a part with a
    copy per client combined from the copies (the definition's ``combine_server_copies``), each added with
    its client's weight when that client's round ends."""

    def __init__(self, algo: Algorithm, sides: dict[str, Side]) -> None:
        self.algo, self.sides = algo, sides
        self.sums = {p.name: algo.combine_server_copies() for p in algo.server_parts if not p.shared}

    def add(self, copy: int, weight: float) -> None:
        for name, acc in self.sums.items():
            acc.add(self.sides[name].state(copy), weight)

    def result(self) -> dict[str, State]:
        return {
            p.name: self.sides[p.name].state(0).clone() if p.shared else self.sums[p.name].result
            for p in self.algo.server_parts
        }


def fed_round_end(algo: Algorithm, fed: FedServer) -> Model:
    """The client parts the definition's fed server makes at a round's end (every one, or an error)."""
    new = fed.end()
    if set(new) != {p.name for p in algo.client_parts}:
        raise SplitfedError(
            f"{algo.name}: its fed server returned parts {sorted(new)}, not the client parts "
            f"{sorted(p.name for p in algo.client_parts)}"
        )
    return new


class RoundClock:
    """A round's times as its record reports them: ``train_time_s`` (the training alone),
    ``round_time_s`` (the whole round: evaluation and divergence included) and ``wall_time_s`` (the sum of
    the run's rounds, those before a resume included: ``history``'s last)."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self.wall = history[-1]["wall_time_s"] if history else 0.0
        self.start()

    def start(self) -> None:
        """The round begins (and its training, unless ``train`` says later)."""
        self.started = self.training = time.perf_counter()
        self.trained_at: float | None = None

    def train(self) -> None:
        self.training = time.perf_counter()

    def trained(self) -> None:
        self.trained_at = time.perf_counter()

    def times(self) -> dict[str, float]:
        """The round's times, now that it ends."""
        now = time.perf_counter()
        self.wall += now - self.started
        trained = now if self.trained_at is None else self.trained_at
        return {
            "train_time_s": trained - self.training,
            "round_time_s": now - self.started,
            "wall_time_s": self.wall,
        }


def model_dict(model: Model) -> dict[str, dict[str, torch.Tensor]]:
    """The model as a checkpoint holds it (and a template of what it must hold): each part's tensors."""
    return {name: state.to_dict() for name, state in model.items()}


def model_on(saved: dict[str, dict[str, torch.Tensor]], device: torch.device) -> Model:
    """A checkpoint's model back as states on ``device``."""
    return {name: State.from_dict(on_device(state, device)) for name, state in saved.items()}


def on_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}
