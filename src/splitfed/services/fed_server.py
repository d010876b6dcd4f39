"""``splitfed fed-server``: the fed server as a network service, for any algorithm.

Each round it hands every participant the model its definition says the client starts from — the global
w_c^r (and, when the whole model trains on the client, w_s^r), or in a relay the model the previous client
in the round's order left — collects the clients' models at the end of their turn, and combines them with
the definition's ``fed_server`` rule (a relay keeps the last one). It takes the server-side model from the
main server when the model is split, evaluates the assembled model on the whole test set, and reports each
round's record (``on_round``); the caller writes the run directory.

Deadlines: with straggler_policy "drop", a round's average is taken round_timeout_s after its first upload
with the clients that uploaded, and a relay skips a client that keeps its successor waiting that long;
clients the main server left out of a round are not waited for. With "wait" (and in any case once nothing
has moved for give_up_s) the server stops with a message; its state is saved at every round end, before
the new model is handed out, so a restarted fed server continues where it was, and a client whose upload
it lost is asked to send it again.
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ..algorithms import Algorithm, create
from ..algorithms.base import Payload
from ..engine.checkpoint import STATE_REMEDY, load_checkpoint, save_checkpoint
from ..engine.record import DEPLOYMENT, round_record
from ..engine.side import State
from ..engine.template import Records, Tensors
from ..executors.parts import halves, prepare_context
from ..executors.rounds import RoundClock, fed_round_end, model_dict, model_on, on_device, plan_round
from ..setup import Setup
from . import splitfed_pb2 as pb
from . import splitfed_pb2_grpc as pb_grpc
from ._common import (
    Messages,
    ProtocolError,
    abort,
    admit,
    check_client,
    extras_from,
    extras_tensors,
    model_from,
    model_tensors,
    run_identity,
    serve,
    serve_until_finished,
)
from .deploy import Deployment
from .main_link import MainServerLink
from .security import Tokens
from .wire import Counting, WireError, decode, encode, header

log = logging.getLogger("splitfed")
FAILED = grpc.StatusCode.FAILED_PRECONDITION


class FedServer(pb_grpc.FedServerServicer):
    def __init__(
        self,
        setup: Setup,
        deploy: Deployment,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        restarted: bool = False,
    ) -> None:
        self.setup, self.deploy, self.cfg, self.on_round = setup, deploy, setup.cfg, on_round
        name = self.cfg.algorithm[0]
        self.algo: Algorithm = create(self.cfg, name)
        self.ctx = prepare_context(self.algo, setup)
        self.rule = self.algo.fed_server()  # the definition's fed server: its state lives here
        self.client_parts = [p.name for p in self.algo.client_parts]
        self.output_at_client = self.algo.chain[-1] in self.client_parts  # where the training loss is
        self.messages = Messages(setup, name)
        self.tokens = Tokens.load(deploy.tokens)
        self.run = run_identity(self.cfg)  # what every caller's run must be
        self.device = setup.device
        self.split_model = setup.split_model()
        self.state_file = Path(deploy.state_dir) / "fed_server.pt"
        self.cv = threading.Condition()
        self.round = 1
        self.model = {name: spec.init.clone() for name, spec in self.ctx.parts.items()}  # every part
        self.history: list[dict[str, Any]] = []
        if self.state_file.exists():
            self._restore()
        # Who was handed the current round's model died with a previous run of this server: in the round
        # it restarts in, an upload is taken on trust (its token); from the next on, only from a client
        # this server handed that round's model (a round-keyed upload from anyone else is refused).
        restarted = restarted or self.state_file.exists()
        self.trust_round = self.round if restarted else 0
        self.finished = threading.Event()
        self.told_done: set[int] = set()  # clients that heard the training is over
        self.failure: str | None = None
        self.timing = RoundClock(self.history)
        talks = self.algo.talks_to_main_server
        self.main = MainServerLink(deploy, self.run, self.messages, self.algo, self.device) if talks else None
        self._new_round()

    def _restore(self) -> None:
        """Go on after the round the state file ends with (checked whole against this run first)."""
        expect = {
            "round": int,
            "model": model_dict(self.model),
            "fed_server": Tensors(),
            "history": Records(),
        }
        saved = load_checkpoint(self.state_file, "fed_server", self.cfg, expect, STATE_REMEDY)
        self.round = saved["round"] + 1
        self.model = model_on(saved["model"], self.device)
        self.rule.load_state_dict(on_device(saved["fed_server"], self.device))
        self.history = saved["history"]
        log.info(f"fed server: resumed after round {saved['round']} from {self.state_file}")

    def _new_round(self) -> None:
        clients = list(range(self.cfg.clients))
        plan = plan_round(self.algo, self.ctx, self.round, clients, one_by_one=False)
        self.weights = plan.weights
        self.order = plan.finish_order  # the order uploads reach the rule (as in the simulation)
        self.fed = 0  # how many of ``order`` the rule has taken (uploaded or skipped)
        if not self.done:
            start = {p: self.model[p] for p in self.client_parts}
            self.rule.begin(self.round, start, plan.turns, plan.weights)
        self.uploads: dict[int, tuple[Payload, dict[str, float]]] = {}
        self.handed: set[int] = set()  # clients this server gave the round's start to
        self.left_out: set[int] = set()  # clients out of this round: dropped by the main server, or skipped
        self.waiting: set[int] = set()  # clients asking for a start the rule cannot give yet
        self.clock: float | None = None
        self.progress = time.monotonic()  # when this round last moved (round start, an upload)
        self.main_round: tuple[dict[str, State], list[int]] | None = None  # the server parts, who was out
        self.timing.start()
        self.wire = {"in": [0] * self.cfg.clients, "out": [0] * self.cfg.clients}

    @property
    def done(self) -> bool:
        return self.round > self.cfg.rounds

    def _feed(self) -> None:
        """Hand the rule every upload (or skip) it can take, in the simulation's order."""
        while self.fed < len(self.order):
            n = self.order[self.fed]
            if n in self.uploads:
                self.rule.upload(n, self.uploads[n][0])
            elif n in self.left_out:
                self.rule.skip(n)
            else:
                return
            self.fed += 1

    def _leave_out(self, n: int) -> None:
        self.left_out.add(n)
        self._feed()

    # --- aggregation ------------------------------------------------------------------------------------
    def _check_deadlines(self) -> None:
        if self.done or self.failure is not None:
            return
        now = time.monotonic()
        late = self.clock is not None and now - self.clock > self.deploy.round_timeout_s
        if self.waiting and self.deploy.straggler_policy == "drop":
            # someone waits for a start that needs an upload not yet made (a relay): past the deadline,
            # the next client in the order is passed over
            holder = next((m for m in self.order[self.fed :] if m not in self.uploads), None)
            if holder is not None and now - self.progress > self.deploy.round_timeout_s:
                log.info(f"fed server: round {self.round} goes on past client {holder} (late)")
                self._leave_out(holder)
                self.progress = now
                self.cv.notify_all()
        self._maybe_aggregate(late)
        if not self.done and now - self.progress > self.deploy.give_up_s:
            missing = sorted(set(range(self.cfg.clients)) - self.uploads.keys() - self.left_out)
            self.failure = (
                f"round {self.round} saw nothing move for {now - self.progress:.0f} s "
                f"(give_up_s {self.deploy.give_up_s:g}) waiting for clients {missing}; "
                f"state saved after round {self.round - 1}: "
                "restart this server to continue"
            )
            self.finished.set()
            self.cv.notify_all()

    def _maybe_aggregate(self, late: bool = False) -> None:
        if self.done or not self.uploads:
            return
        expected = set(range(self.cfg.clients)) - self.left_out
        if self.algo.talks_to_main_server:  # its round must be over: it says whom it went on without
            if self.main_round is None:
                return
            expected -= set(self.main_round[1])
        if expected <= self.uploads.keys() or (self.deploy.straggler_policy == "drop" and late):
            self._aggregate()

    def _fetch_main_round(self, r: int) -> None:
        """Background: the main server's parts at round r's end and whom it left out (once it ends)."""
        assert self.main is not None
        try:
            main_round = self.main.round_end(r)
        except Exception as e:  # this thread's failure would otherwise vanish with it; the round waits
            log.error(f"fed server: cannot get round {r}'s server-side model from the main server: {e}")
            return
        with self.cv:
            if self.round == r:
                self.main_round = main_round
                self._maybe_aggregate()

    def _aggregate(self) -> None:
        self.timing.trained()  # the round's training ends here; averaging and evaluation follow
        r, clients = self.round, sorted(self.uploads)
        for n in self.order:  # whoever has not uploaded by now is out of the round
            if n not in self.uploads:
                self.left_out.add(n)
        self._feed()
        model = dict(self.model) | fed_round_end(self.algo, self.rule)
        if self.algo.talks_to_main_server:
            assert self.main_round is not None
            model |= self.main_round[0]
        record = self._record(r, clients, model)
        self.history.append(record)
        # Saved before the new model is handed out: a restart never loses a round a client has seen.
        state = {"model": model_dict(model), "fed_server": self.rule.state_dict(), "history": self.history}
        save_checkpoint(self.state_file, "fed_server", self.cfg, {"round": r} | state)
        if self.on_round is not None:
            self.on_round(record)
        self.model = model
        self.round += 1
        self._new_round()
        if self.done:
            self.finished.set()
        self.cv.notify_all()

    def _record(self, r: int, clients: list[int], model: dict[str, State]) -> dict[str, Any]:
        """Round r's record (engine/record.py), as the deployment measures it: the clients' uploads say
        their samples (and loss, where the model's output is theirs), the main server its loss and bytes."""
        infos = [self.uploads[n][1] for n in clients]
        samples = sum(i["samples"] for i in infos)
        train_loss = sum(i.get("train_loss", 0.0) * i["samples"] for i in infos) / max(samples, 1)
        nobody = {"in": [0] * self.cfg.clients, "out": [0] * self.cfg.clients}
        main_loss, main_wire = (None, nobody) if self.main is None else self.main.totals(r)
        flops = {"client": 0.0, "main_server": 0.0}
        for part in self.algo.parts:
            where = "client" if part.name in self.client_parts else "main_server"
            flops[where] += samples * self.ctx.parts[part.name].flops
        data, batch = self.setup.data, self.cfg.eval_batch_size
        w_c, w_s = halves(self.algo, model)
        acc, loss, per_class = self.split_model.evaluate(w_c, w_s, data.test_x, data.test_y, batch)
        wire = {
            role: main_wire if role == "main_server" else self.wire for role in ("main_server", "fed_server")
        }
        everyone = range(self.cfg.clients)
        return round_record(
            DEPLOYMENT,
            algorithm=self.algo.name,
            round=r,
            test_accuracy=acc,
            test_loss=loss,
            test_accuracy_per_class=per_class,
            train_loss=train_loss if main_loss is None else main_loss,
            **self.ctx.rates(r),  # lr_client, lr_server: the round's rates, as the clients and server use
            participants=len(clients),
            dropped_clients=sorted(set(everyone) - set(clients)),
            samples=int(samples),
            client_flops=flops["client"],
            server_flops=flops["main_server"],
            client_bytes_up=[main_wire["in"][n] + self.wire["in"][n] for n in everyone],
            client_bytes_down=[main_wire["out"][n] + self.wire["out"][n] for n in everyone],
            wire_bytes={f"{role}_{way}": sum(w[way]) for role, w in wire.items() for way in ("in", "out")},
            **self.timing.times(),
        )

    # --- RPCs -------------------------------------------------------------------------------------------
    def GlobalClientWeights(self, request: pb.Header, context: grpc.ServicerContext) -> Any:
        identity = admit(self.tokens, context, self.run, "fed server")
        try:
            n = request.client
            check_client(identity, n, self.cfg.clients)
            if request.round < 1:
                raise WireError(f"rounds count from 1, got {request.round}")
            with self.cv:
                try:
                    start = self._start_of(n, request, context)
                finally:
                    self.waiting.discard(n)
                if not isinstance(start, Payload):
                    if start == "done":
                        self.told_done.add(n)
                        self.cv.notify_all()
                    return iter([pb.Frame(header=header(client=n, round=self.round, status=start))])
                self.handed.add(n)
                tensors = model_tensors(start.model) | extras_tensors(start.extras)
                frames = list(encode(header(client=n, round=self.round, status="ok"), tensors))
                self.wire["out"][n] += sum(f.ByteSize() for f in frames)
                return iter(frames)
        except (WireError, ProtocolError) as e:
            abort(context, e)

    def _start_of(self, n: int, request: pb.Header, context: grpc.ServicerContext) -> Payload | str:
        """What client n starts the current round from, once the rule can say; or a status: done,
        resend_upload, sit_out (empty if the caller went away)."""
        while True:
            if self.done:
                return "done"
            if self.failure is not None:
                raise ProtocolError(grpc.StatusCode.UNAVAILABLE, f"the fed server stopped: {self.failure}")
            if request.round > self.round + 1:
                raise ProtocolError(FAILED, f"round {request.round} is ahead of round {self.round}")
            next_round = request.round == self.round + 1  # it finished round r and waits for r+1
            if next_round and request.status == "dropped":  # the main server left it out: do not wait
                self._leave_out(n)
                self._maybe_aggregate()
            elif next_round and (n in self.uploads or n in self.left_out):
                pass  # done with round r: wait for r+1
            elif next_round and self._handed(n):
                return "resend_upload"  # it trained round r; its upload is lost (this server restarted)
            else:  # it joins the current round (also one that asks for r+1 but was not handed r's model)
                if n in self.left_out or n in self.uploads:  # out of, or done with, this round
                    return "sit_out"
                start = self.rule.download(n)
                if start is not None:
                    return start
                self.waiting.add(n)
            if not context.is_active():
                return ""
            self.cv.wait(timeout=0.5)
            self._check_deadlines()

    def UploadClientWeights(self, request_iterator: Any, context: grpc.ServicerContext) -> pb.Header:
        # before anything of the message is read
        identity = admit(self.tokens, context, self.run, "fed server")
        frames = Counting(request_iterator)
        try:
            head, tensors = decode(frames, self.messages.upload_message())
            n = head.client
            check_client(identity, n, self.cfg.clients)
            keys = ("samples", "train_loss") if self.output_at_client else ("samples",)
            for key in keys:
                if key not in head.info or not head.info[key] >= 0:
                    raise WireError(f"an upload of this algorithm reports its {key}")
            payload = Payload(
                model_from(self.client_parts, tensors, self.device), extras_from(tensors, self.device)
            )
            with self.cv:
                if head.round < self.round or self.done:
                    return header(client=n, round=self.round, status="stale")  # averaged already
                if head.round > self.round:
                    raise ProtocolError(FAILED, f"round {head.round} has not started")
                if n in self.left_out:
                    raise ProtocolError(FAILED, f"client {n} is out of round {head.round}")
                if not self._handed(n):  # e.g. a copied token: it would take the real client's place
                    why = f"client {n} was not handed round {head.round}'s model: no upload of that round"
                    raise ProtocolError(FAILED, why)
                self.uploads[n] = (payload, dict(head.info))
                self._feed()
                self.wire["in"][n] += frames.bytes
                if self.clock is None and self.algo.talks_to_main_server:
                    threading.Thread(target=self._fetch_main_round, args=(self.round,), daemon=True).start()
                self.clock = self.clock or time.monotonic()
                self.progress = time.monotonic()
                self._maybe_aggregate()
                self.cv.notify_all()
                return header(client=n, round=head.round, status="ok")
        except (WireError, ProtocolError) as e:
            abort(context, e)

    def _handed(self, n: int) -> bool:
        """Whether client n may have trained the current round from this server's model."""
        return n in self.handed or self.round == self.trust_round

    def tick(self) -> None:
        """Let a round's deadlines pass even when no call comes in."""
        with self.cv:
            self._check_deadlines()


def run_fed_server(service: FedServer) -> list[dict[str, Any]]:
    """Serve until every round is averaged and evaluated (then give clients a moment to hear "done");
    returns the history. Raises GaveUp if a wait outlasted its deadline."""
    deploy = service.deploy
    Path(deploy.state_dir).mkdir(parents=True, exist_ok=True)
    server = serve(
        deploy,
        deploy.fed_server_listen or deploy.fed_server,
        service.cfg.clients + 8,
        lambda s: pb_grpc.add_FedServerServicer_to_server(service, s),
    )
    log.info(
        f"fed server: listening on {deploy.fed_server} (TLS), {service.algo.name}, round {service.round}"
    )
    if service.done:
        service.finished.set()

    # a moment for the clients to hear "done" (at most 3 s: one that died is not waited for)
    def linger() -> None:
        with service.cv:
            service.cv.wait_for(lambda: len(service.told_done) == service.cfg.clients, timeout=3.0)

    serve_until_finished(service, server, "fed server", linger)
    return service.history
