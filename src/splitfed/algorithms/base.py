"""What an algorithm is: what each party does, and the schedule that orders them.

An algorithm is a definition, not a loop. It says:

- **who holds which model copies in a round** (``client_side``, ``server_side``): each participant its own
  client-side copy from the global w_c^r (``PER_CLIENT``) or one copy handed from client to client
  (``RELAY``); the main server ONE server-side model, a copy PER_CLIENT, or no main server at all
  (``ON_CLIENT``: the whole model trains on the client);
- **the schedule** that orders the round's (client, iteration) pairs into *slots*, each a set of client
  batches the main server handles together: ``LOCKSTEP`` (every client at iteration t), or one client
  batch at a time in ``CLIENT_SEQUENTIAL`` or ``INTERLEAVED`` order (``slots``, below);
- **what the main server does with one slot's smashed data** (``main_server``): the only computation that
  differs between the split algorithms;
- **what the fed server does at round end** (``fed_server``): Σ_n p_n w_n over the copies that were held
  per client (client sides always; the main server's per-client copies too); a single copy is kept.

What a client does is the same in every algorithm and stated once here: per iteration it draws a batch
(x_n, y_n) of b_n samples; a split client sends z_n = f_c(x_n; w_{c,n}) with y_n to the main server,
back-propagates the smashed_grad it gets back and steps w_{c,n}; an ``ON_CLIENT`` client takes one SGD
step of the whole model. Executors (sequential, batched, distributed, the network services) run this
definition; none of them knows an algorithm's name.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..config import Config
from ..engine.side import State, WeightedSum
from ..registry import Registry

# client_side
PER_CLIENT = "per_client"  # each participant trains its own copy, from w_c^r; averaged at round end
RELAY = "relay"  # one copy, handed from client to client in the schedule's order; kept at round end
# server_side (PER_CLIENT as above, held by the main server)
ONE = "one"  # the main server trains one model, shared by every client; kept at round end
ON_CLIENT = "on_client"  # no split: each participant trains the whole model; averaged at round end
# schedules
LOCKSTEP = "lockstep"  # every iteration, every participant sends one batch; one slot holds them all
CLIENT_SEQUENTIAL = "client_sequential"  # participants in a random order, each doing all its iterations
INTERLEAVED = "interleaved"  # every iteration, the participants in a random order, one batch each

UNION = -1  # the participant of centralized training: the union of the round's clients' data


@dataclass
class Smashed:
    """What client ``client`` sent for one iteration: its smashed data z_n and labels y_n."""

    client: int
    smashed: torch.Tensor
    labels: torch.Tensor


class MainServer(Protocol):
    """The main server's models as an algorithm sees them; executors implement both calls."""

    def step(self, smashed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ONE step of the shared model on the mean loss of (smashed, labels); returns ∂loss/∂smashed."""
        ...

    def step_each(self, batch: list[Smashed]) -> list[torch.Tensor]:
        """For each client's batch, one step of the model that serves that client (its own copy under
        ``server_side = PER_CLIENT``, else the shared one, in the given order); each ∂loss_n/∂z_n."""
        ...


class Aggregate(Protocol):
    """How the fed server combines the participants' models: one at a time, then the result."""

    def add(self, state: State, weight: float) -> None: ...

    @property
    def result(self) -> State: ...


Slot = list[tuple[int, int]]  # (participant, iteration t) pairs handled together by the main server


class Algorithm:
    """One training algorithm, as the parties' steps and their order. Subclasses set the class
    attributes and, if split, ``main_server``; see the module docstring."""

    name = ""  # set by the registry
    client_side = PER_CLIENT
    server_side = ONE

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @property
    def split(self) -> bool:
        """Whether the model is cut: clients send smashed data to a main server."""
        return self.server_side != ON_CLIENT

    @property
    def schedule(self) -> str:
        return LOCKSTEP

    @property
    def independent_clients(self) -> bool:
        """Whether, within a round, no participant's work touches a model another one uses: then any
        order of their slots gives the same result (the sequential executor runs them one by one)."""
        return self.client_side == PER_CLIENT and self.server_side in (PER_CLIENT, ON_CLIENT)

    def participants(self, clients: list[int]) -> list[int]:
        """Who trains in a round with these clients (centralized: the union of their data)."""
        return clients

    def iterations(self, tau: int, clients: list[int]) -> int:
        """Iterations each participant runs per round."""
        return tau

    def main_server(self, server: MainServer, batch: list[Smashed]) -> list[torch.Tensor]:
        """The main server's work on one slot: returns the smashed_grad for each client of ``batch``."""
        raise NotImplementedError(f"{self.name} splits the model but defines no main_server step")

    def fed_server(self) -> Aggregate:
        """Round end, for copies held per participant: w^{r+1} := Σ_n p_n w_n (the weights p_n sum to 1).

        Returned as an accumulator that takes each participant's model as it arrives (``add(w_n, p_n)``,
        then ``result``), so no executor holds every client's copy at once. The optimizer state is averaged
        with the weights (spec §7; engine/optim.py), which keeps the τ = 1 identities exact with momentum.
        """
        return WeightedSum()


def slots(
    schedule: str, participants: list[int], iterations: int, order: Callable[..., list[int]]
) -> list[Slot]:
    """A round's slots in the order the main server handles them. ``order(participants, *keys)`` draws a
    random order of the participants for a round (keys: ()) or for one of its iterations (keys: (t,))."""
    if schedule == LOCKSTEP:
        return [[(n, t) for n in participants] for t in range(iterations)]
    if schedule == CLIENT_SEQUENTIAL:
        return [[(n, t)] for n in order(participants) for t in range(iterations)]
    if schedule == INTERLEAVED:
        return [[(n, t)] for t in range(iterations) for n in order(participants, t)]
    raise ValueError(f"unknown schedule {schedule!r}")


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


def register(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Register an algorithm class under ``name`` (also its ``name`` attribute)."""

    def add(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        return ALGORITHMS.register(name)(cls)

    return add


def create(cfg: Config, name: str) -> Algorithm:
    """The algorithm ``name`` (a value of cfg.algorithm) for this config."""
    return ALGORITHMS.get(name)(cfg)
