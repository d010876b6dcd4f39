"""A round's wall-clock time on given devices and links: a discrete-event model of what the round did.

An executor that runs a definition knows what each party computes and sends and what each step waits for;
recorded here as *tasks* (compute on a party, a message over a client's link) with their dependencies, in
the order the round issued them, the model needs no knowledge of the algorithm. Each resource (a party's
processor, a client's uplink, a client's downlink) does its tasks one at a time in issue order; a task
starts when its resource is free and every task it waits for has finished:

    start = max(resource free, finish of each dependency);   finish = start + duration
    compute: flops / the party's rate;   message: bytes / the link's bandwidth + rtt / 2 (the link is busy
    for the bytes only: latency delays delivery, it does not block the next message)

So a lockstep slot waits for its slowest client (the main server's step depends on every upload), clients
taking turns add up (each depends on the server step before it), and FedAvg's clients overlap within a
round (nothing joins them before the upload). The round ends when the last task does; the critical path
is the chain of tasks that decided it (each task's latest dependency, or the task before it on its
resource when that finished later).
"""

from collections import defaultdict
from dataclasses import dataclass, field

MAIN_SERVER = "main_server"
FED_SERVER = "fed_server"


@dataclass(frozen=True)
class Party:
    """How fast a party computes and talks: training FLOP/s, link bandwidths in bit/s, round trip in s."""

    flops: float
    up_bps: float = float("inf")
    down_bps: float = float("inf")
    rtt_s: float = 0.0


@dataclass
class Task:
    kind: str  # "compute", "up" (a client's uplink) or "down" (a client's downlink)
    party: str  # who computes, or the client whose link carries the message
    amount: float  # FLOPs, or bytes
    after: tuple[int, ...]
    start: float = 0.0
    finish: float = 0.0
    cause: int | None = None  # the task whose finish decided this start (None: the round's start)


@dataclass
class RoundTiming:
    """What the model says about one round."""

    time_s: float
    compute_s: dict[str, float]  # per party: time computing
    transfer_s: dict[str, float]  # per client: time its links carried its messages
    idle_s: dict[str, float]  # per party: the round's time neither computing nor sending
    critical_path: list[tuple[str, str, float]]  # (kind, party, seconds) from the round's start to its end

    def critical_share(self) -> dict[str, float]:
        """Seconds of the critical path by kind of work: client compute, uplink, server compute, downlink."""
        share: dict[str, float] = defaultdict(float)
        for kind, party, seconds in self.critical_path:
            who = "server" if party in (MAIN_SERVER, FED_SERVER) else "client"
            share[f"{who} compute" if kind == "compute" else kind] += seconds
        return dict(share)


@dataclass
class Timeline:
    """The tasks of one round, in issue order; ``simulate`` times them on the given parties."""

    tasks: list[Task] = field(default_factory=list)

    def compute(self, party: str, flops: float, after: tuple[int, ...] | list[int] = ()) -> int:
        return self._add(Task("compute", party, float(flops), tuple(after)))

    def up(self, client: str, nbytes: float, after: tuple[int, ...] | list[int] = ()) -> int:
        """A message from ``client`` to a server, over the client's uplink."""
        return self._add(Task("up", client, float(nbytes), tuple(after)))

    def down(self, client: str, nbytes: float, after: tuple[int, ...] | list[int] = ()) -> int:
        """A message from a server to ``client``, over the client's downlink."""
        return self._add(Task("down", client, float(nbytes), tuple(after)))

    def _add(self, task: Task) -> int:
        if any(not 0 <= a < len(self.tasks) for a in task.after):
            raise ValueError(f"a task may wait only for tasks issued before it, got {task.after}")
        self.tasks.append(task)
        return len(self.tasks) - 1

    def simulate(self, parties: dict[str, Party]) -> RoundTiming:
        free: dict[tuple[str, str], tuple[float, int | None]] = {}
        for i, t in enumerate(self.tasks):
            resource = (t.kind if t.kind != "compute" else "cpu", t.party)
            start, cause = free.get(resource, (0.0, None))
            for a in t.after:
                if self.tasks[a].finish > start:
                    start, cause = self.tasks[a].finish, a
            p = parties[t.party]
            busy = t.amount / p.flops if t.kind == "compute" else 8 * t.amount / _bps(p, t.kind)
            t.start, t.cause = start, cause
            t.finish = start + busy + (p.rtt_s / 2 if t.kind != "compute" else 0.0)
            free[resource] = (start + busy, i)
        return self._timing()

    def _timing(self) -> RoundTiming:
        end = max((t.finish for t in self.tasks), default=0.0)
        compute: dict[str, float] = defaultdict(float)
        transfer: dict[str, float] = defaultdict(float)
        for t in self.tasks:
            (compute if t.kind == "compute" else transfer)[t.party] += t.finish - t.start
        parties = set(compute) | set(transfer)
        idle = {p: max(0.0, end - compute.get(p, 0.0) - transfer.get(p, 0.0)) for p in parties}
        # back from the last task: each step's share lasts until the next one on the path started, so the
        # shares partition [0, end] (a message's latency after its link freed counts for the message)
        path, until = [], end
        i = max(range(len(self.tasks)), key=lambda k: self.tasks[k].finish) if self.tasks else None
        while i is not None:
            t = self.tasks[i]
            path.append((t.kind, t.party, until - t.start))
            until, i = t.start, t.cause
        return RoundTiming(end, dict(compute), dict(transfer), idle, path[::-1])


def _bps(p: Party, kind: str) -> float:
    return p.up_bps if kind == "up" else p.down_bps
