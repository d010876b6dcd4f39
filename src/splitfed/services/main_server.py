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

import inspect
import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import torch

from ..algorithms import Algorithm, Smashed, create
from ..engine.checkpoint import STATE_REMEDY, load_checkpoint, save_checkpoint
from ..engine.side import State
from ..engine.template import Each, Tensor, Tensors, mismatch
from ..errors import SplitfedError
from ..executors.exchange import server_step
from ..executors.local import InProcessMainServer
from ..executors.parts import prepare_context
from ..executors.rounds import ServerParts, begin_round, model_dict, model_on, on_device, plan_round
from ..executors.trace import Schema
from ..setup import Setup
from . import splitfed_pb2 as pb
from . import splitfed_pb2_grpc as pb_grpc
from ._common import (
    Messages,
    ProtocolError,
    abort,
    admit,
    check_client,
    model_tensors,
    off_wire,
    on_wire,
    run_identity,
    serve,
    serve_until_finished,
)
from .deploy import Deployment
from .security import Tokens
from .wire import Counting, WireError, decode, encode, header

log = logging.getLogger("splitfed")
FAILED, AHEAD = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED


def reply_template(schema: Schema) -> dict[str, Tensor]:
    """A checkpoint template for a reply of this schema (any number of rows)."""
    return {name: Tensor((None, *shape), dtype) for name, (dtype, shape) in schema.items()}


class MainServer(pb_grpc.MainServerServicer):
    def __init__(self, setup: Setup, deploy: Deployment) -> None:
        self.setup, self.deploy, self.cfg = setup, deploy, setup.cfg
        name = self.cfg.algorithm[0]
        self.algo: Algorithm = create(self.cfg, name)
        self.ctx = prepare_context(self.algo, setup)
        self.clients = list(range(self.cfg.clients))
        self.sides = {}  # each part the main server trains: one shared copy, or one per client (by id)
        for part in self.algo.server_parts:
            side = self.ctx.side(part.name, 1 if part.shared else len(self.clients), "main_server")
            side.metered = part.name == self.algo.chain[-1]
            self.sides[part.name] = side
        self.messages = Messages(setup, name)
        self.tokens = Tokens.load(deploy.tokens)
        self.run = run_identity(self.cfg)  # what every caller's run must be
        self.state_file = Path(deploy.state_dir) / "main_server.pt"
        self.cv = threading.Condition()
        self.round = 1
        self.model = {
            p.name: self.ctx.parts[p.name].init.clone() for p in self.algo.server_parts
        }  # at r's start
        # client -> ((round, iteration, phase), the answer, whether more follows): for a retry of it
        self.last: dict[int, tuple[tuple[int, int, int], dict[str, torch.Tensor], bool]] = {}
        # round -> (the server parts at its end, its train loss and samples, the clients left out)
        self.snapshots: dict[int, tuple[dict[str, State], dict[str, float], list[int]]] = {}
        # round -> client -> [bytes in, bytes out] on the wire
        self.wire_bytes: dict[int, dict[int, list[int]]] = {}
        self.finished = threading.Event()
        self.failure: str | None = None  # why this server gave up waiting, if it did
        self.told_behind: set[int] = set()  # clients found ahead of this state (logged once each)
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
        self.phase = 0  # the exchange of the current slot
        self.members: list[tuple[int, int]] = []  # the current slot's clients once its first exchange ran
        self.conversation: Any = None  # the definition's main server mid-slot (a generator)
        self.arrived: dict[tuple[int, int, int], dict[str, torch.Tensor]] = {}
        self.dropped: set[int] = set()
        self.done_iters = dict.fromkeys(self.clients, 0)
        self.clock: float | None = None  # when someone started waiting on the current slot
        self.progress = time.monotonic()  # when the last exchange was handled (or the round began)
        begin_round(self.ctx, self.round)
        self.samples = 0
        for name, side in self.sides.items():
            for k in range(side.num_copies):
                side.load(k, self.model[name])

    def _end_round(self) -> None:
        r = self.round
        server_parts = ServerParts(self.algo, self.sides)  # a client's copy is the one of its id
        stayed = [n for n in self.clients if n not in self.dropped]
        total = sum(self.weights[n] for n in stayed)
        for n in stayed:  # the copies of the clients that stayed, by p_n
            server_parts.add(n, self.weights[n] / total)
        model = server_parts.result()
        info = {"train_loss": self.ctx.meter.train_loss, "samples": float(self.samples)}
        self.snapshots = {k: v for k, v in self.snapshots.items() if k >= r - 1}
        self.snapshots[r] = (model, info, sorted(self.dropped))
        self.model = model
        last = {n: (*key, reply, more) for n, (key, reply, more) in self.last.items()}
        state = {"model": model_dict(model), "info": info, "dropped": sorted(self.dropped), "last": last}
        save_checkpoint(self.state_file, "main_server", self.cfg, {"round": r} | state)
        log.info(f"main server: round {r} done, train loss {info['train_loss']:.4f}")
        self.round += 1
        self._start_round()

    def _restore(self) -> None:
        expect = {  # what _end_round saves, in this experiment's shapes
            "round": int,
            "model": model_dict(self.model),
            "info": {"train_loss": float, "samples": float},
            "dropped": Each(int),
            "last": Each((int, int, int, Tensors(), bool), keyed=True),
        }
        saved = load_checkpoint(self.state_file, "main_server", self.cfg, expect, STATE_REMEDY)
        for n, (_, _, phase, reply, _) in saved["last"].items():  # each answer is one of this algorithm's
            problem = (
                f"last[{n}] names exchange {phase}, which this algorithm does not have"
                if not 0 <= phase < self.messages.phases
                else mismatch(reply_template(self.messages.trace.phases[phase][1]), reply, f"last[{n}]")
            )
            if problem is not None:
                raise SplitfedError(f"checkpoint {self.state_file} cannot be used: {problem}; {STATE_REMEDY}")
        device = self.setup.device
        self.model = model_on(saved["model"], device)
        self.round = saved["round"] + 1
        self.snapshots[saved["round"]] = (self.model, saved["info"], saved["dropped"])
        self.last = {
            int(n): ((r, t, p), on_device(reply, device), more)
            for n, (r, t, p, reply, more) in saved["last"].items()
        }
        log.info(f"main server: resumed after round {saved['round']} from {self.state_file}")

    def _process(self, members: list[tuple[int, int]]) -> None:
        """One exchange of the current slot with the clients present (the definition's main_server step,
        or its next step where it talks more than once); answer each."""
        batch = [Smashed(n, self.arrived.pop((n, t, self.phase))) for n, t in members]
        done = True
        if members:
            if self.phase == 0:
                self.members = members
                copy_of = {
                    p.name: {n: 0 if p.shared else n for n, _ in members} for p in self.algo.server_parts
                }
                answer = self.algo.main_server(InProcessMainServer(self.sides, copy_of), batch)
                self.conversation = answer if inspect.isgenerator(answer) else None
                if self.conversation is None:
                    replies = answer
                else:
                    replies, done = server_step(lambda: next(self.conversation))
                self.samples += sum(len(next(iter(s.tensors.values()))) for s in batch if s.tensors)
            else:
                replies, done = server_step(lambda: self.conversation.send(batch))
            if replies is None or len(replies) != len(members):
                raise SplitfedError(
                    f"{self.algo.name}: its main server answered {len(members)} clients wrongly"
                )
            for (n, t), reply in zip(members, replies, strict=True):
                self.last[n] = (
                    (self.round, t, self.phase),
                    {k: v.detach() for k, v in reply.items()},
                    not done,
                )
        if done:
            for n, _ in members:
                self.done_iters[n] += 1
            self.pos += 1
            self.phase = 0
            self.conversation = None
        else:
            self.phase += 1
        self.clock = time.monotonic() if self.arrived else None
        self.progress = time.monotonic()
        if self.pos == len(self.slots):
            self._end_round()
        self.cv.notify_all()

    def _advance(self) -> None:
        """Process the current exchange if all of it is here, or (policy drop, first exchange of a slot)
        if its time is up; give up (a clear stop, state saved) when nothing moved for give_up_s."""
        while self.pos < len(self.slots) and self.round <= self.cfg.rounds:
            slot = self.slots[self.pos] if self.phase == 0 else self.members
            members = [req for req in slot if req[0] not in self.dropped]
            present = [req for req in members if (*req, self.phase) in self.arrived]
            if len(present) == len(members):
                self._process(present)
                continue
            waited = time.monotonic() - self.clock if self.clock is not None else 0.0
            late = self.deploy.straggler_policy == "drop" and waited > self.deploy.iteration_timeout_s
            if late and self.phase == 0:  # later exchanges of a slot wait for the clients it began with
                missing = sorted({n for n, t in members if (n, t, 0) not in self.arrived})
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
        self, n: int, r: int, t: int, phase: int, message: dict[str, torch.Tensor], context: Any
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """Client n's message of exchange ``phase`` of (r, t): wait for it to be processed; the reply and
        whether the main server talks again in this iteration."""
        with self.cv:
            last = self.last.get(n)
            if last is not None and last[0] == (r, t, phase):
                return last[1], last[2]  # a retry of an answered request: the same answer
            self._check_request(n, r, t, phase)
            self.arrived[(n, t, phase)] = message
            self.clock = self.clock or time.monotonic()
            return self._await_reply(n, r, t, phase, context)

    def _check_request(self, n: int, r: int, t: int, phase: int) -> None:
        """Refuse a request the current round cannot take, with the status that tells the client what to
        do (sit the round out, restart it, stop); a client found behind its place is left out."""
        if r < self.round:
            raise ProtocolError(FAILED, f"round {r} went on without client {n}; rejoin round {self.round}")
        here = (n, t) in self.slot_of and r == self.round
        passed = here and (
            self.slot_of[(n, t)] < self.pos or (self.slot_of[(n, t)] == self.pos and phase < self.phase)
        )
        if passed and n not in self.dropped:
            # A client that restarted mid-round lost its place: it sits out the rest of the round.
            log.info(f"main server: client {n} restarted within round {r}; it rejoins round {r + 1}")
            self.dropped.add(n)
            self._advance()
            self.cv.notify_all()
        if passed or n in self.dropped:
            raise ProtocolError(FAILED, f"client {n} is out of round {r}; rejoin round {r + 1}")
        if r > self.round:
            raise self._behind(n, r)
        if t != self.done_iters[n] + 1:
            raise ProtocolError(AHEAD, f"restart round {self.round}")
        if (n, t) not in self.slot_of:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"iteration {t} is outside this round")
        current = self.slot_of[(n, t)] == self.pos
        if phase > 0 and not (current and phase == self.phase):
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, f"exchange {phase} is not due")

    def _behind(self, n: int, r: int) -> ProtocolError:
        """A client reaches round r once the fed server has averaged round r - 1 with this server's model
        of it, which this server saved first: a client further on means this state is older than the
        deployment's (a state file put back from an earlier round), or a hostile message. Asking it to
        restart an older round would go round in circles; the client is refused with a status it stops
        on, and this server stays up."""
        why = (
            f"client {n} is in round {r}, but this server's state ({self.state_file}) ends with "
            f"round {self.round - 1}: it is older than the rest of the deployment; put back the copy "
            "saved in the fed server's round, or start over with an empty state_dir and run directory"
        )
        if n not in self.told_behind:  # once per client: a flood of such messages is one line
            self.told_behind.add(n)
            log.error(f"main server: {why}")
        return ProtocolError(grpc.StatusCode.DATA_LOSS, why)

    def _await_reply(
        self, n: int, r: int, t: int, phase: int, context: Any
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """Client n's request is in: the reply once its exchange is processed (or why there is none)."""
        while True:
            self._advance()
            last = self.last.get(n)
            if last is not None and last[0] == (r, t, phase):
                return last[1], last[2]
            if n in self.dropped or self.round > r:
                raise ProtocolError(FAILED, f"client {n} was left out of round {r}; rejoin round {r + 1}")
            if self.failure is not None:
                raise ProtocolError(grpc.StatusCode.UNAVAILABLE, f"the main server stopped: {self.failure}")
            if not context.is_active():
                self.arrived.pop((n, t, phase), None)  # the caller gave up; it will send again
                raise ProtocolError(grpc.StatusCode.CANCELLED, "the caller went away")
            self.cv.wait(timeout=0.5)

    # --- RPCs -------------------------------------------------------------------------------------------
    def Step(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        # before anything of the message is read
        identity = admit(self.tokens, context, self.run, "main server")
        frames = Counting(request_iterator)
        try:
            head, tensors = decode(frames, lambda head: self.messages.step_message(head.phase))
            n = head.client
            check_client(identity, n, self.cfg.clients)
            self.messages.check_batch(n, tensors)
            device = self.setup.device
            message = off_wire(tensors, device)
            reply, more = self.submit(n, head.round, head.iteration, head.phase, message, context)
        except (WireError, ProtocolError) as e:
            abort(context, e)
        out = on_wire(reply, self.cfg.wire_dtype)
        status = "more" if more else "ok"
        reply_frames = list(
            encode(
                header(client=n, round=head.round, iteration=head.iteration, phase=head.phase, status=status),
                out,
            )
        )
        with self.cv:
            counts = self.wire_bytes.setdefault(head.round, {}).setdefault(n, [0, 0])
            counts[0] += frames.bytes
            counts[1] += sum(f.ByteSize() for f in reply_frames)
        return iter(reply_frames)

    def ServerWeights(self, request: pb.Header, context: grpc.ServicerContext) -> Any:
        identity = admit(self.tokens, context, self.run, "main server")
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
            model, info, dropped = self.snapshots[r]
            info = dict(info)
            for n, (b_in, b_out) in self.wire_bytes.get(r, {}).items():
                info[f"in:{n}"], info[f"out:{n}"] = b_in, b_out
        reply = header(client=-1, round=r, status="ok", info=info, dropped=dropped)
        if request.status == "info":  # the round's numbers only, asked once its replies are all sent
            if r == self.cfg.rounds:
                self.finished.set()  # the fed server has all it needs from this server
            return iter([pb.Frame(header=reply)])
        return encode(reply, model_tensors(model))

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
    # the fed server's last call (the final round's numbers) ends within the stop's grace
    serve_until_finished(service, server, "main server")
