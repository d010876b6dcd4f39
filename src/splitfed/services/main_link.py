"""The fed server's calls to the main server: the server-side parts at a round's end (and whom the main
server went on without), and the round's totals once its replies are all sent (its training loss, the
bytes each client exchanged with it)."""

from typing import Any

import torch

from ..algorithms import Algorithm
from ..engine.side import State
from . import splitfed_pb2 as pb
from . import splitfed_pb2_grpc as pb_grpc
from ._common import Caller, Messages, dial, model_from
from .deploy import Deployment
from .security import read_token
from .wire import decode, header


class MainServerLink:
    """The main server as the fed server calls it (its identity, retrying while it is unreachable)."""

    def __init__(
        self, deploy: Deployment, run: str, messages: Messages, algo: Algorithm, device: torch.device
    ) -> None:
        token = read_token(deploy.token_file("fed_server"))
        self.stub = pb_grpc.MainServerStub(dial(deploy, deploy.main_server))
        self.call = Caller("fed_server", token, deploy.retry_s, run)
        self.messages, self.device, self.clients = messages, device, messages.cfg.clients
        self.parts = [p.name for p in algo.server_parts]
        self.has_loss = algo.chain[-1] in self.parts  # the model's output, so the training loss, is there

    def round_end(self, r: int) -> tuple[dict[str, State], list[int]]:
        """The main server's parts at round r's end and the clients it left out (waits for the end)."""
        head, tensors = self._ask(r, weights=True)
        return model_from(self.parts, tensors, self.device), list(head.dropped)

    def totals(self, r: int) -> tuple[float | None, dict[str, list[int]]]:
        """Round r's training loss on the main server (None where the model's output is the clients')
        and the bytes each client sent it ("in") and received ("out")."""
        head, _ = self._ask(r, weights=False)
        wire = {"in": [0] * self.clients, "out": [0] * self.clients}
        for key, value in head.info.items():
            if ":" in key:
                direction, n = key.split(":")
                wire[direction][int(n)] = int(value)
        return (head.info["train_loss"] if self.has_loss else None), wire

    def _ask(self, r: int, weights: bool) -> tuple[pb.Header, dict[str, torch.Tensor]]:
        def fetch(**kw: Any) -> tuple[pb.Header, dict[str, torch.Tensor]]:
            frames = self.stub.ServerWeights(
                header(client=-1, round=r, status="" if weights else "info"), **kw
            )
            return decode(frames, self.messages.server_message() if weights else None)

        return self.call(fetch)
