"""``splitfed client --id K``: one client as a process of its own, for any algorithm.

It holds its shard of the training data (the partition the config and seed define) and does what every
client does in the algorithms' definitions (algorithms/base.py), with the simulation's own ``Side`` and
sampler: each round it fetches the model it starts from (the fed server answers when it is this client's
turn), runs its iterations — a split model: sends its smashed data and labels to the main server and
back-propagates the gradient it gets back; otherwise: steps the whole model locally — and uploads its
model to the fed server. A client that must restart a round (the main server restarted) reloads its start
model and replays the round from its beginning; its sampler is put where the round began, so the replay
draws the same batches. A client out of a round (dropped, or restarted mid-round) rejoins the next.
"""

import logging
from typing import Any

import grpc
import torch

from ..algorithms import create
from ..engine.side import joint_step
from ..errors import SplitfedError
from ..setup import Setup
from . import splitfed_pb2_grpc as pb_grpc
from ._common import Caller, Shapes, dial, on_wire, restart_round, state_from, state_tensors
from .deploy import Deployment
from .security import client_identity, read_token
from .wire import decode, encode, header

log = logging.getLogger("splitfed")


class Restart(Exception):
    def __init__(self, round_: int) -> None:
        self.round = round_


class Dropped(Exception):
    pass


class Client:
    def __init__(self, setup: Setup, deploy: Deployment, k: int) -> None:
        if not 0 <= k < setup.cfg.clients:
            raise SplitfedError(f"--id must be in 0..{setup.cfg.clients - 1}, got {k}")
        self.setup, self.cfg, self.n = setup, setup.cfg, k
        self.ctx = setup.context()
        self.algo = create(self.cfg, self.cfg.algorithm[0])
        self.halves = ("client",) if self.algo.split else ("client", "server")  # what it holds
        self.iterations = self.algo.iterations(self.ctx.tau, list(range(self.cfg.clients)))
        self.client_half = self.ctx.client_side(copies=1)
        self.server_half = None if self.algo.split else self.ctx.server_side(copies=1, location="client")
        self.shapes = Shapes(setup)
        self.device = setup.init_c.params.device
        identity = client_identity(k)
        self.call = Caller(identity, read_token(deploy.token_file(identity)), deploy.retry_s)
        self.main = pb_grpc.MainServerStub(dial(deploy, deploy.main_server))
        self.fed = pb_grpc.FedServerStub(dial(deploy, deploy.fed_server))
        self.last_upload: tuple[int, dict[str, torch.Tensor], dict[str, float]] | None = None

    def run(self) -> None:
        """Train round after round until the fed server says the training is done."""
        r, dropped = 1, False
        while True:
            head, tensors = self._global_weights(r, dropped)
            if head.status == "done":
                log.info(f"client {self.n}: done after round {head.round - 1}")
                return
            if head.status == "sit_out":  # out of (or done with) the current round: wait for the next
                r, dropped = head.round + 1, False
                continue
            r, dropped = head.round, False
            self.client_half.load(0, state_from("client", tensors, self.device))
            if self.server_half is not None:
                self.server_half.load(0, state_from("server", tensors, self.device))
            # where this client's sampler stands at the start of round r: τ·b_n samples per round
            self.ctx.streams.skip_to(self.n, (r - 1) * self.iterations * self.ctx.batch_sizes[self.n])
            self.ctx.meter.reset()
            self.ctx.set_round(r)
            try:
                self._train_round(r)
            except Restart as e:
                log.info(f"client {self.n}: restarting round {e.round}")
                r = e.round
                continue
            except Dropped:
                log.info(f"client {self.n}: left out of round {r}; rejoining round {r + 1}")
                r, dropped = r + 1, True
                continue
            self._upload(r)
            r += 1

    def _train_round(self, r: int) -> None:
        for t in range(1, self.iterations + 1):
            x, y = self.ctx.batch(self.n)
            if self.server_half is not None:  # no split: the whole model, here
                joint_step(self.client_half, self.server_half, 0, x, y)
                continue
            smashed = self.client_half.forward(0, x)
            grad = self._step(r, t, smashed, y)
            self.client_half.backward(0, grad)

    def _step(self, r: int, t: int, smashed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tensors = {"smashed": on_wire(smashed, self.cfg.wire_dtype), "labels": labels.cpu()}

        def send(**kw: Any) -> torch.Tensor:
            frames = encode(header(client=self.n, round=r, iteration=t), tensors)
            _, reply = decode(self.main.Step(frames, **kw), self.shapes.grad_message())
            return reply["smashed_grad"]

        try:
            grad = self.call(send)
        except grpc.RpcError as e:
            restart = restart_round(e)
            if restart is not None:
                raise Restart(restart) from None
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise Dropped from None
            raise refused(self.n, "the main server", f"iteration {t} of round {r}", e) from None
        return grad.float().to(self.device)

    def _global_weights(self, r: int, dropped: bool) -> tuple[Any, dict[str, torch.Tensor]]:
        def fetch(r: int, dropped: bool, **kw: Any) -> tuple[Any, dict[str, torch.Tensor]]:
            request = header(client=self.n, round=r, status="dropped" if dropped else "")
            frames = list(self.fed.GlobalClientWeights(request, **kw))
            if frames and frames[0].header.status in ("done", "resend_upload", "sit_out"):
                return frames[0].header, {}
            return decode(frames, self.shapes.state_message(self.halves))

        while True:
            try:
                head, tensors = self.call(fetch, r, dropped)
            except grpc.RpcError as e:
                raise refused(self.n, "the fed server", f"the model of round {r}", e) from None
            if head.status != "resend_upload":
                return head, tensors
            if self.last_upload is None or self.last_upload[0] != head.round:
                # the fed server waits for an upload this client never made: it joins that round instead
                r, dropped = head.round, False
                continue
            self._send_upload(*self.last_upload)

    def _upload(self, r: int) -> None:
        tensors = state_tensors("client", self.client_half.state(0))
        info = {}
        if self.server_half is not None:
            tensors |= state_tensors("server", self.server_half.state(0))
            info = {"samples": float(self.ctx.meter.loss_count), "train_loss": self.ctx.meter.train_loss}
        self.last_upload = (r, tensors, info)
        self._send_upload(r, tensors, info)

    def _send_upload(self, r: int, tensors: dict[str, torch.Tensor], info: dict[str, float]) -> None:
        def send(**kw: Any) -> Any:
            return self.fed.UploadClientWeights(
                encode(header(client=self.n, round=r, info=info), tensors), **kw
            )

        try:
            self.call(send)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise refused(self.n, "the fed server", f"the upload of round {r}", e) from None
            # left out of the round while training it (too slow, or the round moved on): the next
            # fetch of the global model tells this client which round to join
            log.info(f"client {self.n}: upload of round {r} not taken ({e.details()}); rejoining")


def refused(n: int, server: str, what: str, error: grpc.RpcError) -> SplitfedError:
    """One line for a call that failed for good (not unreachable: the Caller retries that), whatever
    the status, UNKNOWN included (e.g. the server failed while handling it)."""
    return SplitfedError(f"client {n}: {server} refused {what}: {error.code().name}: {error.details()}")
