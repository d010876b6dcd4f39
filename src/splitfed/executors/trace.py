"""What a definition sends, learnt by running it once: the schema the network roles check messages
against, for any algorithm, with nothing declared by the algorithm.

``trace(algo, setup)`` runs one client's round start, one iteration with the main server and its round
end on throwaway copies (a fresh definition, fresh parts, two batches' worth of compute) and records each
message's tensors: their names, dtypes and shapes (after the rows, for the per-iteration messages, whose
first dimension is the client's batch). A receiver then refuses anything else before it touches state.
"""

import inspect
from dataclasses import dataclass

import torch

from ..algorithms.base import Algorithm, Message, Smashed, create
from ..engine.side import State
from ..setup import Setup
from .exchange import run_exchange
from .local import InProcessMainServer, SlotClients
from .parts import initial_model, prepare_context
from .rounds import client_view

Schema = dict[str, tuple[torch.dtype, tuple[int, ...]]]  # tensor name -> (dtype, shape)


def schema(tensors: dict[str, torch.Tensor], rows: bool = False) -> Schema:
    """Names, dtypes and shapes of ``tensors`` (``rows``: the shape after the first dimension)."""
    return {k: (v.dtype, tuple(v.shape[1:] if rows else v.shape)) for k, v in tensors.items()}


def state_schema(prefix: str, state: State) -> Schema:
    return {f"{prefix}.{k}": (v.dtype, tuple(v.shape)) for k, v in state.to_dict().items()}


@dataclass
class Trace:
    """The messages of one algorithm in one experiment."""

    client_parts: dict[str, State]  # what a client holds, at its initial state
    server_parts: dict[str, State]  # what the main server holds
    download: Schema  # a round's start: the client parts' states and the fed server's extras
    extras_down: Schema
    extras_up: Schema  # a round's end: beside the client parts' states
    phases: list[tuple[Schema, Schema]]  # each exchange of an iteration: (to the main server, back)

    @property
    def upload(self) -> Schema:
        return self.model_schema() | {f"x.{k}": v for k, v in self.extras_up.items()}

    def model_schema(self) -> Schema:
        out: Schema = {}
        for part, state in self.client_parts.items():
            out |= state_schema(part, state)
        return out


def trace(name: str, setup: Setup) -> Trace:
    """Run algorithm ``name``'s client 0 once (see the module docstring) and record what travels."""
    algo = create(setup.cfg, name)
    ctx = prepare_context(algo, setup)
    model = initial_model(ctx)
    client_model = {p.name: model[p.name] for p in algo.client_parts}
    fed = algo.fed_server()
    fed.begin(1, client_model, [0], {0: 1.0})
    start = fed.download(0)
    assert start is not None  # the only participant never waits for another
    sides = {}
    for part in algo.parts:
        location = "client" if part in algo.client_parts else "main_server"
        sides[part.name] = side = ctx.side(part.name, 1, location)
        side.load(0, start.model[part.name] if part.name in start.model else model[part.name])
        if location == "client":
            side.correct = lambda grad, params, scratch, p=part.name: algo.correct(p, grad, params, scratch)
    client_sides = {p.name: sides[p.name] for p in algo.client_parts}
    view = client_view(0, 1, client_sides, 0, start, {}, ctx.num_clients)
    algo.client_begin(view)
    x, y, sizes = ctx.batches([0])
    model_parts = [p.name for p in algo.client_parts if p.in_model]
    phases = _iteration(algo, sides, SlotClients(sides, model_parts, [0], sizes), x, y)
    view.steps = 1
    extras_up = algo.client_end(view)
    download: Schema = {}
    for part, state in client_model.items():
        download |= state_schema(part, state)
    return Trace(
        {p.name: model[p.name] for p in algo.client_parts},
        {p.name: model[p.name] for p in algo.server_parts},
        download | {f"x.{k}": v for k, v in schema(start.extras).items()},
        schema(start.extras),
        schema(extras_up),
        phases,
    )


def _iteration(
    algo: Algorithm, sides: dict, clients: SlotClients, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[Schema, Schema]]:
    """One iteration of client 0 with the main server: each exchange's (message, reply) schemas."""
    phases: list[tuple[Schema, Schema]] = []

    def to_server(message: Message) -> list[Smashed]:
        phases.append((schema(message, rows=True), {}))
        return [Smashed(0, message)]

    def to_clients(replies: list[Message]) -> Message:
        phases[-1] = (phases[-1][0], schema(replies[0], rows=True))
        return replies[0]

    copy_of = {p.name: {0: 0} for p in algo.server_parts}
    steps = algo.client(clients, x, y)
    run_exchange(
        steps if inspect.isgenerator(steps) else None,
        lambda batch: algo.main_server(InProcessMainServer(sides, copy_of), batch),
        to_server,
        to_clients,
        algo.name,
    )
    return phases
