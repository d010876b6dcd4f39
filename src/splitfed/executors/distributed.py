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

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..algorithms.base import LOCKSTEP, ONE, Algorithm, Smashed
from ..data import ClientStreams
from ..engine.context import UNION, Context
from ..engine.side import State, WeightedSum
from ..errors import SplitfedError
from .local import LocalExecutor, RoundPlan, plan_round


@dataclass(frozen=True)
class Group:
    """This process's place in a torch.distributed job."""

    rank: int
    world: int
    device: torch.device

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
    return Group(rank, world, device)


def leave(group: Group) -> None:
    """Every rank done: leave the job together (a rank that exits while another still talks to it makes
    that one abort)."""
    dist.barrier()
    dist.destroy_process_group()


def share(group: Group, value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object), on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
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
            f"{algo.name}'s main server steps one shared model one client batch at a time "
            f"(schedule {algo.schedule}, client side {algo.client_side}): its clients never compute at "
            "the same time, so more processes would only wait in turn; run it in one process"
        )


class DistributedExecutor(LocalExecutor):
    """Runs ``algo`` on this rank's clients; every rank ends each round with the same ``w_c``, ``w_s``."""

    def __init__(
        self, algo: Algorithm, ctx: Context, group: Group, batched: bool, rounds: list[list[int]]
    ) -> None:
        """``rounds``: each round's participants (to size this rank's copies: only its own clients')."""
        check_distributable(algo)
        self.group = group
        most = max((sum(group.owner(n) == group.rank for n in r) for r in rounds), default=1)
        super().__init__(algo, ctx, batched, cuda_graphs=False, most=most)
        self.shared_server = algo.split and algo.server_side == ONE
        with torch.no_grad():  # the smashed data's shape, for a rank with no client in a slot
            sample = ctx.streams.data.train_x[:2]
            self.smashed_shape = tuple(ctx.client_module.eval()(sample).shape[1:])

    def _plan(self, rnd: int, clients: list[int]) -> RoundPlan:
        """The round's plan (weights over every participant), this rank's part of each slot. A shared
        server's slots all stay, empty or not: every rank takes part in each one's gather."""
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
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for k, slot in enumerate(slots):
            for n, _ in slot:
                first.setdefault(n, k)
                last[n] = k
        return RoundPlan(full.participants, full.weights, slots, first, last)

    def _iterate(self, slot, held) -> None:  # type: ignore[no-untyped-def]
        if slot:
            super()._iterate(slot, held)
        else:  # no client of this rank in a shared-server slot: it still takes part in the exchange
            self._exchange([])
        self.slot_index += 1

    def _main_server(self, batch: list[Smashed], copies: list[int]) -> list[torch.Tensor]:
        if not self.shared_server:
            return super()._main_server(batch, copies)  # each client's own server copy, on its rank
        return self._exchange(batch)

    def _exchange(self, batch: list[Smashed]) -> list[torch.Tensor]:
        """Gather a slot's smashed data on rank 0, which runs the main server's step on the whole slot in
        the slot's order; scatter the gradients back. Returns this rank's clients' gradients."""
        g, ctx = self.group, self.ctx
        slot = self.full_slots[self.slot_index]
        rows = max(sum(ctx.batch_size(n) for n in slot if g.owner(n) == r) for r in range(g.world))
        z = torch.zeros(rows, *self.smashed_shape, device=g.device)  # padded to the fullest rank's rows
        y = torch.zeros(rows, dtype=torch.int64, device=g.device)
        mine = sum(len(s.labels) for s in batch)
        if batch:
            z[:mine] = torch.cat([s.smashed for s in batch])
            y[:mine] = torch.cat([s.labels for s in batch])
        zs = [torch.empty_like(z) for _ in range(g.world)] if g.leader else None
        ys = [torch.empty_like(y) for _ in range(g.world)] if g.leader else None
        dist.gather(z, zs, dst=0)
        dist.gather(y, ys, dst=0)
        grads = torch.empty_like(z)
        chunks = None
        if g.leader:
            assert zs is not None and ys is not None
            taken, whole = [0] * g.world, []
            for n in slot:  # in the slot's order: the giant batch exactly as one process forms it
                r, b = g.owner(n), ctx.batch_size(n)
                whole.append(Smashed(n, zs[r][taken[r] : taken[r] + b], ys[r][taken[r] : taken[r] + b]))
                taken[r] += b
            answers = super()._main_server(whole, [0] * len(whole))
            chunks = [torch.zeros_like(z) for _ in range(g.world)]
            filled = [0] * g.world
            for s, a in zip(whole, answers, strict=True):
                r = g.owner(s.client)
                chunks[r][filled[r] : filled[r] + len(a)] = a
                filled[r] += len(a)
        dist.scatter(grads, chunks, src=0)
        return list(grads[:mine].split([len(s.labels) for s in batch])) if batch else []

    def run_round(self, rnd: int, clients: list[int]) -> None:
        super().run_round(rnd, clients)
        self._sum_counters()

    def _end_round(self) -> None:
        """The fed server's rule as one all-reduce of the weighted sums; rank 0's shared model to all."""
        held = [(self._sums[0], self.w_c)]
        if not self.shared_server:
            held.append((self._sums[1], self.w_s))
        for acc, like in held:
            if not isinstance(acc, WeightedSum):
                raise SplitfedError(f"{self.algo.name}'s fed server is no weighted sum to all-reduce")
            if acc.total is None:  # a rank with no client this round adds zeros
                acc.total = State(*(torch.zeros_like(t) for t in like.to_dict().values()))
            for t in acc.total.to_dict().values():
                dist.all_reduce(t)
        super()._end_round()
        if self.shared_server:
            for t in self.w_s.to_dict().values():
                dist.broadcast(t, src=0)

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
