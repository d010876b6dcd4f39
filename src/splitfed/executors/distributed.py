"""The distributed executor: an algorithm's definition spread over processes with ``torch.distributed``.

Launched the usual way (``torchrun --nproc-per-node K -m splitfed run ...``, or ``splitfed run
--processes K``): gloo on the CPU, NCCL on CUDA. Each rank owns the clients n with n % K == rank, for the
whole run (their sample streams live there), and runs them with the in-process machinery, batched or one
by one. What crosses ranks:
- a slot whose main server trains ONE shared model: each rank's smashed data and labels are gathered on
  rank 0, which runs the definition's own ``main_server`` step on the whole slot in the slot's order (the
  giant batch exactly as one process sees it, BatchNorm included) and scatters each rank its clients'
  gradients. Where the main server holds a copy per client (or there is no main server), a slot's work
  is each client's own and stays on its rank;
- at round end, the fed server's rule as ONE all-reduce of each rank's weighted sums (never a gather of
  client models); rank 0's shared server model broadcast to every rank; the round's counters summed.
Randomness is derived per purpose and per client, so the result does not depend on the number of ranks;
only sums are taken in another order (float rounding). Definitions whose main server steps one shared
model one client batch at a time (client-sequential or interleaved schedules, a relay) have nothing to
run in parallel and are refused, as is centralized training (one participant).
"""

import datetime
import inspect
import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..algorithms.base import LOCKSTEP, Algorithm, Average, Message, Smashed
from ..data import ClientStreams
from ..engine.context import UNION, Context
from ..engine.side import State, WeightedSum
from ..errors import SplitfedError
from .exchange import server_step
from .local import LocalExecutor
from .rounds import RoundPlan, plan_of, plan_round


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _joined(replies: list[Message]) -> Message:
    """The replies' tensors joined (only their names, dtypes and shapes after the rows matter here)."""
    return {k: torch.cat([r[k] for r in replies]) for k in replies[0]} if replies else {}


@dataclass(frozen=True)
class Group:
    """This process's place in a torch.distributed job."""

    rank: int
    world: int
    device: torch.device
    # gloo, with a timeout far beyond any training: what the other ranks wait on while rank 0 alone
    # trains the algorithms that do not distribute (None when the job has no such wait)
    patient: Any = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def owner(self, client: int) -> int:
        return client % self.world


def launched() -> bool:
    """Whether this process was started by torchrun (or ``--processes``) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device) -> Group:
    """Join the job torchrun set up (its environment variables): gloo on the CPU, NCCL on CUDA."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    patient = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=30))
    return Group(rank, world, device, patient)


def leave(group: Group) -> None:
    """Every rank done: leave the job together (a rank that exits while another still talks to it makes
    that one abort)."""
    dist.barrier()
    dist.destroy_process_group()


def share(group: Group, value: Any, *, patient: bool = False) -> Any:
    """Rank 0's ``value`` (any picklable object), on every rank; ``patient``: over the group that waits
    as long as rank 0 may train alone."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group.patient if patient else None)
    return box[0]


def merged_streams(group: Group, streams: ClientStreams) -> dict[str, list[int]] | None:
    """On rank 0, every client's sampler position, each taken from the rank that owns the client; the
    union stream (no rank draws from it) from rank 0. Other ranks get None."""
    states: list[Any] = [None] * group.world
    dist.all_gather_object(states, streams.state_dict())
    if not group.leader:
        return None
    merged = {key: list(values) for key, values in states[0].items()}
    clients = len(merged["epoch"]) - 1
    for key in merged:
        for n in range(clients):
            merged[key][n] = states[group.owner(n)][key][n]
    return merged


def check_distributable(algo: Algorithm) -> None:
    """One line saying why a definition cannot spread its clients over processes, if it cannot."""
    if algo.participants([0]) == [UNION]:
        raise SplitfedError(
            f"{algo.name} trains one model on the union of the data: there are no clients to spread "
            "over processes; run it in one process"
        )
    if algo.schedule != LOCKSTEP:
        raise SplitfedError(
            f"{algo.name}'s clients take turns (schedule {algo.schedule}): they never compute at the "
            "same time, so more processes would only wait in turn; run it in one process"
        )
    if not isinstance(algo.fed_server(), Average):
        raise SplitfedError(
            f"{algo.name}'s fed server is not an average of the uploads, which processes could sum in "
            "pieces; run it in one process"
        )


class DistributedExecutor(LocalExecutor):
    """Runs ``algo`` on this rank's clients; every rank ends each round with the same ``model``."""

    def __init__(
        self, algo: Algorithm, ctx: Context, group: Group, batched: bool, rounds: list[list[int]]
    ) -> None:
        """``rounds``: each round's participants (to size this rank's copies: only its own clients')."""
        check_distributable(algo)
        self.group = group
        most = max((sum(group.owner(n) == group.rank for n in r) for r in rounds), default=1)
        super().__init__(algo, ctx, batched, cuda_graphs=False, most=most)
        self.shared_server = any(p.shared for p in algo.server_parts)
        self._structures: dict[tuple[str, int], dict[str, tuple[str, tuple[int, ...]]]] = {}

    def _plan(self, rnd: int, clients: list[int]) -> RoundPlan:
        """The round's plan (weights over every participant), this rank's part of each slot. A shared
        server's slots all stay, empty or not: every rank takes part in each one's exchanges."""
        full = plan_round(self.algo, self.ctx, rnd, clients, one_by_one=False)
        self.full_slots = [[n for n, _ in slot] for slot in full.slots]
        self.slot_index = 0
        mine = {n for n in full.participants if self.group.owner(n) == self.group.rank}
        slots = [[(n, t) for n, t in slot if n in mine] for slot in full.slots]
        if not self.shared_server:
            if self.one_by_one:  # independent clients: each whole in turn, on one working copy
                iters = self.algo.iterations(self.ctx.tau, clients)
                slots = [[(n, t)] for n in sorted(mine) for t in range(iters)]
            slots = [s for s in slots if s]
        parts = full.participants
        return plan_of(parts, [full.weights[n] for n in parts], slots)

    def run_round(self, rnd: int, clients: list[int]) -> None:
        # Rank 0 reaches this barrier after writing the last round's checkpoint: the per-client state
        # files it no longer names can go.
        dist.barrier()
        if not self.group.leader:
            self.client_states.saved()
        super().run_round(rnd, clients)
        self._sum_counters()

    def _iterate(self, slot, held) -> None:  # type: ignore[no-untyped-def]
        if slot:
            super()._iterate(slot, held)
        else:  # no client of this rank in a shared-server slot: it still takes part in the exchanges
            self._phase = 0
            done = False
            while not done:
                _, done = self._exchange([])
        self.slot_index += 1

    def _main_server(self, batch: list[Smashed], copies: list[int]):
        if not self.shared_server:
            return super()._main_server(batch, copies)  # each client's own server copy, on its rank
        self._phase = 0
        return self._remote(batch)

    def _remote(self, batch: list[Smashed]) -> Generator[list[Message], list[Smashed], list[Message]]:
        """The main server of this slot as the clients of this rank see it: every exchange a gather of
        the slot's messages on rank 0, which runs the definition's main-server step on the whole slot,
        and a scatter of the replies."""
        replies, done = self._exchange(batch)
        while not done:
            batch = yield replies
            replies, done = self._exchange(batch)
        return replies

    def _structure(
        self, key: tuple[str, int], mine: Message | None
    ) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The tensors (name: dtype, shape after the rows) of one exchange of the definition, learnt from
        any rank that has them the first time it happens (a collective of every rank)."""
        if key not in self._structures:
            found: list[Any] = [None] * self.group.world
            entry = None if mine is None else {k: (str(v.dtype), tuple(v.shape[1:])) for k, v in mine.items()}
            dist.all_gather_object(found, entry)
            self._structures[key] = next(e for e in found if e is not None)
        return self._structures[key]

    def _exchange(self, batch: list[Smashed]) -> tuple[list[Message], bool]:
        """One exchange of the current slot: gather every rank's messages on rank 0 (padded to the
        fullest rank's rows), which drives the definition's main server on the whole slot in the slot's
        order (the giant batch exactly as one process forms it, BatchNorm included), then scatter each
        rank its clients' replies. Returns this rank's replies and whether the main server is done."""
        g, ctx = self.group, self.ctx
        slot = self.full_slots[self.slot_index]
        phase = self._phase
        self._phase += 1
        rows = [sum(ctx.batch_size(n) for n in slot if g.owner(n) == r) for r in range(g.world)]
        mine = {k: torch.cat([s.tensors[k] for s in batch]) for k in batch[0].tensors} if batch else None
        up = self._structure(("up", phase), mine)
        gathered = {name: self._gather(name, up[name], rows, mine) for name in sorted(up)}
        replies_whole: list[Message] | None = None
        done = torch.zeros(1, device=g.device)
        if g.leader:
            taken, whole = [0] * g.world, []
            for n in slot:  # in the slot's order
                r, b = g.owner(n), ctx.batch_size(n)
                whole.append(Smashed(n, {k: v[r][taken[r] : taken[r] + b] for k, v in gathered.items()}))
                taken[r] += b
            replies_whole, finished = self._serve(whole, phase)
            done.fill_(float(finished))
        dist.broadcast(done, src=0)
        down = self._structure(("down", phase), None if replies_whole is None else _joined(replies_whole))
        mine_rows = rows[g.rank]
        out: dict[str, torch.Tensor] = {}
        for name in sorted(down):
            dtype, tail = down[name]
            buffer = torch.zeros(max(rows), *tail, dtype=_dtype(dtype), device=g.device)
            chunks = None
            if g.leader:
                assert replies_whole is not None
                chunks = [torch.zeros_like(buffer) for _ in range(g.world)]
                filled = [0] * g.world
                for n, reply in zip(slot, replies_whole, strict=True):
                    r, t = g.owner(n), reply[name]
                    chunks[r][filled[r] : filled[r] + len(t)] = t
                    filled[r] += len(t)
            dist.scatter(buffer, chunks, src=0)
            out[name] = buffer[:mine_rows]
        sizes = [ctx.batch_size(s.client) for s in batch]
        split = [t.split(sizes) for t in out.values()]
        replies = [dict(zip(out, parts, strict=True)) for parts in zip(*split, strict=True)] if out else []
        replies = replies or [{} for _ in batch]
        return replies, bool(done.item())

    def _gather(
        self, name: str, spec: tuple[str, tuple[int, ...]], rows: list[int], mine: Message | None
    ) -> list[torch.Tensor]:
        """Every rank's rows of tensor ``name`` on rank 0 (padded to the fullest rank's)."""
        g = self.group
        dtype, tail = spec
        t = torch.zeros(max(rows), *tail, dtype=_dtype(dtype), device=g.device)
        if mine is not None:
            t[: rows[g.rank]] = mine[name]
        parts = [torch.empty_like(t) for _ in range(g.world)] if g.leader else None
        dist.gather(t, parts, dst=0)
        return parts or []

    def _serve(self, whole: list[Smashed], phase: int) -> tuple[list[Message], bool]:
        """Rank 0: the definition's main server on the whole slot, one exchange at a time."""
        if phase == 0:
            answer = super()._main_server(whole, [0] * len(whole))
            if not inspect.isgenerator(answer):
                return answer, True
            self._server = answer
            step = lambda: next(self._server)  # noqa: E731
        else:
            step = lambda: self._server.send(whole)  # noqa: E731
        return server_step(step)

    def _end_round(self) -> None:
        """The fed server's sums as one all-reduce; its rule then runs on every rank alike (the same
        inputs, the same next model and state); rank 0's shared server parts to every rank."""
        g = self.group
        sums = self.fed.partial()
        names: list[Any] = [None] * g.world
        dist.all_gather_object(
            names,
            {
                k: tuple(acc.total.to_dict()[f].shape for f in State.KEYS)
                for k, acc in sums.items()
                if acc.total is not None
            },
        )
        shapes = {k: v for entry in names for k, v in entry.items()}
        for name in sorted(shapes):
            acc = sums.setdefault(name, WeightedSum())
            if acc.total is None:  # a rank with no client this round adds zeros
                acc.total = State(*(torch.zeros(s, device=g.device) for s in shapes[name]))
            for t in acc.total.to_dict().values():
                dist.all_reduce(t)
        uploaded: list[Any] = [None] * g.world
        dist.all_gather_object(uploaded, list(self.fed.uploaded))
        self.fed.uploaded = sorted(n for entry in uploaded for n in entry)
        for name, acc in self._server_parts.sums.items():  # per-client server copies
            if acc.total is None:
                acc.total = State(*(torch.zeros_like(t) for t in self.model[name].to_dict().values()))
            for t in acc.total.to_dict().values():
                dist.all_reduce(t)
        super()._end_round()
        for part in self.algo.server_parts:
            if part.shared:
                for t in self.model[part.name].to_dict().values():
                    dist.broadcast(t, src=0)

    def checkpoint_client_states(self) -> dict[str, Any] | None:
        """On rank 0, every rank's per-client states (each client's lives on the rank that owns it)."""
        parts: list[Any] = [None] * self.group.world
        dist.all_gather_object(parts, self.client_states.state_dict())
        if not self.group.leader:
            return None
        return {
            "memory": {n: s for p in parts for n, s in p["memory"].items()},
            "files": {n: v for p in parts for n, v in p["files"].items()},
            "version": max(p["version"] for p in parts),
        }

    def _sum_counters(self) -> None:
        """Bytes, samples, steps and the loss meter of every rank, summed (rank 0 reports them)."""
        ctx, device = self.ctx, self.group.device
        counts = [*ctx.link.sent, *ctx.link.received, *(s.samples for s in ctx.sides)]
        counts += [*(s.steps for s in ctx.sides), ctx.meter.loss_count]
        t = torch.tensor(counts, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        values = [round(v) for v in t.tolist()]
        n, k = len(ctx.link.sent), len(ctx.sides)
        ctx.link.sent, ctx.link.received = values[:n], values[n : 2 * n]
        for i, side in enumerate(ctx.sides):
            side.samples, side.steps = values[2 * n + i], values[2 * n + k + i]
        ctx.meter.loss_count = values[-1]
        kinds: list[dict[str, int]] = [{} for _ in range(self.group.world)]
        dist.all_gather_object(kinds, ctx.link.by_kind)
        ctx.link.by_kind = {}
        for d in kinds:
            for kind, size in d.items():
                ctx.link.by_kind[kind] = ctx.link.by_kind.get(kind, 0) + size
        loss = torch.zeros((), dtype=torch.float64, device=device)
        if ctx.meter.loss_sum is not None:
            loss += ctx.meter.loss_sum
        dist.all_reduce(loss)
        if ctx.meter.loss_sum is None:
            ctx.meter.loss_sum = loss
        else:
            ctx.meter.loss_sum.copy_(loss)
