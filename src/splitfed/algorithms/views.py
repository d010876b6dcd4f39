"""What a definition's steps see of the executor's machinery: the clients of a slot (``Clients``), the
main server's models (``MainServer``), a client's message to the main server (``Smashed``) and one
participant's round (``ClientRound``). Executors provide them; a definition only calls them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..engine.state import Layout
from .parts import Message, Model, Payload


class Clients(Protocol):
    """The clients of one slot, as ``Algorithm.client`` sees them: tensors hold every client's rows one
    client after another (an executor may compute them together); each call acts on each client's own
    copy of ``part``."""

    sizes: list[int]  # rows of each client, in order

    def forward(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """Each client's ``part`` on its rows of ``x``; the graph waits for ``backward(part, ...)``."""
        ...

    def backward(self, part: str, grad: torch.Tensor) -> torch.Tensor | None:
        """Back-propagate ``grad`` into ``part``'s last output and take one optimizer step of each copy;
        returns the gradient at the input where the input was a tensor that required it."""
        ...

    def step(self, part: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step of each copy of ``part`` on its own mean loss over its rows of (x, y); returns
        ∂L_n/∂x_n stacked in the rows of ``x``."""
        ...

    def step_model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One step of the whole model (the client's in-model parts, one autograd graph) on each client's
        mean loss over its rows of (x, y)."""
        ...


class MainServer(Protocol):
    """The main server's models, as ``Algorithm.main_server`` sees them."""

    def step(self, smashed: torch.Tensor, labels: torch.Tensor, part: str = "server") -> torch.Tensor:
        """ONE step of the shared model on the mean loss of (smashed, labels); returns ∂loss/∂smashed."""
        ...

    def step_each(self, batch: list["Smashed"], part: str = "server") -> list[torch.Tensor]:
        """For each client's message, in order, one step of the model that serves that client (its own
        copy, or the shared one) on the mean loss of its smashed data; each ∂L_n/∂z_n."""
        ...

    def forward(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """The shared ``part`` (one model for every client) on ``x``; the graph waits for ``backward``."""
        ...

    def backward(self, part: str, grad: torch.Tensor) -> torch.Tensor:
        """Back-propagate ``grad`` into the shared ``part``'s last output, step it once; the gradient at
        its input."""
        ...


@dataclass
class Smashed:
    """One client's message to the main server in one exchange: ``smashed`` (z_n), ``labels`` (y_n), or
    whatever else the definition's ``client`` sends, by name."""

    client: int
    tensors: Message

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    @property
    def smashed(self) -> torch.Tensor:
        return self.tensors["smashed"]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors["labels"]


class ClientRound:
    """One participant's round, as ``client_begin`` / ``client_end`` and the corrections see it.

    ``model``: its copy of every client part (live: what training changes); ``start``: the payload it
    started from; ``state``: its own tensors that outlive the round (empty for a client that never took
    part); ``scratch(part)``: round-local tensors that ``correct`` gets for that part; ``layouts``: each
    part's parameter and buffer names; ``lr``: each client part's rate this round; ``steps``: optimizer
    steps it took this round (at ``client_end``).
    """

    def __init__(
        self,
        n: int,
        rnd: int,
        model: Model,
        start: Payload,
        state: dict[str, torch.Tensor],
        scratch: Callable[[str], dict[str, torch.Tensor]],
        layouts: dict[str, Layout],
        lr: dict[str, float],
        num_clients: int,
    ) -> None:
        self.n, self.round, self.model, self.start, self.state = n, rnd, model, start, state
        self.scratch, self.layouts, self.lr, self.num_clients = scratch, layouts, lr, num_clients
        self.steps = 0
