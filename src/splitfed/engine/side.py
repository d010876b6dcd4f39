"""One side of a split model (client-side or server-side) held as K copies of flat state tensors.

A ``Side`` owns no modules per copy: a single template module is run functionally
(``torch.func.functional_call``) with the views of copy k's flat tensors, so K clients cost K flat
parameter vectors, never K deep-copied modules. Averaging, broadcasting and checkpointing then act on a
few flat tensors per copy.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


@dataclass
class State:
    """One copy of a side's state: parameters, buffers (BatchNorm statistics) and momentum, each flat.

    ``momentum`` is empty when the optimizer has none. Buffers are kept as float, counters included.
    """

    params: torch.Tensor
    buffers: torch.Tensor
    momentum: torch.Tensor

    def clone(self) -> "State":
        return State(self.params.clone(), self.buffers.clone(), self.momentum.clone())

    def copy_(self, other: "State") -> None:
        self.params.copy_(other.params)
        self.buffers.copy_(other.buffers)
        self.momentum.copy_(other.momentum)

    @property
    def nbytes(self) -> int:
        """Bytes this state takes on the wire."""
        return sum(t.numel() * t.element_size() for t in (self.params, self.buffers, self.momentum))

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"params": self.params, "buffers": self.buffers, "momentum": self.momentum}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "State":
        return cls(d["params"], d["buffers"], d["momentum"])


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
        self.num_params = sum(s.numel() for _, s in self.params)
        self.num_buffers = sum(s.numel() for _, s in self.buffers)

    def state_of(self, module: nn.Module, momentum: bool, device: torch.device | str = "cpu") -> State:
        flat = [p.detach().reshape(-1).float() for p in module.parameters()]
        bufs = [b.detach().reshape(-1).float() for b in module.buffers()]
        params = torch.cat(flat).to(device) if flat else torch.zeros(0, device=device)
        buffers = torch.cat(bufs).to(device) if bufs else torch.zeros(0, device=device)
        mom = torch.zeros_like(params) if momentum else torch.zeros(0, device=device)
        return State(params, buffers, mom)

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


@dataclass(frozen=True)
class SGD:
    """Plain SGD with optional momentum and weight decay, as torch.optim.SGD (dampening 0, no Nesterov)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    def step(
        self, params: list[torch.Tensor], grads: Sequence[torch.Tensor], bufs: list[torch.Tensor]
    ) -> None:
        grads = list(grads)
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.momentum:
            # A zero buffer makes the first step's buffer equal the gradient, as torch.optim.SGD does.
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(params, grads, alpha=-self.lr)


class Meter:
    """What a round did, for its metrics: training loss, samples trained, optimizer steps.

    The loss sum is one tensor updated in place (no device sync per step, and a fixed address that a
    captured CUDA graph can keep adding to).
    """

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.loss_count = 0

    def reset(self) -> None:
        if self.loss_sum is not None:
            self.loss_sum.zero_()
        self.loss_count = 0

    def add_loss(self, loss: torch.Tensor, n: int) -> None:
        """Add a batch's mean loss over its n samples."""
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=loss.device)
        self.loss_sum.add_(loss.detach() * n)
        self.loss_count += n

    def counters(self, clients: Sequence[int] = ()) -> dict[str, int]:
        return {"loss_count": self.loss_count}

    def add_counters(self, clients: Sequence[int], delta: dict[str, int]) -> None:
        self.loss_count += delta["loss_count"]

    @property
    def train_loss(self) -> float:
        if not self.loss_count or self.loss_sum is None:
            return float("nan")
        return float(self.loss_sum) / self.loss_count


ALL = -1  # the copy index of a vectorised call over every copy at once


class Side:
    """K copies of one side of the model, trained with one optimizer configuration.

    The copies live stacked in one State of [K, P] tensors; copy k is row k. ``location`` says which role
    computes on it ("client" or "main_server"), for FLOP accounting. With ``vectorised``, a call on every
    copy at once (``forward_each``, ``train_each``, ``joint_each`` with copies 0..K-1 and equal shapes)
    runs as one batched computation (``torch.func.vmap``) instead of a loop over the copies.
    """

    def __init__(
        self,
        module: nn.Module,
        init: State,
        copies: int,
        opt: SGD,
        location: str,
        meter: Meter,
        vectorised: bool = False,
    ) -> None:
        self.module = module
        self.layout = Layout(module)
        self.names = self.layout.param_names()
        self.opt = opt
        self.location = location
        self.meter = meter
        self.vectorised = vectorised
        self.store = State(
            *(t.unsqueeze(0).repeat(copies, 1) for t in (init.params, init.buffers, init.momentum))
        )
        self.rows = [
            State(self.store.params[k], self.store.buffers[k], self.store.momentum[k]) for k in range(copies)
        ]
        self._views = {k: self._make_views(r) for k, r in enumerate(self.rows)}
        self._views[ALL] = self._make_views(self.store)  # [K, *shape] views, for vectorised calls
        self._pending: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self.samples = 0  # samples trained (forward + backward) since the last reset
        self.steps = 0  # optimizer steps since the last reset

    def _make_views(self, s: State) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], list[torch.Tensor]]:
        mom = self.layout.param_views(s.momentum) if s.momentum.shape[-1] else []
        return self.layout.param_views(s.params), self.layout.buffer_dict(s.buffers), mom

    @property
    def num_copies(self) -> int:
        return len(self.rows)

    def state(self, k: int) -> State:
        return self.rows[k]

    def load(self, k: int, state: State) -> None:
        self.rows[k].copy_(state)

    def counters(self, clients: Sequence[int] = ()) -> dict[str, int]:
        return {"samples": self.samples, "steps": self.steps}

    def add_counters(self, clients: Sequence[int], delta: dict[str, int]) -> None:
        self.samples += delta["samples"]
        self.steps += delta["steps"]
        self._pending.clear()  # after a capture or its failure: no graph is waiting for a backward

    def batched(self, copies: Sequence[int], xs: Sequence[torch.Tensor]) -> bool:
        """Whether a call on ``copies`` with inputs ``xs`` is vectorised: all copies, in order, one shape."""
        return (
            self.vectorised
            and len(copies) > 1
            and list(copies) == list(range(self.num_copies))
            and len({x.shape for x in xs}) == 1
        )

    def _forward(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Copy k's output on x with the graph to its parameters (k = ALL: every copy, x stacked [K, ...])."""
        params, buffers, _ = self._views[k]
        leaves = [p.detach().requires_grad_() for p in params]
        self.module.train()
        updated = {n: b.clone() for n, b in buffers.items()}  # see Layout.buffer_copies

        def call(p: list[torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.module, (dict(zip(self.names, p, strict=True)), b), (x,))

        out = torch.func.vmap(call)(leaves, updated, x) if k == ALL else call(leaves, updated, x)
        if buffers:
            torch._foreach_copy_(list(buffers.values()), list(updated.values()))
        self.samples += x.shape[0] * x.shape[1] if k == ALL else len(x)
        return out, leaves

    def _step(self, k: int, grads: Sequence[torch.Tensor]) -> None:
        params, _, mom = self._views[k]
        self.opt.step(params, grads, mom)
        self.steps += self.num_copies if k == ALL else 1

    # --- a client side: forward now, backward when the smashed data's gradient comes back ------------------
    def forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Copy k's output on x, detached (it is what travels); the graph waits for ``backward(k, ...)``."""
        out, leaves = self._forward(k, x)
        self._pending[k] = (out, leaves)
        return out.detach()

    def backward(self, k: int, grad: torch.Tensor) -> None:
        """Back-propagate the gradient of copy k's last output and take one optimizer step."""
        out, leaves = self._pending.pop(k)
        self._step(k, torch.autograd.grad(out, leaves, grad))

    def forward_each(self, copies: Sequence[int], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Copy copies[i]'s output on xs[i] for each i, as clients do in parallel; see ``backward_each``."""
        if self.batched(copies, xs):
            return list(self.forward(ALL, torch.stack(list(xs))).unbind(0))
        return [self.forward(k, x) for k, x in zip(copies, xs, strict=True)]

    def backward_each(self, copies: Sequence[int], grads: Sequence[torch.Tensor]) -> None:
        """Back-propagate grads[i] through copy copies[i]'s pending output, then step each copy."""
        if ALL in self._pending:
            self.backward(ALL, torch.stack(list(grads)))
            return
        # Every gradient before any update: the copies share one storage, whose version counter an
        # update bumps, which would invalidate the other copies' pending graphs.
        all_grads = []
        for k, grad in zip(copies, grads, strict=True):
            out, leaves = self._pending.pop(k)
            all_grads.append(torch.autograd.grad(out, leaves, grad))
        for k, g in zip(copies, all_grads, strict=True):
            self._step(k, g)

    # --- a whole step on (x, y) -------------------------------------------------------------------------
    def train_step(self, k: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """One step of copy k on the mean cross-entropy of (x, y); returns ∂loss/∂x if x requires grad."""
        out, leaves = self._forward(k, x)
        loss = F.cross_entropy(out, y)
        self.meter.add_loss(loss, len(y))
        inputs = [*leaves, x] if x.requires_grad else leaves
        grads = torch.autograd.grad(loss, inputs)
        self._step(k, grads[: len(leaves)])
        return grads[-1] if x.requires_grad else None

    def train_each(
        self, copies: Sequence[int], xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """For each i, one step of copy copies[i] on (xs[i], ys[i]); each ∂loss_i/∂xs[i]."""
        if not self.batched(copies, xs):
            grads = []
            for k, x, y in zip(copies, xs, ys, strict=True):
                grad = self.train_step(k, x.detach().requires_grad_(), y)
                assert grad is not None  # x requires grad
                grads.append(grad)
            return grads
        x = torch.stack(list(xs)).detach().requires_grad_()
        y = torch.stack(list(ys))
        out, leaves = self._forward(ALL, x)
        losses = _mean_losses(out, y)  # copy k's mean loss; their sum's gradient is each copy's own
        self.meter.add_loss(losses.sum() / len(losses), y.numel())
        grads = torch.autograd.grad(losses.sum(), [*leaves, x])
        self._step(ALL, grads[:-1])
        return list(grads[-1].unbind(0))


def _mean_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per copy, the mean cross-entropy of out [K, b, classes] against y [K, b]."""
    per_sample = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    return per_sample.view(y.shape).mean(1)


def joint_step(client: Side, server: Side, k: int, x: torch.Tensor, y: torch.Tensor) -> None:
    """One SGD step of the unsplit model (client side then server side, one autograd graph) on copy k of
    both sides (k = ALL: every copy at once, x and y stacked [K, b, ...])."""
    z, c_leaves = client._forward(k, x)
    out, s_leaves = server._forward(k, z)
    if k == ALL:
        losses = _mean_losses(out, y)
        loss, total = losses.sum(), losses.sum() / len(losses)
    else:
        loss = total = F.cross_entropy(out, y)
    server.meter.add_loss(total, y.numel())
    grads = torch.autograd.grad(loss, c_leaves + s_leaves)
    client._step(k, grads[: len(c_leaves)])
    server._step(k, grads[len(c_leaves) :])


def joint_each(
    client: Side, server: Side, copies: Sequence[int], xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]
) -> None:
    """For each i, one SGD step of the unsplit model copy copies[i] on (xs[i], ys[i])."""
    if client.batched(copies, xs) and server.batched(copies, xs):
        joint_step(client, server, ALL, torch.stack(list(xs)), torch.stack(list(ys)))
        return
    for k, x, y in zip(copies, xs, ys, strict=True):
        joint_step(client, server, k, x, y)
