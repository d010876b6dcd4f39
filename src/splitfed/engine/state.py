"""A copy's state as flat tensors (parameters, buffers, optimizer state), sums of copies, and where
each named parameter and buffer of a module lies in them (``Layout``).

Averaging, broadcasting, checkpoints and the network messages act on these few flat tensors per copy; a
``Side`` runs a module functionally on views of them.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .optim import SideOptimizer


@dataclass
class State:
    """One copy of a side's state: parameters, buffers (BatchNorm statistics) and optimizer state, each flat.

    ``opt`` holds every slot of the side's optimizer one after another (see engine/optim.py: SGD's
    momentum buffer, Adam's exp_avg, exp_avg_sq and step); it is empty for plain SGD. Buffers are kept as
    float, counters included. Averaging, checkpoints and the network messages treat a State as these three
    flat tensors, under the names of ``KEYS``.
    """

    params: torch.Tensor
    buffers: torch.Tensor
    opt: torch.Tensor

    KEYS: ClassVar[tuple[str, str, str]] = ("params", "buffers", "opt")

    def clone(self) -> "State":
        return State(self.params.clone(), self.buffers.clone(), self.opt.clone())

    def copy_(self, other: "State") -> None:
        self.params.copy_(other.params)
        self.buffers.copy_(other.buffers)
        self.opt.copy_(other.opt)

    @property
    def nbytes(self) -> int:
        """Bytes this state takes on the wire."""
        return sum(t.numel() * t.element_size() for t in (self.params, self.buffers, self.opt))

    def to_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.KEYS, (self.params, self.buffers, self.opt), strict=True))

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "State":
        # "momentum": a checkpoint written before the optimizer state was generalised; its layout (SGD's
        # buffer, or nothing) is what the same config's SGD state is now.
        return cls(d["params"], d["buffers"], d["opt"] if "opt" in d else d["momentum"])


class WeightedSum:
    """Σ_k w_k · state_k, accumulated one state at a time (no need to hold every client's copy).

    Parameters, buffers and momentum alike: momentum is averaged with the weights wherever the
    algorithm averages (spec §7), which keeps the τ = 1 identities exact with momentum.
    """

    def __init__(self) -> None:
        self.total: State | None = None

    def add(self, state: State, weight: float) -> None:
        if self.total is None:
            self.total = State(*(torch.zeros_like(t) for t in state.to_dict().values()))
        torch._foreach_add_(list(self.total.to_dict().values()), list(state.to_dict().values()), alpha=weight)

    @property
    def result(self) -> State:
        assert self.total is not None, "nothing was added"
        return self.total


def join_states(states: Sequence[State]) -> State:
    """Consecutive pieces of a model as one: their parameters and buffers one after another (the layout
    of the module made of the pieces in order); no optimizer state."""
    if len(states) == 1:
        return states[0]
    return State(
        torch.cat([s.params for s in states]),
        torch.cat([s.buffers for s in states]),
        states[0].opt[:0].clone(),
    )


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> State:
    acc = WeightedSum()
    for s, w in zip(states, weights, strict=True):
        acc.add(s, w)
    return acc.result


class Layout:
    """Where each named parameter and buffer of a module lives in its flat State tensors."""

    def __init__(self, module: nn.Module) -> None:
        self.params = [(n, p.shape) for n, p in module.named_parameters()]
        self.buffers = [(n, b.shape) for n, b in module.named_buffers()]
        # the type of the module that owns each parameter and buffer, e.g. to find normalisation layers
        self.owners: dict[str, type] = {}
        for prefix, sub in module.named_modules():
            for name, _ in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
                self.owners[f"{prefix}.{name}" if prefix else name] = type(sub)
        self.num_params = sum(s.numel() for _, s in self.params)
        self.num_buffers = sum(s.numel() for _, s in self.buffers)

    def state_of(
        self, module: nn.Module, opt: SideOptimizer | None = None, device: torch.device | str = "cpu"
    ) -> State:
        """The module's weights as a State, with ``opt``'s initial (zero) state; none without ``opt``."""
        flat = [p.detach().reshape(-1).float() for p in module.parameters()]
        bufs = [b.detach().reshape(-1).float() for b in module.buffers()]
        params = torch.cat(flat).to(device) if flat else torch.zeros(0, device=device)
        buffers = torch.cat(bufs).to(device) if bufs else torch.zeros(0, device=device)
        size = opt.state_size(self.num_params) if opt is not None else 0
        return State(params, buffers, torch.zeros(size, device=device))

    @staticmethod
    def _views(flat: torch.Tensor, entries: list[tuple[str, torch.Size]]) -> list[torch.Tensor]:
        """Views of the last dimension cut into the entries' shapes ([P] -> shape, [K, P] -> [K, *shape])."""
        views, offset = [], 0
        for _, shape in entries:
            views.append(flat[..., offset : offset + shape.numel()].view((*flat.shape[:-1], *shape)))
            offset += shape.numel()
        return views

    def param_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return self._views(flat, self.params)

    def buffer_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip([n for n, _ in self.buffers], self._views(flat, self.buffers), strict=True))

    def buffer_copies(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Buffers as separate tensors, for a training forward.

        BatchNorm saves its running statistics for backward and then updates them in place; views of one
        flat tensor share one autograd version counter, so the second BatchNorm's update would invalidate
        what the first one saved. Separate tensors do not.
        """
        return {n: v.clone() for n, v in self.buffer_dict(flat).items()}

    def param_names(self) -> list[str]:
        return [n for n, _ in self.params]

    def select(self, keep: Callable[[str], bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the parameters and buffers whose names ``keep`` accepts lie in the flat tensors: two
        index tensors (into State.params and State.buffers), for state addressed by name."""
        found = []
        for entries in (self.params, self.buffers):
            idx, offset = [], 0
            for name, shape in entries:
                if keep(name):
                    idx.append(torch.arange(offset, offset + shape.numel()))
                offset += shape.numel()
            found.append(torch.cat(idx) if idx else torch.zeros(0, dtype=torch.int64))
        return found[0], found[1]
