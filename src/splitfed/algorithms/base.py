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

Drift corrections (a proximal term, control variates) are ``Correction`` components: an algorithm may
always have one (FedProx, SCAFFOLD), and any other takes one from the config (``prox_mu``,
``control_variates``), so "a proximal term on MiniBatch-SFL's client side" is a config, not a module.
State is a ``State`` per part (flat parameters, buffers, optimizer state) whose entries are addressable by
parameter and buffer name through the part's ``Layout``.
"""

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from ..config import Config
from ..engine.context import UNION  # noqa: F401  (the participant of centralized training)
from ..engine.side import Layout, State, WeightedSum
from ..errors import SplitfedError
from ..registry import Registry, import_object

# who trains a part
CLIENT = "client"  # every participant trains its own copy, from what the fed server hands it
MAIN_SERVER = "main_server"  # the main server: one model for every client (shared) or a copy per client
# schedules
LOCKSTEP = "lockstep"  # every iteration, every participant sends one batch; one slot holds them all
CLIENT_SEQUENTIAL = "client_sequential"  # participants in a random order, each doing all its iterations
INTERLEAVED = "interleaved"  # every iteration, the participants in a random order, one batch each

Model = dict[str, State]  # a model's parts by name ("client", "server", ...)
Message = dict[str, torch.Tensor]  # what travels in one exchange, by name: smashed, labels, smashed_grad, ...


@dataclass(frozen=True)
class Part:
    """A piece of what an algorithm trains.

    ``at``: who trains it (CLIENT or MAIN_SERVER). ``shared`` (main server only): one model that every
    client's batches step in turn, kept from round to round; otherwise a copy per client from the
    round-start model, combined at round end by ``combine_server_copies``. ``optimizer``: whose
    optimizer settings it trains with ("client": η_c and client_optimizer, "server": η_s and
    server_optimizer; default: by ``at``). ``in_model``: a segment of the model (in model order), or a
    module the algorithm builds itself (``build_part``), which evaluation and export leave out.
    """

    name: str
    at: str = CLIENT
    shared: bool = False
    optimizer: str | None = None
    in_model: bool = True

    def __post_init__(self) -> None:
        if self.at not in (CLIENT, MAIN_SERVER):
            raise SplitfedError(f"part {self.name}: at must be {CLIENT} or {MAIN_SERVER}, got {self.at!r}")
        if self.shared and self.at != MAIN_SERVER:
            raise SplitfedError(
                f"part {self.name}: only the main server holds one model for every client; a client part "
                "handed from client to client is a fed-server rule (see algorithms/sl.py)"
            )

    @property
    def trains_with(self) -> str:
        """ "client" or "server": the optimizer settings of this part."""
        return self.optimizer or ("server" if self.at == MAIN_SERVER else "client")


SPLIT = (Part("client", CLIENT), Part("server", MAIN_SERVER, shared=True))  # cut once, one server model
WHOLE = (Part("client", CLIENT), Part("server", CLIENT, optimizer="server"))  # no main server: FL


@dataclass
class Payload:
    """What travels between a client and the fed server at a round's ends: model parts and named extras
    (e.g. SCAFFOLD's control variate)."""

    model: Model
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


# --- what a definition's steps see of the executor's machinery ------------------------------------------
class Clients(Protocol):
    """The clients of one slot, as ``Algorithm.client`` sees them: tensors hold every client's rows one
    client after another (an executor may compute them together); each call acts on each client's own
    copy of ``part``."""

    sizes: list[int]  # rows of each client, in order

    def forward(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """Each client's ``part`` on its rows of ``x``; the graph waits for ``backward(part, ...)``."""
        ...

    def backward(self, part: str, grad: torch.Tensor) -> torch.Tensor | None:
        """Back-propagate ``grad`` into ``part``'s last output and take one optimizer step of each copy;
        returns the gradient at the input where the input was a tensor that required it."""
        ...

    def step(self, part: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step of each copy of ``part`` on its own mean loss over its rows of (x, y); returns
        ∂L_n/∂x_n stacked in the rows of ``x``."""
        ...

    def step_model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One step of the whole model (the client's in-model parts, one autograd graph) on each client's
        mean loss over its rows of (x, y)."""
        ...


class MainServer(Protocol):
    """The main server's models, as ``Algorithm.main_server`` sees them."""

    def step(self, smashed: torch.Tensor, labels: torch.Tensor, part: str = "server") -> torch.Tensor:
        """ONE step of the shared model on the mean loss of (smashed, labels); returns ∂loss/∂smashed."""
        ...

    def step_each(self, batch: list["Smashed"], part: str = "server") -> list[torch.Tensor]:
        """For each client's message, in order, one step of the model that serves that client (its own
        copy, or the shared one) on the mean loss of its smashed data; each ∂L_n/∂z_n."""
        ...

    def forward(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """The shared ``part`` (one model for every client) on ``x``; the graph waits for ``backward``."""
        ...

    def backward(self, part: str, grad: torch.Tensor) -> torch.Tensor:
        """Back-propagate ``grad`` into the shared ``part``'s last output, step it once; the gradient at
        its input."""
        ...


@dataclass
class Smashed:
    """One client's message to the main server in one exchange: ``smashed`` (z_n), ``labels`` (y_n), or
    whatever else the definition's ``client`` sends, by name."""

    client: int
    tensors: Message

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    @property
    def smashed(self) -> torch.Tensor:
        return self.tensors["smashed"]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors["labels"]


class ClientRound:
    """One participant's round, as ``client_begin`` / ``client_end`` and the corrections see it.

    ``model``: its copy of every client part (live: what training changes); ``start``: the payload it
    started from; ``state``: its own tensors that outlive the round (empty for a client that never took
    part); ``scratch(part)``: round-local tensors that ``correct`` gets for that part; ``layouts``: each
    part's parameter and buffer names; ``lr``: each client part's rate this round; ``steps``: optimizer
    steps it took this round (at ``client_end``).
    """

    def __init__(
        self,
        n: int,
        rnd: int,
        model: Model,
        start: Payload,
        state: dict[str, torch.Tensor],
        scratch: Callable[[str], dict[str, torch.Tensor]],
        layouts: dict[str, Layout],
        lr: dict[str, float],
        num_clients: int,
    ) -> None:
        self.n, self.round, self.model, self.start, self.state = n, rnd, model, start, state
        self.scratch, self.layouts, self.lr, self.num_clients = scratch, layouts, lr, num_clients
        self.steps = 0


# --- corrections: drift terms any algorithm may take ------------------------------------------------------
class Correction:
    """A client-side drift correction and what the fed server keeps for it. Every hook is optional."""

    knob: ClassVar[str] = ""  # the config field that adds it to any algorithm

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # client
    def begin(self, client: ClientRound) -> None:
        """Round start, after the client loaded what it starts from."""

    def correct(self, part: str, grad: torch.Tensor, params: torch.Tensor, scratch: dict) -> torch.Tensor:
        """The gradient the optimizer steps with; tensors are one copy's [P] or every copy's [K, P]."""
        return grad

    def end(self, client: ClientRound) -> dict[str, torch.Tensor]:
        """Round end: extras to upload beside the model."""
        return {}

    # fed server
    def download(self, model: Model) -> dict[str, torch.Tensor]:
        """Extras every client gets with the round-start model."""
        return {}

    def update(self, model: Model, mean: Payload, participants: int, num_clients: int) -> None:
        """Round end, with the weighted mean of the uploads: the fed server's own state."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


CORRECTIONS: Registry[type[Correction]] = Registry("correction")


def register_correction(cls: type[Correction]) -> type[Correction]:
    """Make ``cls`` available to every algorithm through its config field ``cls.knob``."""
    return CORRECTIONS.register(cls.knob)(cls)


def knob_set(cfg: Config, knob: str) -> bool:
    value = getattr(cfg, knob)
    return value is not None and value is not False


# --- the fed server ---------------------------------------------------------------------------------
class FedServer:
    """The fed server of a definition, one per run: each round it sees the round-start model of the
    client parts (``begin``), says what each participant starts from (``download``; None: not yet, e.g.
    while the client before it in a relay still trains), takes each upload as it arrives (``upload``), and
    makes the next global model (``end``). ``skip(n)``: participant n will not upload this round. What it
    keeps across rounds is ``state_dict()``, checkpointed and restored by name."""

    def begin(self, rnd: int, model: Model, turns: list[int], weights: dict[int, float]) -> None:
        raise NotImplementedError

    def download(self, n: int) -> Payload | None:
        raise NotImplementedError

    def upload(self, n: int, payload: Payload) -> None:
        raise NotImplementedError

    def skip(self, n: int) -> None:
        pass

    def end(self) -> Model:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class Average(FedServer):
    """Every participant starts from the global model; the uploads are averaged with weights p_n
    (renormalised over those that uploaded), then ``update(model, mean)`` makes the next global model
    (FedAvg: the mean itself). The sum is linear in the uploads, so executors may take it in pieces
    (``partial``/``merge``: torch.distributed all-reduces it) without knowing what the rule does after."""

    def __init__(self, algo: "Algorithm") -> None:
        self.algo = algo
        self.corrections = algo.corrections

    def begin(self, rnd: int, model: Model, turns: list[int], weights: dict[int, float]) -> None:
        self.round, self.model, self.weights = rnd, model, weights
        self.extras = {k: v for c in self.corrections for k, v in c.download(model).items()}
        self.sums: dict[str, WeightedSum] = {}
        self.uploaded: list[int] = []

    def download(self, n: int) -> Payload:
        return Payload(self.model, self.extras)

    def upload(self, n: int, payload: Payload) -> None:
        w = self.weights[n]
        for name, state in payload.model.items():
            self.sums.setdefault(name, WeightedSum()).add(state, w)
        for name, t in payload.extras.items():
            self.sums.setdefault("+" + name, WeightedSum()).add(State(t, t[:0], t[:0]), w)
        self.uploaded.append(n)

    def partial(self) -> dict[str, WeightedSum]:
        """The weighted sums so far, by name (parts; extras under "+name")."""
        return self.sums

    def end(self) -> Model:
        total = sum(self.weights[n] for n in self.uploaded)
        everyone = sorted(self.uploaded) == sorted(self.weights)
        scale = 1.0 if everyone else 1.0 / total  # exact Σ p_n = 1 when all uploaded: no rescaling
        mean = {name: acc.result for name, acc in self.sums.items()}
        if scale != 1.0:
            mean = {name: State(*(t * scale for t in s.to_dict().values())) for name, s in mean.items()}
        averaged = Payload(
            {k: v for k, v in mean.items() if not k.startswith("+")},
            {k[1:]: v.params for k, v in mean.items() if k.startswith("+")},
        )
        for c in self.corrections:
            c.update(self.model, averaged, len(self.uploaded), self.algo.num_clients)
        self.mean = averaged  # what ``update`` may read beside the model: the mean of the extras too
        return self.update(self.model, averaged.model)

    def update(self, model: Model, mean: Model) -> Model:
        """The next global model from the round-start one and the participants' mean (FedAvg: the mean)."""
        return mean

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, c in enumerate(self.corrections) for k, v in c.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, c in enumerate(self.corrections):
            prefix = f"{i}."
            c.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


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


def slots(
    schedule: str, participants: list[int], iterations: int, order: Callable[..., list[int]]
) -> list[list[tuple[int, int]]]:
    """A round's slots in the order the main server handles them. ``order(participants, *keys)`` draws a
    random order of the participants for a round (keys: ()) or for one of its iterations (keys: (t,))."""
    if schedule == LOCKSTEP:
        return [[(n, t) for n in participants] for t in range(iterations)]
    if schedule == CLIENT_SEQUENTIAL:
        return [[(n, t)] for n in order(participants) for t in range(iterations)]
    if schedule == INTERLEAVED:
        return [[(n, t)] for t in range(iterations) for n in order(participants, t)]
    raise SplitfedError(
        f"unknown schedule {schedule!r}; choose {LOCKSTEP}, {CLIENT_SEQUENTIAL} or {INTERLEAVED}"
    )


Slot = list[tuple[int, int]]  # (participant, iteration t) pairs handled together by the main server


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
