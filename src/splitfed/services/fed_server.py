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
from ..algorithms.base import RELAY
from ..engine.checkpoint import STATE_REMEDY, Records, load_checkpoint, save_checkpoint
from ..engine.metrics import SplitModel
from ..engine.side import State
from ..executors.local import plan_round
from ..setup import Setup
from . import splitfed_pb2 as pb
from . import splitfed_pb2_grpc as pb_grpc
from ._common import (
    Caller,
    GaveUp,
    ProtocolError,
    Shapes,
    abort,
    check_client,
    dial,
    serve,
    state_from,
    state_tensors,
)
from .deploy import Deployment
from .security import Tokens, read_token
from .wire import Counting, WireError, decode, encode, header

log = logging.getLogger("splitfed")


class FedServer(pb_grpc.FedServerServicer):
    def __init__(
        self, setup: Setup, deploy: Deployment, on_round: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.setup, self.deploy, self.cfg, self.on_round = setup, deploy, setup.cfg, on_round
        self.algo: Algorithm = create(self.cfg, self.cfg.algorithm[0])
        self.ctx = setup.context()
        self.halves = ("client",) if self.algo.split else ("client", "server")  # what a client holds
        self.shapes = Shapes(setup)
        self.tokens = Tokens.load(deploy.tokens)
        self.device = setup.device
        self.split_model = SplitModel(setup.client_module, setup.server_module)
        self.state_file = Path(deploy.state_dir) / "fed_server.pt"
        self.cv = threading.Condition()
        self.round, self.w_c, self.w_s = 1, setup.init_c.clone(), setup.init_s.clone()
        self.history: list[dict[str, Any]] = []
        if self.state_file.exists():
            expect = {
                "round": int,
                "w_c": setup.init_c.to_dict(),
                "w_s": setup.init_s.to_dict(),
                "history": Records(),
            }
            saved = load_checkpoint(self.state_file, "fed_server", self.cfg, expect, STATE_REMEDY)
            self.round = saved["round"] + 1
            self.w_c = State.from_dict({k: v.to(self.device) for k, v in saved["w_c"].items()})
            self.w_s = State.from_dict({k: v.to(self.device) for k, v in saved["w_s"].items()})
            self.history = saved["history"]
            log.info(f"fed server: resumed after round {saved['round']} from {self.state_file}")
        self.finished = threading.Event()
        self.failure: str | None = None
        self.started = time.perf_counter() - (self.history[-1]["wall_time_s"] if self.history else 0.0)
        if self.algo.split:
            token = read_token(deploy.token_file("fed_server"))
            self.main = pb_grpc.MainServerStub(dial(deploy, deploy.main_server))
            self.call = Caller("fed_server", token, deploy.retry_s)
        self._new_round()

    def _new_round(self) -> None:
        clients = list(range(self.cfg.clients))
        plan = plan_round(self.algo, self.ctx, self.round, clients, one_by_one=False)
        self.weights = plan.weights
        self.turns = sorted(plan.first, key=plan.first.__getitem__)  # the order a relay hands the model on
        self.uploads: dict[int, tuple[State, State | None, dict[str, float]]] = {}
        self.left_out: set[int] = set()  # clients out of this round: dropped by the main server, or skipped
        self.clock: float | None = None
        self.progress = time.monotonic()  # when this round last moved (round start, an upload)
        self.main_round: tuple[State, list[int]] | None = None  # w_s^r and who the main server left out
        self.round_started = time.perf_counter()
        self.wire = {"in": [0] * self.cfg.clients, "out": [0] * self.cfg.clients}

    @property
    def done(self) -> bool:
        return self.round > self.cfg.rounds

    # --- a relay: whose turn it is, and the model handed on --------------------------------------------
    def _relay_state(self, n: int) -> State | None:
        """The model client n starts from in a relay, once every client before it is done or out."""
        held = self.w_c
        for m in self.turns[: self.turns.index(n)]:
            if m in self.uploads:
                held = self.uploads[m][0]
            elif m not in self.left_out:
                return None  # m still has the model
        return held

    def _relay_waiting_on(self) -> int | None:
        """The client whose turn it is (neither uploaded nor out), if any."""
        return next((m for m in self.turns if m not in self.uploads and m not in self.left_out), None)

    # --- aggregation ------------------------------------------------------------------------------------
    def _check_deadlines(self) -> None:
        if self.done or self.failure is not None:
            return
        now = time.monotonic()
        late = self.clock is not None and now - self.clock > self.deploy.round_timeout_s
        if self.algo.client_side == RELAY and self.deploy.straggler_policy == "drop":
            waiting = self._relay_waiting_on()
            if waiting is not None and now - self.progress > self.deploy.round_timeout_s:
                log.info(f"fed server: round {self.round} hands the model on past client {waiting} (late)")
                self.left_out.add(waiting)
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
        if self.algo.split:  # the main server's round must be over: it says whom it went on without
            if self.main_round is None:
                return
            expected -= set(self.main_round[1])
        if expected <= self.uploads.keys() or (self.deploy.straggler_policy == "drop" and late):
            self._aggregate()

    def _fetch_main_round(self, r: int) -> None:
        """Background: the main server's w_s^r and whom it left out of round r (once its round ends)."""
        try:
            head, tensors = self._server_weights(r, weights=True)
        except Exception as e:  # this thread's failure would otherwise vanish with it; the round waits
            log.error(f"fed server: cannot get round {r}'s server-side model from the main server: {e}")
            return
        with self.cv:
            if self.round == r:
                self.main_round = (state_from("server", tensors, self.device), list(head.dropped))
                self._maybe_aggregate()

    def _combine(self, clients: list[int], half: int) -> State:
        """The definition's fed-server rule over the uploads of ``clients``, weights p_n renormalised."""
        total = sum(self.weights[n] for n in clients)
        acc = self.algo.fed_server()
        for n in clients:
            acc.add(self.uploads[n][half], self.weights[n] / total)  # type: ignore[arg-type]
        return acc.result

    def _aggregate(self) -> None:
        trained = time.perf_counter()  # the round's training ends here; averaging and evaluation follow
        r, clients = self.round, sorted(self.uploads)
        if self.algo.client_side == RELAY:
            w_c = self.uploads[[m for m in self.turns if m in self.uploads][-1]][0]  # the last one's
        else:
            w_c = self._combine(clients, 0)
        dropped = sorted(set(range(self.cfg.clients)) - set(clients))
        main_wire = {"in": [0] * self.cfg.clients, "out": [0] * self.cfg.clients}
        fps_c, fps_s = self.setup.flops_per_sample
        if self.algo.split:
            assert self.main_round is not None
            w_s = self.main_round[0]
            head, _ = self._server_weights(r, weights=False)  # the round's totals, now that replies are sent
            samples, train_loss = head.info["samples"], head.info["train_loss"]
            for key, value in head.info.items():
                if ":" in key:
                    direction, n = key.split(":")
                    main_wire[direction][int(n)] = int(value)
            client_flops, server_flops = samples * fps_c, samples * fps_s
        else:
            w_s = self._combine(clients, 1)
            samples = sum(self.uploads[n][2]["samples"] for n in clients)
            loss_sum = sum(self.uploads[n][2]["train_loss"] * self.uploads[n][2]["samples"] for n in clients)
            train_loss = loss_sum / max(samples, 1)
            client_flops, server_flops = samples * (fps_c + fps_s), 0.0
        data, batch = self.setup.data, self.cfg.eval_batch_size
        acc, loss, per_class = self.split_model.evaluate(w_c, w_s, data.test_x, data.test_y, batch)
        up = [main_wire["in"][n] + self.wire["in"][n] for n in range(self.cfg.clients)]
        down = [main_wire["out"][n] + self.wire["out"][n] for n in range(self.cfg.clients)]
        now = time.perf_counter()
        record = {
            "algorithm": self.algo.name,
            "round": r,
            "test_accuracy": acc,
            "test_loss": loss,
            "test_accuracy_per_class": per_class,
            "train_loss": train_loss,
            "participants": len(clients),
            "dropped_clients": dropped,
            "samples": int(samples),
            "client_flops": client_flops,
            "server_flops": server_flops,
            "bytes_up_per_client": sum(up) / len(clients),
            "bytes_down_per_client": sum(down) / len(clients),
            "client_bytes_up": up,
            "client_bytes_down": down,
            "wire_bytes": {
                "main_server_in": sum(main_wire["in"]),
                "main_server_out": sum(main_wire["out"]),
                "fed_server_in": sum(self.wire["in"]),
                "fed_server_out": sum(self.wire["out"]),
            },
            "train_time_s": trained - self.round_started,
            "round_time_s": now - self.round_started,
            "wall_time_s": now - self.started,
        }
        self.history.append(record)
        # Saved before the new model is handed out: a restart never loses a round a client has seen.
        save_checkpoint(
            self.state_file,
            "fed_server",
            self.cfg,
            {"round": r, "w_c": w_c.to_dict(), "w_s": w_s.to_dict(), "history": self.history},
        )
        if self.on_round is not None:
            self.on_round(record)
        self.w_c, self.w_s = w_c, w_s
        self.round += 1
        self._new_round()
        if self.done:
            self.finished.set()
        self.cv.notify_all()

    def _server_weights(self, r: int, weights: bool) -> tuple[pb.Header, dict]:
        def fetch(**kw: Any) -> tuple[pb.Header, dict]:
            frames = self.main.ServerWeights(
                header(client=-1, round=r, status="" if weights else "info"), **kw
            )
            return decode(frames, self.shapes.state_message(("server",)) if weights else None)

        return self.call(fetch)

    # --- RPCs -------------------------------------------------------------------------------------------
    def GlobalClientWeights(self, request: pb.Header, context: grpc.ServicerContext) -> Any:
        identity = self.tokens.identify(context)
        try:
            n = request.client
            check_client(identity, n, self.cfg.clients)
            if request.round < 1:
                raise WireError(f"rounds count from 1, got {request.round}")
            with self.cv:
                while True:
                    if self.done:
                        return iter([pb.Frame(header=header(client=n, round=self.round, status="done"))])
                    if self.failure is not None:
                        raise ProtocolError(
                            grpc.StatusCode.UNAVAILABLE, f"the fed server stopped: {self.failure}"
                        )
                    if request.round > self.round + 1:
                        raise ProtocolError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"round {request.round} is ahead of round {self.round}",
                        )
                    if request.round == self.round + 1:  # the client finished round r and waits for r+1
                        if request.status == "dropped":  # the main server left it out: do not wait for it
                            self.left_out.add(n)
                            self._maybe_aggregate()
                        elif n not in self.uploads and n not in self.left_out:  # e.g. a restart lost it
                            return iter(
                                [pb.Frame(header=header(client=n, round=self.round, status="resend_upload"))]
                            )
                    else:
                        start = self._relay_state(n) if self.algo.client_side == RELAY else self.w_c
                        if n in self.left_out or n in self.uploads:  # out of, or done with, this round
                            return iter(
                                [pb.Frame(header=header(client=n, round=self.round, status="sit_out"))]
                            )
                        if start is not None:
                            break
                    if not context.is_active():
                        return iter(())
                    self.cv.wait(timeout=0.5)
                    self._check_deadlines()
                tensors = state_tensors("client", start)
                if not self.algo.split:
                    tensors |= state_tensors("server", self.w_s)
                frames = list(encode(header(client=n, round=self.round, status="ok"), tensors))
                self.wire["out"][n] += sum(f.ByteSize() for f in frames)
                return iter(frames)
        except (WireError, ProtocolError) as e:
            abort(context, e)

    def UploadClientWeights(self, request_iterator: Any, context: grpc.ServicerContext) -> pb.Header:
        identity = self.tokens.identify(context)  # before anything of the message is read
        frames = Counting(request_iterator)
        try:
            head, tensors = decode(frames, self.shapes.state_message(self.halves))
            n = head.client
            check_client(identity, n, self.cfg.clients)
            for key in ("samples", "train_loss") if not self.algo.split else ():
                if key not in head.info or not head.info[key] >= 0:
                    raise WireError(f"an upload of the whole model reports its {key}")
            w_c = state_from("client", tensors, self.device)
            w_s = state_from("server", tensors, self.device) if not self.algo.split else None
            with self.cv:
                if head.round < self.round or self.done:
                    return header(client=n, round=self.round, status="stale")  # averaged already
                if head.round > self.round:
                    raise ProtocolError(
                        grpc.StatusCode.FAILED_PRECONDITION, f"round {head.round} has not started"
                    )
                if n in self.left_out:
                    raise ProtocolError(
                        grpc.StatusCode.FAILED_PRECONDITION, f"client {n} is out of round {head.round}"
                    )
                self.uploads[n] = (w_c, w_s, dict(head.info))
                self.wire["in"][n] += frames.bytes
                if self.clock is None and self.algo.split:
                    threading.Thread(target=self._fetch_main_round, args=(self.round,), daemon=True).start()
                self.clock = self.clock or time.monotonic()
                self.progress = time.monotonic()
                self._maybe_aggregate()
                self.cv.notify_all()
                return header(client=n, round=head.round, status="ok")
        except (WireError, ProtocolError) as e:
            abort(context, e)

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
    try:
        if service.done:
            service.finished.set()
        while not service.finished.wait(timeout=1.0):
            service.tick()
        if service.failure is not None:
            raise GaveUp(f"fed server: {service.failure}")
        time.sleep(3.0)
    finally:
        server.stop(grace=2.0)
    return service.history
