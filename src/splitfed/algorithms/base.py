"""What an algorithm is: what each party does, and in what order.

An algorithm is a definition, not a loop. Executors (one client at a time, clients batched,
torch.distributed, the gRPC services) run it; none of them knows its name. A definition states:

- its **parts** (``parts``): the pieces of the model, and any module of its own (an auxiliary head), each
  with the party that trains it: every client its own copy (``CLIENT``), or the main server (``MAIN_SERVER``)
  one model for every client (``shared``) or a copy per client;
- the **schedule** that orders a round's (client, iteration) pairs into *slots*, the sets of client batches
  the main server handles together (``LOCKSTEP``, ``CLIENT_SEQUENTIAL``, ``INTERLEAVED``; ``slots``);
- what a **client** does per iteration (``client``): its steps on its own parts, and each message to the
  main server as a ``yield`` that receives the main server's reply;
- what the **main server** does with one slot's messages (``main_server``): a function returning each
  client's reply, or a generator where it talks to the clients more than once (U-shaped split learning);
- what a client does at **round start and end** (``client_begin``, ``client_end``), with a **state of its
  own** that outlives the round, and the **gradient correction** its optimizer steps with (``correct``);
- what the **fed server** does per round (``fed_server``): it sees the round-start model, hands each
  client what it starts from, takes the uploads as they arrive and may keep state (``FedServer``).

Its vocabulary has modules of its own, re-exported here: ``parts`` (``Part``, ``Model``, ``Message``,
``Payload``), ``schedule`` (the schedules, ``slots``), ``views`` (what the steps see: ``Clients``,
``MainServer``, ``Smashed``, ``ClientRound``), ``corrections`` and ``fed_server`` (``FedServer``,
``Average``). This module holds the definition itself, ``Algorithm``, and the registry of them.

Drift corrections (a proximal term, control variates) are ``Correction`` components: an algorithm may
always have one (FedProx, SCAFFOLD), and any other takes one from the config
(``[correction] prox_mu``, ``control_variates``), so "a proximal term on MiniBatch-SFL's client side" is a
config, not a module.
State is a ``State`` per part (flat parameters, buffers, optimizer state) whose entries are addressable by
parameter and buffer name through the part's ``Layout``.
"""

from collections.abc import Callable, Generator
from typing import Any

import torch

from ..config import Config
from ..engine.context import UNION
from ..engine.state import Layout, WeightedSum
from ..errors import SplitfedError
from ..registry import Registry, import_object
from .corrections import CORRECTIONS, Correction, knob_set, register_correction
from .fed_server import Average, FedServer
from .parts import CLIENT, MAIN_SERVER, SPLIT, WHOLE, Message, Model, Part, Payload
from .schedule import CLIENT_SEQUENTIAL, INTERLEAVED, LOCKSTEP, Slot, slots
from .views import ClientRound, Clients, MainServer, Smashed

# The definition's vocabulary, each in its own module, imported from here as before they were split off.
__all__ = [
    "ALGORITHMS",
    "CLIENT",
    "CLIENT_SEQUENTIAL",
    "CORRECTIONS",
    "INTERLEAVED",
    "LOCKSTEP",
    "MAIN_SERVER",
    "SPLIT",
    "UNION",  # the participant of centralized training
    "WHOLE",
    "Algorithm",
    "Average",
    "ClientRound",
    "Clients",
    "Correction",
    "FedServer",
    "MainServer",
    "Message",
    "Model",
    "Part",
    "Payload",
    "Slot",
    "Smashed",
    "algorithm_class",
    "check_knobs",
    "create",
    "knob_set",
    "register",
    "register_correction",
    "slots",
]


# --- the definition ---------------------------------------------------------------------------------
class Algorithm:
    """One training algorithm, as the parties' steps and their order (see the module docstring).

    The default is a split algorithm with lockstep clients: each client sends z_n = f_c(x_n) and y_n,
    back-propagates the ``smashed_grad`` it gets back and steps; the fed server averages the client sides.
    Subclasses set ``parts`` and ``schedule`` and override the steps that differ.
    """

    name = ""  # set by the registry (or the import path the class was given as)
    parts: tuple[Part, ...] = SPLIT
    schedule: str = LOCKSTEP
    always: tuple[type[Correction], ...] = ()  # corrections the algorithm has whatever the config
    knobs: tuple[str, ...] = ()  # config fields that only this algorithm (and its subclasses) reads

    def __init__(self, cfg: Config, num_clients: int | None = None) -> None:
        self.cfg = cfg
        self.num_clients = cfg.clients if num_clients is None else num_clients
        chosen = list(self.always)
        for knob in CORRECTIONS:
            cls = CORRECTIONS.get(knob)
            if knob_set(cfg, knob) and cls not in chosen:
                chosen.append(cls)
        self.corrections = [cls(cfg) for cls in chosen]
        # each part's parameter and buffer names (``Layout``), set by the executor once it built them
        self.layouts: dict[str, Layout] = {}

    # --- who and how long ----------------------------------------------------------------------------
    def participants(self, clients: list[int]) -> list[int]:
        """Who trains in a round with these clients (centralized: the union of their data)."""
        return clients

    def iterations(self, tau: int, clients: list[int]) -> int:
        """Iterations each participant runs per round."""
        return tau

    # --- parts ---------------------------------------------------------------------------------------
    def cuts(self, cut_layer: int | str, cut_points: list[int | str]) -> list[int | str]:
        """Where the model is cut into its in-model parts (one cut: client | server); a cut is a block
        number or a module's name, as cut_layer is, and ``cut_points`` lists the model's of that kind."""
        return [cut_layer]

    def build_part(self, name: str, smashed: torch.Size, num_classes: int) -> torch.nn.Module:
        """A part the algorithm builds itself (``in_model=False``), given the smashed data's shape."""
        raise NotImplementedError(f"{self.name} declares part {name!r} but does not build it")

    # --- one iteration ----------------------------------------------------------------------------------
    def client(self, clients: Clients, x: torch.Tensor, y: torch.Tensor) -> Generator[Message, Message, None]:
        """A client's iteration on its batch: send z_n and y_n, back-propagate what comes back."""
        z = clients.forward("client", x)
        reply = yield {"smashed": z, "labels": y}
        clients.backward("client", reply["smashed_grad"])

    def main_server(self, server: MainServer, batch: list[Smashed]) -> Any:
        """The main server's work on one slot's messages: each client's reply, in batch order (or a
        generator that yields replies and receives the clients' next messages, then returns the last)."""
        raise NotImplementedError(f"{self.name} has a main server but defines no main_server step")

    # --- a client's round ---------------------------------------------------------------------------
    def client_begin(self, client: ClientRound) -> None:
        """Round start on the client, after it loaded what it starts from."""
        for c in self.corrections:
            c.begin(client)

    def correct(self, part: str, grad: torch.Tensor, params: torch.Tensor, scratch: dict) -> torch.Tensor:
        """The gradient a client's optimizer steps ``part`` with (see Correction.correct)."""
        for c in self.corrections:
            grad = c.correct(part, grad, params, scratch)
        return grad

    def client_end(self, client: ClientRound) -> dict[str, torch.Tensor]:
        """Round end on the client: extras to upload beside its model."""
        extras: dict[str, torch.Tensor] = {}
        for c in self.corrections:
            extras |= c.end(client)
        return extras

    # --- round ends ---------------------------------------------------------------------------------
    def fed_server(self) -> FedServer:
        """The fed server's rule, one per run: Σ_n p_n w_n of the client parts, by default."""
        return Average(self)

    def combine_server_copies(self) -> WeightedSum:
        """Round end for a main-server part held per client: Σ_n p_n w_{s,n}, one copy at a time."""
        return WeightedSum()

    # --- derived ------------------------------------------------------------------------------------
    @property
    def client_parts(self) -> list[Part]:
        return [p for p in self.parts if p.at == CLIENT]

    @property
    def server_parts(self) -> list[Part]:
        return [p for p in self.parts if p.at == MAIN_SERVER]

    @property
    def chain(self) -> list[str]:
        """The in-model parts in model order: what evaluation and export compose."""
        return [p.name for p in self.parts if p.in_model]

    @property
    def talks_to_main_server(self) -> bool:
        return bool(self.server_parts)


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


def register(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Register an algorithm class under ``name`` (also its ``name`` attribute)."""

    def add(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        return ALGORITHMS.register(name)(cls)

    return add


def algorithm_class(name: str) -> type[Algorithm]:
    """The class a name stands for: a registered algorithm, or ``pkg.module:Class`` (a user's own,
    imported from the current directory or PYTHONPATH, or a class given to the config as an object)."""
    if ":" not in name:
        return ALGORITHMS.get(name)
    cls = import_object(name, "algorithm", "a class as pkg.module:Class")
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise SplitfedError(
            f"algorithm {name} is {type(cls).__name__ if not isinstance(cls, type) else cls.__name__}, "
            "not a subclass of splitfed.algorithms.Algorithm"
        )
    if not cls.__dict__.get("name"):
        cls.name = name
    return cls


def check_knobs(cfg: Config) -> None:
    """Every config field that belongs to some algorithms (their ``knobs``) is read by one of the run's."""
    chosen = [algorithm_class(name) for name in cfg.algorithm]
    known = [ALGORITHMS.get(name) for name in ALGORITHMS]
    for knob in sorted({k for cls in chosen + known for k in cls.knobs}):
        if knob_set(cfg, knob) and not any(knob in cls.knobs for cls in chosen):
            readers = [cls.name for cls in known if knob in cls.knobs]
            raise SplitfedError(
                f"{knob} applies to {', '.join(readers)} only (this run trains {', '.join(cfg.algorithm)})"
            )


def create(cfg: Config, name: str) -> Algorithm:
    """The algorithm ``name`` (a value of cfg.algorithm) for this config."""
    return algorithm_class(name)(cfg)
