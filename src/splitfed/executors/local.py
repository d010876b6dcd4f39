"""The in-process executors: an algorithm's definition run in this process, clients simulated.

``sequential``: one participant's computation at a time (a loop). Where the definition says the clients
are independent within a round (no model shared among them), it runs them one after another on a single
working copy, so memory does not grow with N.

``batched``: the participants of a slot that are independent at that step run as one vectorised
computation (``torch.func.vmap`` over stacked copies): the lockstep clients' forward and backward, the main
server's per-client copies, the whole-model steps of clients that train alone.

Both walk the same slots in the same order with the same sample streams, so they compute the same
arithmetic; only the batched kernels sum in another order (float rounding).
"""

from dataclasses import dataclass

import torch

from ..algorithms.base import (
    CLIENT_SEQUENTIAL,
    LOCKSTEP,
    ON_CLIENT,
    PER_CLIENT,
    RELAY,
    Algorithm,
    Slot,
    Smashed,
    slots,
)
from ..engine.context import UNION, Context
from ..engine.side import Side, State, joint_each
from ..errors import SplitfedError
from .graphs import StepGraphs


class InProcessMainServer:
    """The main server's models, as ``Algorithm.main_server`` sees them (the ``MainServer`` protocol)."""

    def __init__(self, side: Side, copy_of: dict[int, int]) -> None:
        self.side = side
        self.copy_of = copy_of  # client -> the server copy that serves it

    def step(self, smashed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grad = self.side.train_step(0, smashed.detach().requires_grad_(), labels)
        assert grad is not None
        return grad

    def step_each(self, batch: list[Smashed]) -> list[torch.Tensor]:
        copies = [self.copy_of[s.client] for s in batch]
        return self.side.train_each(copies, [s.smashed for s in batch], [s.labels for s in batch])


@dataclass
class RoundPlan:
    """One round of a definition: who takes part, their weights, and the slots in execution order."""

    participants: list[int]
    weights: dict[int, float]
    slots: list[Slot]
    first: dict[int, int]  # participant -> index of its first slot
    last: dict[int, int]  # participant -> index of its last slot


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
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, slot in enumerate(plan):
        for n, _ in slot:
            first.setdefault(n, k)
            last[n] = k
    return RoundPlan(parts, dict(zip(parts, ctx.weights(parts), strict=True)), plan, first, last)


def check_definition(algo: Algorithm) -> None:
    """A definition the executors can run, or a SplitfedError naming what is inconsistent."""
    if algo.client_side == RELAY and algo.schedule != CLIENT_SEQUENTIAL:
        raise SplitfedError(f"{algo.name}: a relayed client side needs the client_sequential schedule")
    if algo.client_side not in (PER_CLIENT, RELAY):
        raise SplitfedError(f"{algo.name}: unknown client_side {algo.client_side!r}")


class LocalExecutor:
    """Runs ``algo`` in this process; ``w_c``, ``w_s`` are the global models between rounds."""

    def __init__(
        self, algo: Algorithm, ctx: Context, batched: bool, cuda_graphs: bool = False, most: int | None = None
    ) -> None:
        """``most``: the most participants this executor trains in one round (default: every participant)."""
        check_definition(algo)
        self.algo, self.ctx, self.batched = algo, ctx, batched
        self.w_c, self.w_s = ctx.init_c.clone(), ctx.init_s.clone()
        # Independent clients computed one by one need one working copy; so does a relay, and a schedule
        # that finishes each client before the next starts. Otherwise every participant holds a copy.
        parts = algo.participants(list(range(ctx.copies_per_round)))
        self.one_by_one = algo.independent_clients and not batched
        sequential = algo.schedule == CLIENT_SEQUENTIAL or algo.client_side == RELAY
        live = 1 if self.one_by_one or sequential else max(1, len(parts) if most is None else most)
        location = "main_server" if UNION in parts else "client"  # the union is no client: one place
        self.clients = ctx.client_side(live, location=location, vectorised=batched)
        if algo.server_side == ON_CLIENT:
            self.servers = ctx.server_side(live, location=location, vectorised=batched)
        elif algo.server_side == PER_CLIENT:
            self.servers = ctx.server_side(live, vectorised=batched)
        else:
            self.servers = ctx.server_side(1)
        self.graphs = StepGraphs(
            cuda_graphs and ctx.init_c.params.is_cuda, lambda: [ctx.link, ctx.meter, *ctx.sides]
        )

    def run_round(self, rnd: int, clients: list[int]) -> None:
        """Train one round with the participating ``clients`` (sorted ids)."""
        algo = self.algo
        plan = self._plan(rnd, clients)
        free = list(range(self.clients.num_copies))
        held: dict[int, int] = {}  # participant -> its copy
        self._handed = self.w_c  # what the fed server hands the next participant (a relay: the last one's)
        self._sums = (algo.fed_server(), algo.fed_server())  # client sides, per-participant server copies
        if algo.server_side not in (PER_CLIENT, ON_CLIENT):
            self.servers.load(0, self.w_s)
        for k, slot in enumerate(plan.slots):
            for n, _ in slot:
                if plan.first[n] == k:
                    held[n] = free.pop(0)
                    self._start(n, held[n])
            self._iterate(slot, held)
            for n, _ in slot:
                if plan.last[n] == k:
                    self._finish(n, held[n], plan.weights[n])
                    free.insert(0, held.pop(n))
        self._end_round()

    def _plan(self, rnd: int, clients: list[int]) -> RoundPlan:
        return plan_round(self.algo, self.ctx, rnd, clients, self.one_by_one)

    def _end_round(self) -> None:
        """The fed server's rule over what the participants uploaded (a relay keeps the last model); the
        main server's model, or the rule over its per-participant copies."""
        algo = self.algo
        self.w_c = self._handed.clone() if algo.client_side == RELAY else self._sums[0].result
        self.w_s = (
            self._sums[1].result
            if algo.server_side in (PER_CLIENT, ON_CLIENT)
            else self.servers.state(0).clone()
        )

    def _start(self, n: int, i: int) -> None:
        """Participant n begins its round on copy i: the fed server hands it the global model."""
        link, algo = self.ctx.link, self.algo
        self.clients.load(i, link.down("global_client_weights", n, self._handed))
        if algo.server_side == ON_CLIENT:  # the whole model travels
            self.servers.load(i, link.down("global_client_weights", n, self.w_s))
        elif algo.server_side == PER_CLIENT:  # the main server's own copy for n
            self.servers.load(i, self.w_s)

    def _finish(self, n: int, i: int, p_n: float) -> None:
        """Participant n ends its round: its model goes to the fed server (or on, in a relay)."""
        link, algo = self.ctx.link, self.algo
        client_state = link.up("client_weights", n, self.clients.state(i))
        if algo.client_side == RELAY:
            self._handed = client_state.clone()
        else:
            self._sums[0].add(client_state, p_n)
        if algo.server_side == ON_CLIENT:
            self._sums[1].add(link.up("client_weights", n, self.servers.state(i)), p_n)
        elif algo.server_side == PER_CLIENT:
            self._sums[1].add(self.servers.state(i), p_n)

    def _iterate(self, slot: Slot, held: dict[int, int]) -> None:
        """One slot: each of its participants draws a batch; then the definition's steps."""
        ns = [n for n, _ in slot]
        x, y, sizes = self.ctx.batches(ns)
        copies = [held[n] for n in ns]
        self.graphs.run(self._compute, ns, copies, x, y, sizes)

    def _compute(self, ns: list[int], copies: list[int], x: torch.Tensor, y: torch.Tensor, sizes: list[int]):
        """The computation of one slot on its batches (what a CUDA graph may capture and replay)."""
        link, algo = self.ctx.link, self.algo
        xs, ys = x.split(sizes), y.split(sizes)
        if not algo.split:  # each participant: one SGD step of the whole model
            joint_each(self.clients, self.servers, copies, xs, ys)
            return
        smashed = self.clients.forward_each(copies, xs)
        batch = [
            Smashed(n, link.up("smashed", n, z), link.up("labels", n, labels))
            for n, z, labels in zip(ns, smashed, ys, strict=True)
        ]
        grads = self._main_server(batch, copies)
        self.clients.backward_each(
            copies, [link.down("smashed_grad", n, a) for n, a in zip(ns, grads, strict=True)]
        )

    def _main_server(self, batch: list[Smashed], copies: list[int]) -> list[torch.Tensor]:
        """The definition's main-server step on one slot's smashed data (per-client server copies are the
        clients' own copy indices)."""
        ns = [s.client for s in batch]
        per_client = self.algo.server_side == PER_CLIENT
        copy_of = dict(zip(ns, copies, strict=True)) if per_client else dict.fromkeys(ns, 0)
        return self.algo.main_server(InProcessMainServer(self.servers, copy_of), batch)


EXECUTIONS = ("sequential", "batched")


def make_executor(algo: Algorithm, ctx: Context, execution: str, cuda_graphs: bool = False) -> LocalExecutor:
    """``execution``: sequential | batched | auto (batched on CUDA, sequential on the CPU, where it
    measures faster; see docs/performance.md)."""
    if execution == "auto":
        execution = "batched" if ctx.init_c.params.is_cuda else "sequential"
    if execution not in EXECUTIONS:
        raise SplitfedError(f"execution must be auto or one of {', '.join(EXECUTIONS)}; got {execution!r}")
    return LocalExecutor(algo, ctx, batched=execution == "batched", cuda_graphs=cuda_graphs)


__all__ = ["LOCKSTEP", "InProcessMainServer", "LocalExecutor", "State", "make_executor", "plan_round"]
