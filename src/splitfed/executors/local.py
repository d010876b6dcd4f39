"""The in-process executors: an algorithm's definition run in this process, clients simulated.

``sequential``: one participant's computation at a time (a loop). Where no model is shared among the
clients within a round (no shared main-server part), a lockstep round runs them one after another on a
single working copy, so memory does not grow with N.

``batched``: the participants of a slot run as one vectorised computation (``torch.func.vmap`` over
stacked copies): the clients' forward and backward, the main server's per-client copies, the whole-model
steps of clients that train alone.

Both walk the same slots in the same order with the same sample streams, so they compute the same
arithmetic; only the batched kernels sum in another order (float rounding). Neither knows which algorithm
it runs: what differs is the definition's parts (who trains what), its schedule and its hooks.
"""

import inspect
from dataclasses import dataclass
from functools import partial

import torch

from .. import choices
from ..algorithms.base import (
    CLIENT,
    CLIENT_SEQUENTIAL,
    LOCKSTEP,
    Algorithm,
    ClientRound,
    Message,
    Model,
    Payload,
    Slot,
    Smashed,
)
from ..engine.client_state import ClientStates
from ..engine.context import UNION, Context
from ..engine.side import Side, State, joint_each
from ..engine.timeline import BACKWARD, FORWARD, STEP, RoundRecorder, Timeline
from ..errors import SplitfedError
from .exchange import run_exchange
from .graphs import StepGraphs
from .parts import halves, initial_model
from .rounds import RoundPlan, ServerParts, client_view, fed_round_end, plan_round


def _rows(sizes: list[int], *tensors: torch.Tensor) -> None:
    """Every tensor has one row per sample of the slot's clients, or one line says what is wrong."""
    for t in tensors:
        if t.dim() == 0 or t.shape[0] != sum(sizes):
            got = "a scalar" if t.dim() == 0 else f"{t.shape[0]} rows"
            raise SplitfedError(
                f"a message tensor must have one row per sample ({sum(sizes)} for batches {sizes}); got {got}"
            )


@dataclass
class Timed:
    """What a slot's steps tell the edge-time model: the round's recorder and the slot's clients."""

    rec: RoundRecorder
    clients: list[int]


class SlotClients:
    """The clients of one slot on their copies (the ``Clients`` protocol of algorithms/views.py)."""

    def __init__(
        self,
        sides: dict[str, Side],
        model_parts: list[str],
        copies: list[int],
        sizes: list[int],
        timed: Timed | None = None,
    ):
        self.sides, self.model_parts, self.copies, self.sizes = sides, model_parts, copies, sizes
        self.timed = timed

    def _time(self, part: str, share: float) -> None:
        if self.timed is not None:
            self.timed.rec.compute(self.timed.clients, self.sizes, self.sides[part].flops_per_sample, share)

    def _stacked(self, side: Side, x: torch.Tensor) -> bool:
        """Whether every copy's rows of x go through ``side`` as one vectorised call."""
        return side.batched(self.copies, x.split(self.sizes))

    def forward(self, part: str, x: torch.Tensor) -> torch.Tensor:
        _rows(self.sizes, x)
        self._time(part, FORWARD)
        side = self.sides[part]
        if self._stacked(side, x):  # [K·b, ...] is [K, b, ...] without a copy
            grad = x.requires_grad
            stacked = x.detach().view(len(self.copies), -1, *x.shape[1:])
            out = side.forward(-1, stacked.requires_grad_() if grad else stacked)
            return out.reshape(-1, *out.shape[2:])
        return torch.cat(side.forward_each(self.copies, list(x.split(self.sizes))))

    def backward(self, part: str, grad: torch.Tensor) -> torch.Tensor | None:
        _rows(self.sizes, grad)
        self._time(part, BACKWARD)
        side = self.sides[part]
        if -1 in side._pending:
            at_input = side.backward(-1, grad.view(len(self.copies), -1, *grad.shape[1:]))
            return None if at_input is None else at_input.reshape(-1, *at_input.shape[2:])
        at_inputs = side.backward_each(self.copies, list(grad.split(self.sizes)))
        return None if any(a is None for a in at_inputs) else torch.cat(at_inputs)  # type: ignore[misc]

    def step(self, part: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _rows(self.sizes, x, y)
        self._time(part, STEP)
        grads = self.sides[part].train_each(self.copies, list(x.split(self.sizes)), list(y.split(self.sizes)))
        return torch.cat(grads)

    def step_model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        _rows(self.sizes, x, y)
        for part in self.model_parts:
            self._time(part, STEP)
        sides = [self.sides[p] for p in self.model_parts]
        joint_each(sides, self.copies, list(x.split(self.sizes)), list(y.split(self.sizes)))


class InProcessMainServer:
    """The main server's models, as ``Algorithm.main_server`` sees them (the ``MainServer`` protocol).
    ``copy_of[part][client]``: the copy of ``part`` that serves the client (0 for a shared part)."""

    def __init__(
        self,
        sides: dict[str, Side],
        copy_of: dict[str, dict[int, int]],
        timed: Timed | None = None,
        own: frozenset[str] = frozenset(),
    ) -> None:
        """``own``: the parts of which each client has a copy of its own (for the edge-time model)."""
        self.sides, self.copy_of, self.timed, self.own = sides, copy_of, timed, own

    def _time(self, part: str, clients: list[int] | None, rows: int, share: float) -> None:
        if self.timed is not None:
            flops = rows * self.sides[part].flops_per_sample * share
            served = self.timed.clients if clients is None else clients
            # a shared model's steps follow one another; a client's own copy steps beside the others'
            lane = f"{part}:{served[0]}" if part in self.own and len(served) == 1 else part
            self.timed.rec.serve(served, flops, lane)

    def step(self, smashed: torch.Tensor, labels: torch.Tensor, part: str = "server") -> torch.Tensor:
        self._time(part, None, len(smashed), STEP)
        grad = self.sides[part].train_step(0, smashed.detach().requires_grad_(), labels)
        assert grad is not None
        return grad

    def step_each(self, batch: list[Smashed], part: str = "server") -> list[torch.Tensor]:
        copies = [self.copy_of[part][s.client] for s in batch]
        for s in batch:  # each client's own copy: the edge-time model lets them step side by side
            self._time(part, [s.client], len(s.smashed), STEP)
        return self.sides[part].train_each(copies, [s.smashed for s in batch], [s.labels for s in batch])

    def forward(self, part: str, x: torch.Tensor) -> torch.Tensor:
        if self.sides[part].num_copies != 1:
            raise SplitfedError(f"the main server's forward/backward act on a shared part, not {part!r}")
        self._time(part, None, len(x), FORWARD)
        return self.sides[part].forward(0, x.detach().requires_grad_())

    def backward(self, part: str, grad: torch.Tensor) -> torch.Tensor:
        self._time(part, None, len(grad), BACKWARD)
        at_input = self.sides[part].backward(0, grad)
        assert at_input is not None
        return at_input


def check_definition(algo: Algorithm) -> None:
    """A definition the executors can run, or a SplitfedError naming what is inconsistent."""
    names = [p.name for p in algo.parts]
    if len(set(names)) != len(names):
        raise SplitfedError(f"{algo.name}: its parts repeat a name ({', '.join(names)})")
    chain = [p for p in algo.parts if p.in_model]
    if len(chain) < 2:
        raise SplitfedError(f"{algo.name}: the model is cut into at least two parts; it names {len(chain)}")
    if chain[0].at != CLIENT:
        raise SplitfedError(f"{algo.name}: the first part of the model must be trained where the data are")


def independent(algo: Algorithm) -> bool:
    """Whether no participant's work touches a model another one uses within a round: then any order of
    their slots gives the same result."""
    return not any(p.shared for p in algo.parts) and algo.schedule == LOCKSTEP


class LocalExecutor:
    """Runs ``algo`` in this process; ``model`` is the global model (every part) between rounds."""

    def __init__(
        self, algo: Algorithm, ctx: Context, batched: bool, cuda_graphs: bool = False, most: int | None = None
    ) -> None:
        """``most``: the most participants this executor trains in one round (default: every participant)."""
        check_definition(algo)
        self.algo, self.ctx, self.batched = algo, ctx, batched
        self.model: Model = initial_model(ctx)
        self.fed = algo.fed_server()
        cfg = ctx.cfg
        self.client_states = ClientStates(int(cfg.client_state_mb * 2**20), device=ctx.init_c.params.device)
        # Independent clients computed one by one need one working copy; so does a schedule that
        # finishes each client before the next starts. Otherwise every participant holds a copy.
        parts = algo.participants(list(range(ctx.copies_per_round)))
        self.one_by_one = independent(algo) and not batched
        sequential = algo.schedule == CLIENT_SEQUENTIAL
        live = 1 if self.one_by_one or sequential else max(1, len(parts) if most is None else most)
        location = "main_server" if UNION in parts else "client"  # the union is no client: one place
        self.sides: dict[str, Side] = {}
        for part in algo.parts:
            if part.at == CLIENT:
                side = ctx.side(part.name, live, location, vectorised=batched)
                side.correct = partial(algo.correct, part.name)
            elif part.shared:
                side = ctx.side(part.name, 1, "main_server")
            else:
                side = ctx.side(part.name, live, "main_server", vectorised=batched)
            side.metered = part.name == algo.chain[-1]  # the model's output: its loss is the training loss
            self.sides[part.name] = side
        self.model_parts = [p.name for p in algo.client_parts if p.in_model]  # what step_model trains
        # an optimizer given as an object steps through Python between kernels: no graph can hold it
        capturable = all(side.opt.capturable for side in self.sides.values())
        # with a device profile each step tells the edge-time model what it did: a replayed graph would not
        self.timed = cfg.profile is not None
        self.own_server_parts = frozenset(p.name for p in algo.server_parts if not p.shared)
        self.recorder: RoundRecorder | None = None
        self.timeline: Timeline | None = None  # the last round's, when timed
        self.graphs = StepGraphs(
            cuda_graphs and capturable and ctx.init_c.params.is_cuda and not self.timed,
            lambda: [ctx.link, ctx.meter, *ctx.sides],
        )

    @property
    def w_c(self) -> State:
        """The global client-side model at the run's cut layer (what evaluation and export see)."""
        return halves(self.algo, self.model)[0]

    @property
    def w_s(self) -> State:
        return halves(self.algo, self.model)[1]

    def checkpoint_client_states(self) -> dict | None:
        """What a checkpoint keeps of the clients' own states (None on a process that writes none)."""
        return self.client_states.state_dict()

    def run_round(self, rnd: int, clients: list[int]) -> None:
        """Train one round with the participating ``clients`` (sorted ids)."""
        algo = self.algo
        plan = self._plan(rnd, clients)
        self.fed.begin(rnd, {p.name: self.model[p.name] for p in algo.client_parts}, plan.turns, plan.weights)
        if self.timed:  # a client whose start model is not ready at once waits for the uploads before it
            waits = {n for n in plan.participants if self.fed.download(n) is None}
            self.recorder = RoundRecorder(self.ctx.link, waits)
        self._server_parts = ServerParts(algo, self.sides)
        for part in algo.server_parts:
            if part.shared:
                self.sides[part.name].load(0, self.model[part.name])
        free = list(range(self.sides[algo.client_parts[0].name].num_copies))
        held: dict[int, int] = {}  # participant -> its copy
        self._rounds: dict[int, ClientRound] = {}
        self._iterations = {n: 0 for n in plan.participants}
        for k, slot in enumerate(plan.slots):
            for n, _ in slot:
                if plan.first[n] == k:
                    held[n] = free.pop(0)
                    self._start(rnd, n, held[n])
            self._iterate(slot, held)
            for n, _ in slot:
                self._iterations[n] += 1
                if plan.last[n] == k:
                    self._finish(n, held[n], plan.weights[n])
                    free.insert(0, held.pop(n))
        self._end_round()
        if self.recorder is not None:
            self.timeline, self.recorder = self.recorder.end(), None

    def _plan(self, rnd: int, clients: list[int]) -> RoundPlan:
        return plan_round(self.algo, self.ctx, rnd, clients, self.one_by_one)

    def _start(self, rnd: int, n: int, i: int) -> None:
        """Participant n begins its round on copy i: the fed server hands it what it starts from."""
        link, algo = self.ctx.link, self.algo
        start = self.fed.download(n)
        if start is None:
            raise SplitfedError(
                f"{algo.name}: client {n}'s start model is not ready when its first slot comes (its fed "
                "server waits for another client's upload); run it with a schedule that starts clients "
                "one after another"
            )
        for part in algo.client_parts:
            self.sides[part.name].load(i, link.down("global_client_weights", n, start.model[part.name]))
        for name, t in start.extras.items():
            link.down(name, n, t)
        for part in algo.server_parts:
            if not part.shared:  # the main server's own copy for n
                self.sides[part.name].load(i, self.model[part.name])
        client_sides = {p.name: self.sides[p.name] for p in algo.client_parts}
        view = client_view(n, rnd, client_sides, i, start, self.client_states.get(n), self.ctx.num_clients)
        algo.client_begin(view)
        self._rounds[n] = view
        if self.recorder is not None:
            self.recorder.start(n)

    def _finish(self, n: int, i: int, p_n: float) -> None:
        """Participant n ends its round: its model and extras go to the fed server."""
        link, algo = self.ctx.link, self.algo
        view = self._rounds.pop(n)
        view.steps = self._iterations[n]
        extras = algo.client_end(view)
        self.client_states.put(n, view.state)
        payload = Payload(
            {p.name: link.up("client_weights", n, self.sides[p.name].state(i)) for p in algo.client_parts},
            {name: link.up(name, n, t) for name, t in extras.items()},
        )
        self.fed.upload(n, payload)
        self._server_parts.add(i, p_n)
        if self.recorder is not None:
            self.recorder.finish(n)

    def _end_round(self) -> None:
        """The fed server's rule makes the client parts; the main server's parts are kept (shared) or
        combined from its per-client copies."""
        self.model.update(fed_round_end(self.algo, self.fed))
        self.model.update(self._server_parts.result())

    def _iterate(self, slot: Slot, held: dict[int, int]) -> None:
        """One slot: each of its participants draws a batch; then the definition's steps."""
        ns = [n for n, _ in slot]
        x, y, sizes = self.ctx.batches(ns)
        copies = [held[n] for n in ns]
        self.graphs.run(self._compute, ns, copies, x, y, sizes)

    def _compute(self, ns: list[int], copies: list[int], x: torch.Tensor, y: torch.Tensor, sizes: list[int]):
        """The computation of one slot on its batches (what a CUDA graph may capture and replay): the
        clients' iteration, talking to the main server where it yields."""
        link, algo = self.ctx.link, self.algo
        timed = None if self.recorder is None else Timed(self.recorder, ns)
        clients = algo.client(SlotClients(self.sides, self.model_parts, copies, sizes, timed), x, y)

        def to_server(message: Message) -> list[Smashed]:
            _rows(sizes, *message.values())
            parts = {k: v.split(sizes) for k, v in message.items()}
            batch = [
                Smashed(n, {k: link.up(k, n, v[i], compress=True) for k, v in parts.items()})
                for i, n in enumerate(ns)
            ]
            if timed is not None:
                timed.rec.send(ns)
            return batch

        def to_clients(replies: list[Message]) -> Message:
            keys = set(replies[0])
            if any(set(r) != keys for r in replies):
                raise SplitfedError(f"{algo.name}: the main server's replies name different tensors")
            message = {
                k: torch.cat([link.down(k, n, r[k], compress=True) for n, r in zip(ns, replies, strict=True)])
                for k in keys
            }
            if timed is not None:
                timed.rec.reply(ns)
            return message

        run_exchange(
            clients if inspect.isgenerator(clients) else None,
            lambda batch: self._main_server(batch, copies),
            to_server,
            to_clients,
            algo.name,
        )

    def _main_server(self, batch: list[Smashed], copies: list[int]):
        """The definition's main-server step on one slot's messages (per-client server copies are the
        clients' own copy indices)."""
        ns = [s.client for s in batch]
        own = dict(zip(ns, copies, strict=True))
        copy_of = {p.name: (dict.fromkeys(ns, 0) if p.shared else own) for p in self.algo.server_parts}
        timed = None if self.recorder is None else Timed(self.recorder, ns)
        server = InProcessMainServer(self.sides, copy_of, timed, self.own_server_parts)
        return self.algo.main_server(server, batch)


EXECUTIONS = tuple(e for e in choices.EXECUTIONS if e != "auto")  # auto is resolved before


def make_executor(algo: Algorithm, ctx: Context, execution: str, cuda_graphs: bool = False) -> LocalExecutor:
    """``execution``: sequential | batched | auto (batched on CUDA, sequential on the CPU, where it
    measures faster; see docs/performance.md)."""
    if execution == "auto":
        execution = "batched" if ctx.init_c.params.is_cuda else "sequential"
    if execution not in EXECUTIONS:
        raise SplitfedError(f"execution must be auto or one of {', '.join(EXECUTIONS)}; got {execution!r}")
    return LocalExecutor(algo, ctx, batched=execution == "batched", cuda_graphs=cuda_graphs)


__all__ = ["LOCKSTEP", "InProcessMainServer", "LocalExecutor", "State", "make_executor", "plan_round"]
