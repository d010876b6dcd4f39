"""``splitfed client --id K``: one client as a process of its own, for any algorithm.

It holds its shard of the training data (the partition the config and seed define) and does what the
algorithm's definition says a client does, with the simulation's own parts, sampler and steps: each round
it fetches what it starts from (the fed server answers when it is this client's turn), runs the
definition's ``client_begin``, its iterations — each message the definition's client yields goes to the
main server (``Step``, one call per exchange) and the reply goes back into it — and ``client_end``, then
uploads its parts and extras to the fed server. Its own state that outlives a round (SCAFFOLD's c_i) is
saved beside the servers' after each round, with the state it had before, so a restarted client, or one
told to redo a round, starts from the right one. A client that must restart a round (the main server
restarted) reloads its start and replays the round from its beginning; its sampler is put where the
round began, so the replay draws the same batches. A client out of a round (dropped, or restarted
mid-round) rejoins the next.
"""

import inspect
import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import grpc
import torch

from ..algorithms import create
from ..algorithms.base import Message, Payload, Smashed
from ..engine.checkpoint import STATE_REMEDY, load_checkpoint, save_checkpoint
from ..engine.template import Each, Tensors
from ..errors import SplitfedError
from ..executors.exchange import run_exchange
from ..executors.local import SlotClients
from ..executors.parts import prepare_context
from ..executors.rounds import begin_round, client_view
from ..setup import Setup
from . import splitfed_pb2_grpc as pb_grpc
from ._common import (
    Caller,
    Messages,
    dial,
    extras_from,
    extras_tensors,
    hold_lock,
    model_from,
    model_tensors,
    off_wire,
    on_wire,
    restart_round,
    run_identity,
)
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
        name = self.cfg.algorithm[0]
        self.algo = create(self.cfg, name)
        self.ctx = prepare_context(self.algo, setup)
        self.iterations = self.algo.iterations(self.ctx.tau, list(range(self.cfg.clients)))
        self.sides = {}
        for part in self.algo.client_parts:
            side = self.ctx.side(part.name, 1, "client")
            side.correct = lambda g, p, s, name=part.name: self.algo.correct(name, g, p, s)
            side.metered = part.name == self.algo.chain[-1]
            self.sides[part.name] = side
        self.model_parts = [p.name for p in self.algo.client_parts if p.in_model]
        self.messages = Messages(setup, name)
        self.device = setup.init_c.params.device
        identity = client_identity(k)
        token = read_token(deploy.token_file(identity))
        self.call = Caller(identity, token, deploy.retry_s, run_identity(self.cfg))
        self.channels = [dial(deploy, deploy.main_server), dial(deploy, deploy.fed_server)]
        self.main = pb_grpc.MainServerStub(self.channels[0])
        self.fed = pb_grpc.FedServerStub(self.channels[1])
        self.last_upload: tuple[int, dict[str, torch.Tensor], dict[str, float]] | None = None
        self.state_file = Path(deploy.state_dir) / f"client_{k}.pt"
        # Two live processes with one id would each be taken for the other's restart (the main server
        # drops the client from the round, the numbers differ): the second is refused here.
        self.lock = hold_lock(Path(deploy.state_dir) / f"client_{k}.lock", f"client {k}")
        # its own state: after the last round it ended (``round``), and before it (to redo that round)
        self.own: dict[str, Any] = {"round": 0, "after": {}, "before": {}}
        if self.state_file.exists():
            expect = {
                "round": int,
                "after": Tensors(),
                "before": Tensors(),
                "clients": Each(int),
                "upload": {"round": int, "tensors": Tensors(), "info": Each([str, float])},
            }
            saved = load_checkpoint(self.state_file, "client", self.cfg, expect, STATE_REMEDY)
            self.own = {k: saved[k] for k in ("round", "after", "before")}
            upload = saved["upload"]
            if upload["round"] > 0:  # a restart: the last upload may be lost, and can be sent again
                self.last_upload = (upload["round"], upload["tensors"], dict(upload["info"]))

    def run(self) -> None:
        """Train round after round until the fed server says the training is done."""
        # A restarted client asks for the round after its last upload: the fed server answers with that
        # round, or asks for the upload again if it lost it (all clients and the fed server restarted
        # after the main server finished the round: nobody would train that round again).
        r, dropped = (self.last_upload[0] + 1 if self.last_upload else 1), False
        while True:
            head, tensors = self._global_weights(r, dropped)
            if head.status == "done":
                log.info(f"client {self.n}: done after round {head.round - 1}")
                for channel in self.channels:  # closed before the process exits (see run_fed_server)
                    channel.close()
                return
            if head.status == "sit_out":  # out of (or done with) the current round: wait for the next
                r, dropped = head.round + 1, False
                continue
            r, dropped = head.round, False
            log.info(f"client {self.n}: round {r} of {self.cfg.rounds}")
            start = Payload(model_from(self.sides, tensors, self.device), extras_from(tensors, self.device))
            for part, side in self.sides.items():
                side.load(0, start.model[part])
            # where this client's sampler stands at the start of round r: τ·b_n samples per round
            self.ctx.streams.skip_to(self.n, (r - 1) * self.iterations * self.ctx.batch_sizes[self.n])
            begin_round(self.ctx, r)
            view = client_view(self.n, r, self.sides, 0, start, self._state_for(r), self.cfg.clients)
            self.algo.client_begin(view)
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
            view.steps = self.iterations
            extras = self.algo.client_end(view)
            self._end_round(r, view.state, extras)
            r += 1

    def _state_for(self, r: int) -> dict[str, torch.Tensor]:
        """This client's own state at the start of round r (a copy: the round may be replayed)."""
        if self.own["round"] >= r:  # round r ended here before (then a restart lost its upload)
            return dict(self.own["before"])
        return dict(self.own["after"])

    def _end_round(self, r: int, state: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        """Save the round's own state and its upload together (a restart can send the upload again),
        then upload."""
        before = self.own["after"] if self.own["round"] < r else self.own["before"]
        self.own = {"round": r, "after": {k: v.detach().cpu() for k, v in state.items()}, "before": before}
        model = {part: side.state(0) for part, side in self.sides.items()}
        tensors = model_tensors(model) | extras_tensors(extras)
        info = {"samples": float(self.iterations * self.ctx.batch_sizes[self.n])}
        if self.algo.chain[-1] in self.sides:  # the model's output, so its loss, is here
            info["train_loss"] = self.ctx.meter.train_loss
        self.last_upload = (r, tensors, info)
        upload = {"round": r, "tensors": tensors, "info": [[k, v] for k, v in info.items()]}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        payload = self.own | {"clients": [self.n], "upload": upload}
        save_checkpoint(self.state_file, "client", self.cfg, payload)
        self._send_upload(r, tensors, info)

    def _train_round(self, r: int) -> None:
        for t in range(1, self.iterations + 1):
            x, y = self.ctx.batch(self.n)
            b = len(y)
            clients = self.algo.client(SlotClients(self.sides, self.model_parts, [0], [b]), x, y)
            run_exchange(
                clients if inspect.isgenerator(clients) else None,
                lambda batch, t=t: self._remote(r, t, batch),
                lambda message: [Smashed(self.n, message)],
                lambda replies: replies[0],
                self.algo.name,
            )

    def _remote(self, r: int, t: int, batch: list[Smashed]) -> Generator[list[Message], list[Smashed], Any]:
        """The main server as the definition's client talks to it: one Step call per exchange."""
        phase = 0
        reply, more = self._step(r, t, phase, batch[0].tensors)
        while more:
            phase += 1
            batch = yield [reply]
            reply, more = self._step(r, t, phase, batch[0].tensors)
        return [reply]

    def _step(self, r: int, t: int, phase: int, message: Message) -> tuple[Message, bool]:
        tensors = on_wire(message, self.cfg.wire_dtype)

        def send(**kw: Any) -> tuple[Any, dict[str, torch.Tensor]]:
            frames = encode(header(client=self.n, round=r, iteration=t, phase=phase), tensors)
            return decode(self.main.Step(frames, **kw), self.messages.reply_message(phase))

        try:
            head, reply = self.call(send)
        except grpc.RpcError as e:
            restart = restart_round(e)
            if restart is not None:
                raise Restart(restart) from None
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise Dropped from None
            raise refused(self.n, "the main server", f"iteration {t} of round {r}", e) from None
        return off_wire(reply, self.device), head.status == "more"

    def _global_weights(self, r: int, dropped: bool) -> tuple[Any, dict[str, torch.Tensor]]:
        def fetch(r: int, dropped: bool, **kw: Any) -> tuple[Any, dict[str, torch.Tensor]]:
            request = header(client=self.n, round=r, status="dropped" if dropped else "")
            frames = list(self.fed.GlobalClientWeights(request, **kw))
            if frames and frames[0].header.status in ("done", "resend_upload", "sit_out"):
                return frames[0].header, {}
            return decode(frames, self.messages.start_message())

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
