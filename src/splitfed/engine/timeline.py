"""A round's wall-clock time on given devices and links: a discrete-event model of what the round did.

An executor that runs a definition knows what each party computes and sends and what each step waits for;
recorded here as *tasks* (compute on a party, a message over a client's link) with their dependencies, in
the order the round issued them, the model needs no knowledge of the algorithm. Each resource (a party's
processor, a client's uplink, a client's downlink; the main server has one processor lane per model it
steps, a shared one or a client's own copy) does its tasks one at a time in issue order; a task starts
when its resource is free and every task it waits for has finished:

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
from typing import Any

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
    lane: str = ""  # a party's compute lanes run side by side (the main server's copies of a model)
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

    def compute(
        self, party: str, flops: float, after: tuple[int, ...] | list[int] = (), lane: str = ""
    ) -> int:
        """``lane``: work of one party that may overlap its other lanes' (one lane does its tasks in issue
        order, like every resource)."""
        return self._add(Task("compute", party, float(flops), tuple(after), lane))

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

    def simulate(self, parties: dict[str, Party], offline: dict[str, float] | None = None) -> RoundTiming:
        """The round's timing; ``offline``: parties offline at the round's start and the seconds until each
        is back (nothing of theirs, compute or link, starts before)."""
        offline = offline or {}
        free: dict[tuple[str, str, str], tuple[float, int | None]] = {}
        for i, t in enumerate(self.tasks):
            resource = (t.kind if t.kind != "compute" else "cpu", t.party, t.lane)
            start, cause = free.get(resource, (offline.get(t.party, 0.0), None))
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
        path, until, first = [], end, None
        i = max(range(len(self.tasks)), key=lambda k: self.tasks[k].finish) if self.tasks else None
        while i is not None:
            first = self.tasks[i]
            path.append((first.kind, first.party, until - first.start))
            until, i = first.start, first.cause
        if first is not None and until > 0:  # the path begins with its first party's wait to come online
            path.append(("offline", first.party, until))
        return RoundTiming(end, dict(compute), dict(transfer), idle, path[::-1])


def _bps(p: Party, kind: str) -> float:
    return p.up_bps if kind == "up" else p.down_bps


# Shares of a training step's FLOPs: the backward pass costs about twice the forward (the weights' and the
# inputs' gradients), so a forward is a third of a step and a backward two thirds.
FORWARD, BACKWARD, STEP = 1 / 3, 2 / 3, 1.0


class RoundRecorder:
    """Builds a round's Timeline while an executor runs it, from what the executor does anyway: the
    clients' and the main server's compute (samples times a part's training FLOPs per sample) and the
    bytes the link counted since the last message. Each client's tasks follow one another; a server step
    waits for the messages of the clients it serves, and for the step before it on the same model (its
    lane: the main server's steps on a shared model run one after another, its steps on the clients' own
    copies side by side); a reply waits for the step that served the client. ``waits``: the clients
    whose start waits for the uploads before it (a model handed from client to client). The union of
    centralized training (a negative id) is in one place, the main server: it computes there and sends
    nothing."""

    def __init__(self, link: Any, waits: set[int]) -> None:
        self.link = link  # its ``sent`` and ``received`` bytes per client, read as they grow
        self.waits = waits
        self.timeline = Timeline()
        self.last: dict[int, int] = {}  # client -> its latest task
        self.step_of: dict[int, int] = {}  # client -> the main-server step that last served it
        self.uploads: list[int] = []  # the round-end uploads so far
        self._counted = {"up": list(link.sent), "down": list(link.received)}

    def _after(self, n: int, *more: int | None) -> list[int]:
        return [t for t in (self.last.get(n), *more) if t is not None]

    def _message(self, kind: str, n: int, after: list[int]) -> None:
        """Client n's message over its uplink or downlink (``kind``): the bytes the link counted for it
        since its last message."""
        if n < 0:
            return
        total = (self.link.sent if kind == "up" else self.link.received)[n]
        size, self._counted[kind][n] = total - self._counted[kind][n], total
        self.last[n] = self.timeline._add(Task(kind, str(n), float(size), tuple(after)))

    def start(self, n: int) -> None:
        """Client n received what it starts from."""
        self._message("down", n, self.uploads if n in self.waits else [])

    def compute(self, clients: list[int], samples: list[int], flops_per_sample: float, share: float) -> None:
        for n, b in zip(clients, samples, strict=True):
            party = MAIN_SERVER if n < 0 else str(n)
            self.last[n] = self.timeline.compute(party, b * flops_per_sample * share, after=self._after(n))

    def send(self, clients: list[int]) -> None:
        """Each client's message of the current exchange."""
        for n in clients:
            self._message("up", n, self._after(n))

    def serve(self, clients: list[int], flops: float, lane: str = "") -> None:
        """A main-server step on the messages of ``clients``, on the model ``lane`` names."""
        step = self.timeline.compute(
            MAIN_SERVER, flops, after=[self.last[n] for n in clients if n in self.last], lane=lane
        )
        self.step_of.update(dict.fromkeys(clients, step))

    def reply(self, clients: list[int]) -> None:
        for n in clients:
            self._message("down", n, self._after(n, self.step_of.get(n)))

    def finish(self, n: int) -> None:
        """Client n's upload at its round's end."""
        self._message("up", n, self._after(n))
        if n >= 0:
            self.uploads.append(self.last[n])

    def end(self) -> Timeline:
        """The fed server's rule, once every upload is in: the round's end."""
        self.timeline.compute(FED_SERVER, 0.0, after=self.uploads)
        return self.timeline
