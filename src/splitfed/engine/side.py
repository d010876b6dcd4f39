"""One side of a split model (client-side or server-side) held as K copies of flat state tensors.

A ``Side`` owns no modules per copy: a single template module is run functionally
(``torch.func.functional_call``) with the views of copy k's flat tensors, so K clients cost K flat
parameter vectors, never K deep-copied modules. Averaging, broadcasting and checkpointing then act on a
few flat tensors per copy (``State``, its ``Layout``: engine/state.py).
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..choices import PRECISIONS
from .meter import Meter
from .optim import LossFn, SideOptimizer, clip_grad_norm_
from .state import Layout, State, WeightedSum, join_states, weighted_average

# What engine.side held before its flat state and the meter had their own modules: imported from here still.
__all__ = [
    "ALL",
    "PRECISIONS",
    "Layout",
    "Meter",
    "Side",
    "State",
    "WeightedSum",
    "join_states",
    "joint_each",
    "joint_step",
    "weighted_average",
]


ALL = -1  # the copy index of a vectorised call over every copy at once


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor (an image batch, a convolution's weight) in channels-last memory order, others as
    they are. Given a channels-last weight, oneDNN (CPU) and cuDNN pick their NHWC kernels; the flat
    State keeps its one order, so only this copy (made on every forward, cheap beside the convolution)
    carries the format, and gradients flow back through it to the flat views."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


class Side:
    """K copies of one side of the model, trained with one optimizer configuration.

    The copies live stacked in one State of [K, P] tensors; copy k is row k. ``location`` says which role
    computes on it ("client" or "main_server"), for FLOP accounting. With ``vectorised``, a call on every
    copy at once (``forward_each``, ``train_each``, ``joint_each`` with copies 0..K-1 and equal shapes)
    runs as one batched computation (``torch.func.vmap``) instead of a loop over the copies.

    ``loss(output, target)`` is the mean loss of a batch as a 0-dim tensor (default: cross-entropy); the
    output it gets is float32. A vectorised call applies it to each copy's (output, target) in turn, so
    any loss that works on one batch works there too. Inside a captured CUDA graph it must be pure tensor
    operations (no ``.item()``, no branch on a tensor's value). ``precision`` "bf16" runs the training
    forward passes under bfloat16 autocast; weights, gradients and optimizer state stay float32.
    With ``channels_last`` a copy's forward takes its 4-D weights and input in channels-last memory order
    (the function ``channels_last``); a vectorised call runs as without it, since ``torch.func.vmap``
    cannot carry a memory format.
    """

    def __init__(
        self,
        module: nn.Module,
        init: State,
        copies: int,
        opt: SideOptimizer,
        location: str,
        meter: Meter,
        vectorised: bool = False,
        loss: LossFn = F.cross_entropy,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.module = module
        self.layout = Layout(module)
        self.names = self.layout.param_names()
        self.opt = opt
        self.location = location
        self.meter = meter
        self.vectorised = vectorised
        self.loss = loss
        self.precision = precision
        self.channels_last = channels_last
        self.store = State(*(t.unsqueeze(0).repeat(copies, 1) for t in (init.params, init.buffers, init.opt)))
        self.rows = [
            State(self.store.params[k], self.store.buffers[k], self.store.opt[k]) for k in range(copies)
        ]
        self._views = {k: self._make_views(r) for k, r in enumerate(self.rows)}
        self._views[ALL] = self._make_views(self.store)  # [K, *shape] views, for vectorised calls
        self._pending: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        # On CUDA a slot may be replayed as a CUDA graph: the optimizer then runs kernels that read the
        # rate from this tensor (filled in place by set_lr) and never sync; on the CPU it reads lr_value.
        self.graph_safe = init.params.is_cuda
        self.lr_value = opt.lr
        self.lr = torch.tensor(opt.lr, dtype=torch.float32, device=init.params.device)
        self.samples = 0  # samples trained (forward + backward) since the last reset
        self.steps = 0  # optimizer steps since the last reset
        # The algorithm's gradient correction (grad, params, scratch) -> grad, applied before clipping,
        # and the round-local tensors per copy it reads (``scratch``: name -> [K, ...]).
        self.correct: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor] | None = None
        self.scratch: dict[str, torch.Tensor] = {}
        self.metered = True  # whether this side's losses are the model's training loss (the meter's)
        self.part = ""  # the algorithm's name for what this side trains (set by Context.side)
        self.flops_per_sample = 0.0  # training FLOPs per sample, for the round's FLOP count

    def _make_views(self, s: State) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        return self.layout.param_views(s.params), self.layout.buffer_dict(s.buffers)

    @property
    def num_copies(self) -> int:
        return len(self.rows)

    def state(self, k: int) -> State:
        return self.rows[k]

    def load(self, k: int, state: State) -> None:
        self.rows[k].copy_(state)

    def scratch_of(self, k: int) -> dict[str, torch.Tensor]:
        """Copy k's round-local tensors (every copy's, stacked, for k = ALL)."""
        return dict(self.scratch) if k == ALL else {name: t[k] for name, t in self.scratch.items()}

    def set_scratch(self, k: int, name: str, value: torch.Tensor) -> None:
        """Set copy k's round-local tensor ``name`` (storage for every copy is made on first use)."""
        held = self.scratch.get(name)
        if held is None or held.shape[1:] != value.shape:
            held = self.scratch[name] = torch.zeros(
                self.num_copies, *value.shape, dtype=value.dtype, device=value.device
            )
        held[k].copy_(value)

    def set_lr(self, lr: float | Sequence[float]) -> None:
        """The learning rate of the next steps (of every copy), e.g. a schedule's rate for this round:
        one number, or one per parameter group of an optimizer given as an object (``lr_value`` is then
        the first group's).

        Filled in place: a captured CUDA graph reads the new rate on its next replay. Call it between
        slots, not inside one."""
        rates = [lr] if isinstance(lr, int | float) else list(lr)
        self.opt.set_rates(rates)
        self.lr_value = rates[0]
        self.lr.fill_(rates[0])

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
        params, buffers = self._views[k]
        leaves = [p.detach().requires_grad_() for p in params]
        self.module.train()
        updated = {n: b.clone() for n, b in buffers.items()}  # see Layout.buffer_copies

        def call(p: list[torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            if self.channels_last and k != ALL:
                p, x = [channels_last(t) for t in p], channels_last(x)
            return functional_call(self.module, (dict(zip(self.names, p, strict=True)), b), (x,))

        # no autocast cache: a CUDA graph must not keep casts made outside its memory pool (torch docs)
        bf16 = self.precision == "bf16"
        with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16, cache_enabled=False):
            out = torch.func.vmap(call)(leaves, updated, x) if k == ALL else call(leaves, updated, x)
        if bf16:  # what travels and what the loss sees stay float32, as in fp32
            out = out.float()
        if buffers:
            torch._foreach_copy_(list(buffers.values()), list(updated.values()))
        self.samples += x.shape[0] * x.shape[1] if k == ALL else len(x)
        return out, leaves

    def _flat(self, k: int, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """The per-tensor gradients of copy k as one flat vector [P] ([K, P] for k = ALL)."""
        lead = (self.num_copies,) if k == ALL else ()
        if not grads:
            return torch.zeros(*lead, 0, device=self.store.params.device)
        return torch.cat([g.reshape(*lead, -1) for g in grads], dim=-1)

    def _apply(self, k: int, flat_grad: torch.Tensor) -> None:
        """One optimizer step of copy k (every copy: k = ALL) with its flat gradient, already clipped."""
        s = self.store if k == ALL else self.rows[k]
        self.opt.step(
            s.params, flat_grad, s.opt, self.lr if self.graph_safe else self.lr_value, self.graph_safe
        )
        self.steps += self.num_copies if k == ALL else 1

    def _corrected(self, k: int, flat: torch.Tensor) -> torch.Tensor:
        """Copy k's flat gradient as the algorithm's correction makes it (unchanged without one)."""
        if self.correct is None:
            return flat
        params = self.store.params if k == ALL else self.rows[k].params
        return self.correct(flat, params, self.scratch_of(k))

    def _step(self, k: int, grads: Sequence[torch.Tensor]) -> None:
        """Correct copy k's gradient, clip it over this side (when asked) and step it."""
        flat = self._corrected(k, self._flat(k, grads))
        if self.opt.clip_grad_norm is not None:
            clip_grad_norm_([flat], self.opt.clip_grad_norm)
        self._apply(k, flat)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(out, y)

    def _mean_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per copy, the mean loss of out [K, b, ...] against y [K, b, ...]: a [K] tensor."""
        if self.loss is F.cross_entropy:  # one kernel for every copy instead of K
            per_sample = F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
            return per_sample.view(len(out), -1).mean(1)
        return torch.stack([self.loss(o, t) for o, t in zip(out.unbind(0), y.unbind(0), strict=True)])

    # --- a client side: forward now, backward when the smashed data's gradient comes back ------------------
    def forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Copy k's output on x, detached (it is what travels); the graph waits for ``backward(k, ...)``.
        An ``x`` that requires grad gets its gradient back from ``backward``."""
        out, leaves = self._forward(k, x)
        self._pending[k] = (out, [*leaves, x] if x.requires_grad else leaves)
        return out.detach()

    def _pending_grads(self, k: int, grad: torch.Tensor) -> tuple[tuple, torch.Tensor | None]:
        """Copy k's pending output back-propagated: (parameter gradients, the input's or None)."""
        out, leaves = self._pending.pop(k)
        grads = torch.autograd.grad(out, leaves, grad)
        params = len(self._views[k][0])
        return grads[:params], (grads[params] if len(grads) > params else None)

    def backward(self, k: int, grad: torch.Tensor) -> torch.Tensor | None:
        """Back-propagate the gradient of copy k's last output and take one optimizer step; returns the
        gradient at the input if the input required it."""
        grads, at_input = self._pending_grads(k, grad)
        self._step(k, grads)
        return at_input

    def forward_each(self, copies: Sequence[int], xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Copy copies[i]'s output on xs[i] for each i, as clients do in parallel; see ``backward_each``."""
        if self.batched(copies, xs):
            x = torch.stack(list(xs))
            if any(t.requires_grad for t in xs):
                x = x.detach().requires_grad_()
            return list(self.forward(ALL, x).unbind(0))
        return [self.forward(k, x) for k, x in zip(copies, xs, strict=True)]

    def backward_each(
        self, copies: Sequence[int], grads: Sequence[torch.Tensor]
    ) -> list[torch.Tensor | None]:
        """Back-propagate grads[i] through copy copies[i]'s pending output, then step each copy; each
        input's gradient (None where the input did not require it)."""
        if ALL in self._pending:
            at_input = self.backward(ALL, torch.stack(list(grads)))
            return [None] * len(copies) if at_input is None else list(at_input.unbind(0))
        # Every gradient before any update: the copies share one storage, whose version counter an
        # update bumps, which would invalidate the other copies' pending graphs.
        all_grads = [self._pending_grads(k, grad) for k, grad in zip(copies, grads, strict=True)]
        for k, (g, _) in zip(copies, all_grads, strict=True):
            self._step(k, g)
        return [at_input for _, at_input in all_grads]

    # --- a whole step on (x, y) -------------------------------------------------------------------------
    def train_step(self, k: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """One step of copy k on the mean loss of (x, y); returns ∂loss/∂x if x requires grad."""
        out, leaves = self._forward(k, x)
        loss = self._loss(out, y)
        if self.metered:
            self.meter.add_loss(loss, len(x))
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
        losses = self._mean_losses(out, y)  # copy k's mean loss; their sum's gradient is each copy's own
        if self.metered:
            self.meter.add_loss(losses.sum() / len(losses), x.shape[0] * x.shape[1])
        grads = torch.autograd.grad(losses.sum(), [*leaves, x])
        self._step(ALL, grads[:-1])
        return list(grads[-1].unbind(0))


def joint_step(sides: Sequence[Side], k: int, x: torch.Tensor, y: torch.Tensor) -> None:
    """One step of the unsplit model (the ``sides`` in model order, one autograd graph) on copy k of each
    (k = ALL: every copy at once, x and y stacked [K, b, ...]). Clipping, if the first side asks for it,
    is over the whole model's gradient, as clip_grad_norm_ on the unsplit model would."""
    leaves_of, h = [], x
    for side in sides:
        h, leaves = side._forward(k, h)
        leaves_of.append(leaves)
    last = sides[-1]
    if k == ALL:
        losses = last._mean_losses(h, y)
        loss, total = losses.sum(), losses.sum() / len(losses)
        count = x.shape[0] * x.shape[1]
    else:
        loss = total = last._loss(h, y)
        count = len(x)
    if last.metered:
        last.meter.add_loss(total, count)
    grads = torch.autograd.grad(loss, [leaf for leaves in leaves_of for leaf in leaves])
    flat, at = [], 0
    for side, leaves in zip(sides, leaves_of, strict=True):
        flat.append(side._corrected(k, side._flat(k, grads[at : at + len(leaves)])))
        at += len(leaves)
    if sides[0].opt.clip_grad_norm is not None:
        clip_grad_norm_(flat, sides[0].opt.clip_grad_norm)
    for side, g in zip(sides, flat, strict=True):
        side._apply(k, g)


def joint_each(
    sides: Sequence[Side], copies: Sequence[int], xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]
) -> None:
    """For each i, one step of the unsplit model copy copies[i] on (xs[i], ys[i])."""
    if all(side.batched(copies, xs) for side in sides):
        joint_step(sides, ALL, torch.stack(list(xs)), torch.stack(list(ys)))
        return
    for k, x, y in zip(copies, xs, ys, strict=True):
        joint_step(sides, k, x, y)
