"""``splitfed fed-server``: the fed server as a network service.

It hands every client the global client-side model w_c^r, collects the clients' models at the end of
round r and averages them with the simulation's own ``weighted_average`` (FedAvg: both halves), then
evaluates the assembled model (w_c^{r+1} with the main server's w_s^r) on the whole test set and writes
the run directory exactly as ``splitfed run`` does: config.toml, metrics.jsonl, summary.csv, plots.

With straggler_policy "drop", a round's average is taken round_timeout_s after its first upload with the
clients that uploaded; clients the main server left out of the round say so and are not waited for.
State is checkpointed at every round end, before the new model is handed out, so a restarted fed server
continues where it was; a client whose upload it lost is asked to send it again.
"""

import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from ..engine.loop import Setup, load_checkpoint, save_checkpoint
from ..engine.metrics import SplitModel
from ..engine.side import State, weighted_average
from ..runner import RunDir
from . import splitfed_pb2 as pb
from . import splitfed_pb2_grpc as pb_grpc
from ._common import (
    Caller,
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
    def __init__(self, setup: Setup, deploy: Deployment, run_dir: RunDir) -> None:
        self.setup, self.deploy, self.cfg, self.run_dir = setup, deploy, setup.cfg, run_dir
        self.ctx = setup.context()
        self.algorithm = self.cfg.algorithm[0]
        self.halves = ("client", "server") if self.algorithm == "fedavg" else ("client",)
        self.shapes = Shapes(setup)
        self.tokens = Tokens.load(deploy.tokens)
        self.device = setup.init_c.params.device
        self.split_model = SplitModel(setup.client_module, setup.server_module)
        self.state_file = Path(deploy.state_dir) / "fed_server.pt"
        self.cv = threading.Condition()
        self.round, self.w_c, self.w_s = 1, setup.init_c.clone(), setup.init_s.clone()
        self.history: list[dict[str, Any]] = []
        if self.state_file.exists():
            saved = load_checkpoint(self.state_file)
            self.round = saved["round"] + 1
            self.w_c = State.from_dict({k: v.to(self.device) for k, v in saved["w_c"].items()})
            self.w_s = State.from_dict({k: v.to(self.device) for k, v in saved["w_s"].items()})
            self.history = saved["history"]
            run_dir.write_metrics(self.history)
            log.info(f"fed server: resumed after round {saved['round']} from {self.state_file}")
        self._new_round()
        self.finished = threading.Event()
        self.started = time.perf_counter() - (self.history[-1]["wall_time_s"] if self.history else 0.0)
        if self.algorithm != "fedavg":
            token = read_token(deploy.token_file("fed_server"))
            self.main = pb_grpc.MainServerStub(dial(deploy, deploy.main_server))
            self.call = Caller("fed_server", token, deploy.retry_s)

    def _new_round(self) -> None:
        self.uploads: dict[int, tuple[State, State | None, dict[str, float]]] = {}
        self.left_out: set[int] = set()  # clients the main server dropped from this round
        self.clock: float | None = None
        self.main_round: tuple[State, list[int]] | None = None  # w_s^r and who the main server left out
        self.round_started = time.perf_counter()
        self.wire = {"in": [0] * self.cfg.clients, "out": [0] * self.cfg.clients}

    @property
    def done(self) -> bool:
        return self.round > self.cfg.rounds

    # --- aggregation ------------------------------------------------------------------------------------
    def _maybe_aggregate(self) -> None:
        if self.done or not self.uploads:
            return
        # Not waited for: clients that said the main server left them out, and those the main server
        # reports it went on without (split algorithms: its round must be over first).
        expected = set(range(self.cfg.clients)) - self.left_out
        if self.algorithm != "fedavg":
            if self.main_round is None:
                return
            expected -= set(self.main_round[1])
        late = self.clock is not None and time.monotonic() - self.clock > self.deploy.round_timeout_s
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

    def _aggregate(self) -> None:
        trained = time.perf_counter()  # the round's training ends here; averaging and evaluation follow
        r, clients = self.round, sorted(self.uploads)
        weights = self.ctx.weights(clients)
        w_c = weighted_average([self.uploads[n][0] for n in clients], weights)  # w_c^{r+1} = Σ p_n w_{c,n}
        dropped = sorted(set(range(self.cfg.clients)) - set(clients))
        main_wire = {"in": [0] * self.cfg.clients, "out": [0] * self.cfg.clients}
        if self.algorithm == "fedavg":
            w_s = weighted_average([self.uploads[n][1] for n in clients], weights)  # type: ignore[misc]
            samples = sum(self.uploads[n][2]["samples"] for n in clients)
            train_loss = sum(
                self.uploads[n][2]["train_loss"] * self.uploads[n][2]["samples"] for n in clients
            )
            train_loss /= max(samples, 1)
        else:
            assert self.main_round is not None
            w_s = self.main_round[0]
            head, _ = self._server_weights(r, weights=False)  # the round's totals, now that replies are sent
            samples, train_loss = head.info["samples"], head.info["train_loss"]
            for key, value in head.info.items():
                if ":" in key:
                    direction, n = key.split(":")
                    main_wire[direction][int(n)] = int(value)
        acc, loss = self.split_model.evaluate(w_c, w_s, self.setup.data.test_x, self.setup.data.test_y)
        fps_c, fps_s = self.setup.flops_per_sample
        up = [main_wire["in"][n] + self.wire["in"][n] for n in range(self.cfg.clients)]
        down = [main_wire["out"][n] + self.wire["out"][n] for n in range(self.cfg.clients)]
        now = time.perf_counter()
        record = {
            "algorithm": self.algorithm,
            "round": r,
            "test_accuracy": acc,
            "test_loss": loss,
            "train_loss": train_loss,
            "participants": len(clients),
            "dropped_clients": dropped,
            "samples": int(samples),
            "client_flops": samples * (fps_c + (fps_s if self.algorithm == "fedavg" else 0.0)),
            "server_flops": 0.0 if self.algorithm == "fedavg" else samples * fps_s,
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
            {"version": 1, "round": r, "w_c": w_c.to_dict(), "w_s": w_s.to_dict(), "history": self.history},
        )
        self.run_dir.append_metrics(record)
        dropped_text = f"  dropped {dropped}" if dropped else ""
        log.info(
            f"[{self.algorithm:>13}] round {r:>3}/{self.cfg.rounds}  acc {acc:.4f}  test_loss {loss:.4f}  "
            f"train_loss {train_loss:.4f}  {record['round_time_s']:.2f}s{dropped_text}"
        )
        self.w_c, self.w_s = w_c, w_s
        self.round += 1
        self._new_round()
        if self.done:
            self._finish()
        self.cv.notify_all()

    def _server_weights(self, r: int, weights: bool) -> tuple[pb.Header, dict]:
        def fetch(**kw: Any) -> tuple[pb.Header, dict]:
            frames = self.main.ServerWeights(
                header(client=-1, round=r, status="" if weights else "info"), **kw
            )
            return decode(frames, self.shapes.state_message(("server",)) if weights else None)

        return self.call(fetch)

    def _finish(self) -> None:
        title = (
            f"{self.cfg.dataset}, {self.cfg.model} cut {self.cfg.cut_layer}, N={self.cfg.clients}, deployed"
        )
        self.run_dir.finish(self.history, [self.algorithm], title)
        self.finished.set()

    # --- RPCs -------------------------------------------------------------------------------------------
    def _client(self, context: grpc.ServicerContext, claimed: int) -> int:
        check_client(self.tokens.identify(context), claimed, self.cfg.clients)
        return claimed

    def GlobalClientWeights(self, request: pb.Header, context: grpc.ServicerContext) -> Any:
        try:
            n = self._client(context, request.client)
            if request.round < 1:
                raise WireError(f"rounds count from 1, got {request.round}")
            with self.cv:
                while True:
                    if self.done:
                        return iter([pb.Frame(header=header(client=n, round=self.round, status="done"))])
                    if request.round <= self.round:
                        break
                    if request.round > self.round + 1:
                        raise ProtocolError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"round {request.round} is ahead of round {self.round}",
                        )
                    if request.status == "dropped":  # the main server left it out: do not wait for its upload
                        self.left_out.add(n)
                        self._maybe_aggregate()
                    elif n not in self.uploads:  # e.g. this server restarted and lost the upload
                        return iter(
                            [pb.Frame(header=header(client=n, round=self.round, status="resend_upload"))]
                        )
                    if not context.is_active():
                        return iter(())
                    self.cv.wait(timeout=0.5)
                    self._maybe_aggregate()
                tensors = state_tensors("client", self.w_c)
                if self.algorithm == "fedavg":
                    tensors |= state_tensors("server", self.w_s)
                frames = list(encode(header(client=n, round=self.round, status="ok"), tensors))
                self.wire["out"][n] += sum(f.ByteSize() for f in frames)
                return iter(frames)
        except (WireError, ProtocolError) as e:
            abort(context, e)

    def UploadClientWeights(self, request_iterator: Any, context: grpc.ServicerContext) -> pb.Header:
        frames = Counting(request_iterator)
        try:
            head, tensors = decode(frames, self.shapes.state_message(self.halves))
            n = self._client(context, head.client)
            for key in ("samples", "train_loss") if self.algorithm == "fedavg" else ():
                if key not in head.info or not head.info[key] >= 0:
                    raise WireError(f"a FedAvg upload reports its {key}")
            w_c = state_from("client", tensors, self.device)
            w_s = state_from("server", tensors, self.device) if self.algorithm == "fedavg" else None
            with self.cv:
                if head.round < self.round or self.done:
                    return header(
                        client=n, round=self.round, status="stale"
                    )  # that round is averaged already
                if head.round > self.round:
                    raise ProtocolError(
                        grpc.StatusCode.FAILED_PRECONDITION, f"round {head.round} has not started"
                    )
                self.uploads[n] = (w_c, w_s, dict(head.info))
                self.wire["in"][n] += frames.bytes
                if self.clock is None and self.algorithm != "fedavg":
                    threading.Thread(target=self._fetch_main_round, args=(self.round,), daemon=True).start()
                self.clock = self.clock or time.monotonic()
                self._maybe_aggregate()
                return header(client=n, round=head.round, status="ok")
        except (WireError, ProtocolError) as e:
            abort(context, e)

    def tick(self) -> None:
        """Let a round's deadline pass even when no call comes in."""
        with self.cv:
            self._maybe_aggregate()


def run_fed_server(setup: Setup, deploy: Deployment, run_dir: RunDir) -> None:
    """Serve until every round is averaged and evaluated, then give clients a moment to hear "done"."""
    Path(deploy.state_dir).mkdir(parents=True, exist_ok=True)
    service = FedServer(setup, deploy, run_dir)
    server = serve(
        deploy,
        deploy.fed_server_listen or deploy.fed_server,
        setup.cfg.clients + 8,
        lambda s: pb_grpc.add_FedServerServicer_to_server(service, s),
    )
    log.info(
        f"fed server: listening on {deploy.fed_server} (TLS), writing {run_dir.path}, round {service.round}"
    )
    try:
        if service.done:
            service._finish()
        while not service.finished.wait(timeout=1.0):
            service.tick()
        time.sleep(3.0)
    finally:
        server.stop(grace=2.0)
