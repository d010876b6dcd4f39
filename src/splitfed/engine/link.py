"""The message path between roles. In simulation it delivers payloads and counts their bytes.

Every message an algorithm sends goes through ``up`` (client -> server) or ``down`` (server -> client),
named as in the spec: ``smashed``, ``labels``, ``client_weights`` up; ``smashed_grad``,
``global_client_weights`` down; and whatever else a definition names. Byte accounting and compression live
here once, not in every algorithm. Compression (``wire_dtype`` float16 or bfloat16) rounds the floats of
the per-iteration messages (smashed data, their gradients, any activation a definition exchanges) to that
type as the networked roles do when they send them, so a simulation and a deployment compute the same
numbers; models and round-end extras travel in full precision.
"""

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from ..choices import WIRE_DTYPES as WIRE_DTYPE_NAMES
from .side import State

Payload = TypeVar("Payload", torch.Tensor, State)
WIRE_DTYPES = {name: getattr(torch, name) for name in WIRE_DTYPE_NAMES}  # the names are torch's


def nbytes(payload: torch.Tensor | State) -> int:
    if isinstance(payload, State):
        return payload.nbytes
    return payload.numel() * payload.element_size()


def to_wire(payload: torch.Tensor, wire_dtype: torch.dtype) -> torch.Tensor:
    """A per-iteration payload as it travels: floats in ``wire_dtype``, anything else as it is."""
    return payload.to(wire_dtype) if payload.is_floating_point() else payload


class Link:
    def __init__(self, num_clients: int, wire_dtype: str = "float32") -> None:
        self.num_clients = num_clients
        self.wire_dtype = WIRE_DTYPES[wire_dtype]
        self.reset()

    def reset(self) -> None:
        self.sent = [0] * self.num_clients  # bytes each client sent this round
        self.received = [0] * self.num_clients
        self.by_kind: dict[str, int] = {}

    def _deliver(self, kind: str, payload: Payload, compress: bool) -> tuple[Payload, int]:
        if isinstance(payload, torch.Tensor):
            wire = to_wire(payload, self.wire_dtype) if compress else payload
            size = nbytes(wire)
            if wire.dtype != payload.dtype:
                payload = wire.to(payload.dtype)
        else:
            size = nbytes(payload)
        self.by_kind[kind] = self.by_kind.get(kind, 0) + size
        return payload, size

    def up(self, kind: str, client: int, payload: Payload, compress: bool = False) -> Payload:
        """Client ``client`` sends ``payload`` to a server (``compress``: a per-iteration message, its
        floats in the wire dtype). A negative id is no client (centralized training's union): nothing
        travels."""
        if client < 0:
            return payload
        payload, size = self._deliver(kind, payload, compress)
        self.sent[client] += size
        return payload

    def down(self, kind: str, client: int, payload: Payload, compress: bool = False) -> Payload:
        """A server sends ``payload`` to client ``client``."""
        if client < 0:
            return payload
        payload, size = self._deliver(kind, payload, compress)
        self.received[client] += size
        return payload

    def counters(self, clients: Sequence[int]) -> dict[str, Any]:
        """Bytes so far of ``clients`` (position by position) and by kind: see executors/graphs.py."""
        ids = [n for n in clients if n >= 0]
        return {
            "sent": [self.sent[n] for n in ids],
            "received": [self.received[n] for n in ids],
            "by_kind": dict(self.by_kind),
        }

    def add_counters(self, clients: Sequence[int], delta: dict[str, Any]) -> None:
        ids = [n for n in clients if n >= 0]
        for n, sent, received in zip(ids, delta["sent"], delta["received"], strict=True):
            self.sent[n] += sent
            self.received[n] += received
        for kind, size in delta["by_kind"].items():
            self.by_kind[kind] = self.by_kind.get(kind, 0) + size
