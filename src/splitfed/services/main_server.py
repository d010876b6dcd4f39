"""``splitfed main-server``: the main server as a network service, for any algorithm that splits the model.

It walks each round's slots — the same ``plan_round`` as the in-process executors, so the same order and
the same sets of client batches handled together — and gives each slot's smashed data to the algorithm's
own ``main_server`` step, on the server-side models its definition asks for (one shared model, or a copy
per client averaged with the definition's ``fed_server`` rule at round end).

Requests are checked before they touch state (token first, then identity, tensors, round and iteration).
A retry of an answered request gets the same answer; a request for a slot already handled (a client that
restarted mid-round) takes that client out of the rest of the round (FAILED_PRECONDITION: it rejoins the
next); a request ahead of the server, as after a restart of this server, is told to restart the server's
round (ABORTED "restart round R"). With straggler_policy "drop", a slot whose clients do not all arrive
within iteration_timeout_s goes ahead with those present; with "wait", a slot that waits longer than
give_up_s stops the server with a message (its state is saved every round: restart it to continue).
"""

import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import torch

from ..algorithms import Algorithm, Smashed, create
from ..algorithms.base import PER_CLIENT
from ..engine.checkpoint import STATE_REMEDY, Each, Tensor, load_checkpoint, save_checkpoint
from ..engine.side import State
from ..executors.local import InProcessMainServer, plan_round
from ..setup import Setup
from . import splitfed_pb2 as pb
from . import splitfed_pb2_grpc as pb_grpc
from ._common import GaveUp, ProtocolError, Shapes, abort, check_client, on_wire, serve, state_tensors
from .deploy import Deployment
from .security import Tokens
from .wire import Counting, WireError, decode, encode, header

log = logging.getLogger("splitfed")
FAILED, AHEAD = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED


class MainServer(pb_grpc.MainServerServicer):
    def __init__(self, setup: Setup, deploy: Deployment) -> None:
        self.setup, self.deploy, self.cfg = setup, deploy, setup.cfg
        self.algo: Algorithm = create(self.cfg, self.cfg.algorithm[0])
        self.ctx = setup.context()
        self.clients = list(range(self.cfg.clients))
        copies = len(self.clients) if self.algo.server_side == PER_CLIENT else 1
        self.server = self.ctx.server_side(copies=copies)  # w_s, or w_{s,n} for each client n
        self.shapes = Shapes(setup)
        self.tokens = Tokens.load(deploy.tokens)
        self.state_file = Path(deploy.state_dir) / "main_server.pt"
        self.cv = threading.Condition()
        self.round = 1
        self.w_s = setup.init_s.clone()  # w_s at the start of the current round
        # client -> ((round, iteration), the answer): the last answer, for a retry of the same request
        self.last: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}
        # round -> (w_s at its end, its train loss and samples, the clients left out): for the fed server
        self.snapshots: dict[int, tuple[State, dict[str, float], list[int]]] = {}
        # round -> client -> [bytes in, bytes out] on the wire
        self.wire_bytes: dict[int, dict[int, list[int]]] = {}
        self.finished = threading.Event()
        self.failure: str | None = None  # why this server gave up waiting, if it did
        if self.state_file.exists():
            self._restore()
        self._start_round()

    # --- rounds and slots ---------------------------------------------------------------------------
    def _start_round(self) -> None:
        plan = plan_round(self.algo, self.ctx, self.round, self.clients, one_by_one=False)
        self.weights = plan.weights
        self.slots = [[(n, t + 1) for n, t in slot] for slot in plan.slots]  # iterations count from 1
        self.slot_of = {req: k for k, slot in enumerate(self.slots) for req in slot}
        self.pos = 0
        self.arrived: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.dropped: set[int] = set()
        self.done_iters = dict.fromkeys(self.clients, 0)
        self.clock: float | None = None  # when someone started waiting on the current slot
        self.progress = time.monotonic()  # when the last slot was handled (or the round began)
        self.ctx.meter.reset()
        self.ctx.set_round(self.round)  # the round's learning rate (lr_schedule)
        self.samples = 0
        for k in range(self.server.num_copies):
            self.server.load(k, self.w_s)

    def _end_round(self) -> None:
        r = self.round
        if self.algo.server_side == PER_CLIENT:  # the copies of the clients that stayed, by p_n
            stayed = [n for n in self.clients if n not in self.dropped]
            total = sum(self.weights[n] for n in stayed)
            acc = self.algo.fed_server()
            for n in stayed:
                acc.add(self.server.state(n), self.weights[n] / total)
            w_s = acc.result
        else:
            w_s = self.server.state(0).clone()
        info = {"train_loss": self.ctx.meter.train_loss, "samples": float(self.samples)}
        self.snapshots = {k: v for k, v in self.snapshots.items() if k >= r - 1}
        self.snapshots[r] = (w_s, info, sorted(self.dropped))
        self.w_s = w_s
        save_checkpoint(
            self.state_file,
            "main_server",
            self.cfg,
            {
                "round": r,
                "w_s": w_s.to_dict(),
                "info": info,
                "dropped": sorted(self.dropped),
                "last": {n: (key[0], key[1], grad) for n, (key, grad) in self.last.items()},
            },
        )
        log.info(f"main server: round {r} done, train loss {info['train_loss']:.4f}")
        self.round += 1
        self._start_round()

    def _restore(self) -> None:
        expect = {  # what _end_round saves, in this experiment's shapes
            "round": int,
            "w_s": self.setup.init_s.to_dict(),
            "info": {"train_loss": float, "samples": float},
            "dropped": Each(int),
            "last": Each((int, int, Tensor((None, *self.shapes.smashed))), keyed=True),
        }
        saved = load_checkpoint(self.state_file, "main_server", self.cfg, expect, STATE_REMEDY)
        device = self.setup.device
        self.w_s = State.from_dict({k: v.to(device) for k, v in saved["w_s"].items()})
        self.round = saved["round"] + 1
        self.snapshots[saved["round"]] = (self.w_s, saved["info"], saved["dropped"])
        self.last = {int(n): ((r, t), grad.to(device)) for n, (r, t, grad) in saved["last"].items()}
        log.info(f"main server: resumed after round {saved['round']} from {self.state_file}")

    def _process(self, members: list[tuple[int, int]]) -> None:
        """Train on the slot's requests present (the definition's main_server step); answer each."""
        batch = [Smashed(n, *self.arrived.pop((n, t))) for n, t in members]
        if members:
            copy_of = {n: n if self.algo.server_side == PER_CLIENT else 0 for n, _ in members}
            grads = self.algo.main_server(InProcessMainServer(self.server, copy_of), batch)
            for (n, t), grad in zip(members, grads, strict=True):
                self.last[n] = ((self.round, t), grad.detach())
                self.done_iters[n] += 1
                self.samples += len(grad)
        self.pos += 1
        self.clock = time.monotonic() if self.arrived else None
        self.progress = time.monotonic()
        if self.pos == len(self.slots):
            self._end_round()
        self.cv.notify_all()

    def _advance(self) -> None:
        """Process the current slot if all of it is here, or (policy drop) if its time is up; give up
        (a clear stop, state saved) when nothing moved for give_up_s."""
        while self.pos < len(self.slots) and self.round <= self.cfg.rounds:
            members = [req for req in self.slots[self.pos] if req[0] not in self.dropped]
            present = [req for req in members if req in self.arrived]
            if len(present) == len(members):
                self._process(present)
                continue
            waited = time.monotonic() - self.clock if self.clock is not None else 0.0
            if self.deploy.straggler_policy == "drop" and waited > self.deploy.iteration_timeout_s:
                missing = sorted({n for n, t in members if (n, t) not in self.arrived})
                log.info(f"main server: round {self.round} goes on without clients {missing} (late)")
                self.dropped |= set(missing)
                self._process(present)
                continue
            break
        idle = time.monotonic() - self.progress
        if idle > self.deploy.give_up_s and self.failure is None:
            waiting_for = (
                f"clients {sorted({n for n, _ in self.slots[self.pos]} - self.dropped)}"
                if self.round <= self.cfg.rounds
                else "the fed server to collect the last round"
            )
            self.failure = (
                f"nothing moved for {idle:.0f} s (give_up_s {self.deploy.give_up_s:g}) waiting for "
                f"{waiting_for}; state saved after round {self.round - 1}: restart this server to continue"
            )
            self.finished.set()
            self.cv.notify_all()

    def submit(
        self, n: int, r: int, t: int, smashed: torch.Tensor, labels: torch.Tensor, context: Any
    ) -> torch.Tensor:
        """Client n's smashed data for (r, t): wait for its slot to be processed; its smashed_grad."""
        with self.cv:
            last = self.last.get(n)
            if last is not None and last[0] == (r, t):
                return last[1]  # a retry of an answered request: the same answer
            if r < self.round:
                raise ProtocolError(
                    FAILED, f"round {r} went on without client {n}; rejoin round {self.round}"
                )
            passed = r == self.round and (n, t) in self.slot_of and self.slot_of[(n, t)] < self.pos
            if passed and n not in self.dropped:
                # A client that restarted mid-round lost its place: it sits out the rest of the round.
                log.info(f"main server: client {n} restarted within round {r}; it rejoins round {r + 1}")
                self.dropped.add(n)
                self._advance()
                self.cv.notify_all()
            if passed or n in self.dropped:
                raise ProtocolError(FAILED, f"client {n} is out of round {r}; rejoin round {r + 1}")
            if r > self.round or t != self.done_iters[n] + 1:
                raise ProtocolError(AHEAD, f"restart round {self.round}")
            if (n, t) not in self.slot_of:
                raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"iteration {t} is outside this round")
            self.arrived[(n, t)] = (smashed, labels)
            self.clock = self.clock or time.monotonic()
            while True:
                self._advance()
                last = self.last.get(n)
                if last is not None and last[0] == (r, t):
                    return last[1]
                if n in self.dropped or self.round > r:
                    raise ProtocolError(FAILED, f"client {n} was left out of round {r}; rejoin round {r + 1}")
                if self.failure is not None:
                    raise ProtocolError(
                        grpc.StatusCode.UNAVAILABLE, f"the main server stopped: {self.failure}"
                    )
                if not context.is_active():
                    self.arrived.pop((n, t), None)  # the caller gave up; it will send again
                    raise ProtocolError(grpc.StatusCode.CANCELLED, "the caller went away")
                self.cv.wait(timeout=0.5)

    # --- RPCs -------------------------------------------------------------------------------------------
    def Step(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        identity = self.tokens.identify(context)  # before anything of the message is read
        frames = Counting(request_iterator)
        try:
            head, tensors = decode(frames, self.shapes.smashed_message())
            n = head.client
            check_client(identity, n, self.cfg.clients)
            self.shapes.check_batch(n, tensors["smashed"], tensors["labels"])
            smashed = tensors["smashed"].float().to(self.setup.device)
            labels = tensors["labels"].to(smashed.device)
            grad = self.submit(n, head.round, head.iteration, smashed, labels, context)
        except (WireError, ProtocolError) as e:
            abort(context, e)
        reply = list(
            encode(
                header(client=n, round=head.round, iteration=head.iteration, status="ok"),
                {"smashed_grad": on_wire(grad, self.cfg.wire_dtype)},
            )
        )
        with self.cv:
            counts = self.wire_bytes.setdefault(head.round, {}).setdefault(n, [0, 0])
            counts[0] += frames.bytes
            counts[1] += sum(f.ByteSize() for f in reply)
        return iter(reply)

    def ServerWeights(self, request: pb.Header, context: grpc.ServicerContext) -> Any:
        identity = self.tokens.identify(context)
        if identity != "fed_server":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not read the server-side model")
        r = request.round
        with self.cv:
            while r not in self.snapshots:
                if r < self.round - 1 or r > self.cfg.rounds:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no server-side model kept for round {r}")
                if not context.is_active():
                    return iter(())
                self.cv.wait(timeout=0.5)
            w_s, info, dropped = self.snapshots[r]
            info = dict(info)
            for n, (b_in, b_out) in self.wire_bytes.get(r, {}).items():
                info[f"in:{n}"], info[f"out:{n}"] = b_in, b_out
        reply = header(client=-1, round=r, status="ok", info=info, dropped=dropped)
        if request.status == "info":  # the round's numbers only, asked once its replies are all sent
            if r == self.cfg.rounds:
                self.finished.set()  # the fed server has all it needs from this server
            return iter([pb.Frame(header=reply)])
        return encode(reply, state_tensors("server", w_s))

    def tick(self) -> None:
        """Let a slot's deadline pass even when no call comes in."""
        with self.cv:
            self._advance()


def run_main_server(setup: Setup, deploy: Deployment) -> None:
    """Serve until the fed server has taken the final round's server-side model (or SIGTERM); raise
    GaveUp if a wait outlasted its deadline."""
    Path(deploy.state_dir).mkdir(parents=True, exist_ok=True)
    service = MainServer(setup, deploy)
    server = serve(
        deploy,
        deploy.main_server_listen or deploy.main_server,
        setup.cfg.clients + 8,
        lambda s: pb_grpc.add_MainServerServicer_to_server(service, s),
    )
    log.info(
        f"main server: listening on {deploy.main_server} (TLS), {service.algo.name}, "
        f"{setup.cfg.clients} clients, round {service.round}"
    )
    try:
        while not service.finished.wait(timeout=1.0):
            service.tick()
        if service.failure is not None:
            raise GaveUp(f"main server: {service.failure}")
        time.sleep(1.0)
    finally:
        server.stop(grace=2.0)
