"""The message path between roles. In simulation it delivers payloads unchanged and counts their bytes.

Every message an algorithm sends goes through ``up`` (client -> server) or ``down`` (server -> client),
named as in the spec: ``smashed``, ``labels``, ``client_weights`` up; ``smashed_grad``,
``global_client_weights`` down. Byte accounting (and later compression) lives here once, not in every
algorithm.
"""

from typing import TypeVar

import torch

from .side import State

Payload = TypeVar("Payload", torch.Tensor, State)


def nbytes(payload: torch.Tensor | State) -> int:
    if isinstance(payload, State):
        return payload.nbytes
    return payload.numel() * payload.element_size()


class Link:
    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.reset()

    def reset(self) -> None:
        self.sent = [0] * self.num_clients  # bytes each client sent this round
        self.received = [0] * self.num_clients
        self.by_kind: dict[str, int] = {}

    def _count(self, kind: str, size: int) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + size

    def up(self, kind: str, client: int, payload: Payload) -> Payload:
        """Client ``client`` sends ``payload`` to a server."""
        size = nbytes(payload)
        self.sent[client] += size
        self._count(kind, size)
        return payload

    def down(self, kind: str, client: int, payload: Payload) -> Payload:
        """A server sends ``payload`` to client ``client``."""
        size = nbytes(payload)
        self.received[client] += size
        self._count(kind, size)
        return payload
