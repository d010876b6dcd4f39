"""A side's optimizer: torch.optim's own functional step on one copy's flat state, or on all copies stacked.

``Optimizer.step`` calls ``torch.optim.sgd.sgd``, ``torch.optim.adam.adam`` or ``torch.optim.adamw.adamw``
(public, in those modules' ``__all__``) on the flat parameter vector of one copy ([P]) or of every copy at
once ([K, P]). These optimizers are element-wise, so one flat tensor in place of the module's parameter
tensors changes nothing in the arithmetic: it is torch.optim's.

The optimizer's state is one flat tensor per copy (``State.opt``), its slots one after another: SGD's
``momentum_buffer`` [P] (when momentum > 0); Adam/AdamW's ``exp_avg`` [P], ``exp_avg_sq`` [P],
``max_exp_avg_sq`` [P] (amsgrad), then ``step`` [1]. torch.optim keeps one step counter per parameter
tensor, all equal within one optimizer; a copy keeps one. SGD with dampening keeps a step counter too.

Which torch kernels run: on the CPU, torch's default for the device with the rate as a Python number (Adam
on [K, P] one copy at a time: its non-capturable kernels read the step counter as a number). On CUDA, where
a slot may be captured as a CUDA graph (``graph_safe``): SGD ``fused=True`` and Adam/AdamW ``foreach=True,
capturable=True``, both with the rate as a 0-dim tensor that ``Side.set_lr`` fills in place, so a captured
graph replays with the current round's rate and nothing is re-captured. (torch's foreach and single-tensor
SGD read a tensor rate back as a number, a device sync that a graph cannot hold; so does the
non-capturable Adam with its step counter.)

Averaging (spec §7): the optimizer state is averaged with the weights wherever the algorithm averages the
weights, and kept wherever the model is kept (``WeightedSum`` averages all three flat tensors of a State):

| algorithm | client side (weights + optimizer state) | server side (weights + optimizer state) |
|---|---|---|
| minibatch_sfl | per client, averaged each round | one model, kept |
| sfl_v1 | per client, averaged each round | per-client copies, averaged each round |
| sfl_v2 | per client, averaged each round | one model, kept |
| sl | one copy relayed client to client, kept | one model, kept |
| fedavg | whole model per client, averaged each round | (with the client side) |
| centralized | one model, kept | (with the client side) |

Averaging Adam's ``exp_avg_sq`` gives the mean of the clients' second moments (not the second moment of
the mean gradient), like the weights a choice of spec §7. Averaging the ``step`` counter is exact: every
copy starts a round from the same global state, at the same step s, and takes the same τ steps, so the
average is s + τ (up to the rounding of Σ p_n = 1 in float32, far below what β^step can tell apart).

SGD ``dampening``: torch's first step sets the momentum buffer to the gradient itself, later steps to
momentum·buf + (1 − dampening)·grad. Here the buffer always exists (zero at first), which is the same
without dampening; with dampening the first step's gradient is scaled by 1 / (1 − dampening), chosen by a
step counter with tensor ops (no Python branch on a value), so it equals torch to float rounding.

Gradient clipping (``clip_grad_norm``) is ``torch.nn.utils.clip_grad_norm_``'s rule per copy: the L2 norm
of that copy's whole gradient (over every parameter of the side), coefficient max_norm / (norm + 1e-6)
clamped at 1. A split model clips each side separately (each side is its own optimizer); the unsplit
whole-model step (``joint_step``) clips the whole model's gradient, as torch would on the full model.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

from ..config import Config

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class Optimizer:
    """One side's optimizer (``name``: sgd | adam | adamw) and its hyper-parameters, named as torch.optim's.

    ``lr`` is the base rate; the rate of a round is the Side's (``Side.set_lr``). ``weight_decay`` is L2
    added to the gradient for sgd and adam, decoupled for adamw, as in torch.
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.name!r}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")  # torch's rule

    @property
    def slots(self) -> tuple[str, ...]:
        """The per-parameter state slots, each one flat vector of P, in the order they sit in State.opt."""
        if self.name == "sgd":
            return ("momentum_buffer",) if self.momentum else ()
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    @property
    def counts_steps(self) -> bool:
        """Whether the state ends with a step counter: Adam's t; SGD's only for the dampening rule."""
        return self.name != "sgd" or bool(self.momentum and self.dampening)

    def state_size(self, num_params: int) -> int:
        """Length of one copy's flat optimizer state for P = ``num_params``."""
        return len(self.slots) * num_params + int(self.counts_steps)

    def step(
        self,
        params: torch.Tensor,
        grads: torch.Tensor,
        state: torch.Tensor,
        lr: float | torch.Tensor,
        graph_safe: bool = False,
    ) -> None:
        """One step of the flat ``params`` ([P], or [K, P]: K copies, each its own optimizer) with
        ``grads`` of the same shape, updating ``params`` and the flat ``state`` ([S] or [K, S]) in place.

        ``graph_safe`` picks the kernels that a CUDA graph can capture, which take ``lr`` as a 0-dim tensor
        (see the module docstring); otherwise torch's default kernels, with ``lr`` a number.
        """
        num = params.shape[-1]
        if num == 0:
            return
        slots = [state[..., i * num : (i + 1) * num] for i in range(len(self.slots))]
        if params.dim() == 2 and (
            (self.name != "sgd" and not graph_safe)
            or (graph_safe and not all(t.is_contiguous() for t in slots))
        ):
            # One copy at a time where torch's kernels cannot take the stack: the non-capturable Adam reads
            # each step counter as a Python number; the fused SGD needs dense tensors, and a slot of the
            # stack is strided when the state holds more than that slot (the dampening counter).
            for k in range(params.shape[0]):
                self.step(params[k], grads[k], state[k], lr, graph_safe)
            return
        steps = state[..., len(slots) * num :]  # [1] or [K, 1]: broadcasts against [P] or [K, P]
        if self.name == "sgd":
            self._sgd(params, grads, slots, steps, lr, graph_safe)
            return
        fn = adamw if self.name == "adamw" else adam
        fn(
            [params],
            [grads],
            [slots[0]],
            [slots[1]],
            [slots[2]] if self.amsgrad else [],
            [steps],
            foreach=True if graph_safe else None,
            capturable=graph_safe,
            amsgrad=self.amsgrad,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )

    def _sgd(
        self,
        params: torch.Tensor,
        grads: torch.Tensor,
        slots: list[torch.Tensor],
        steps: torch.Tensor,
        lr: float | torch.Tensor,
        graph_safe: bool,
    ) -> None:
        weight_decay = self.weight_decay
        if self.counts_steps:  # momentum with dampening: see the module docstring
            if weight_decay:  # torch adds it before the momentum; here before the first-step scaling
                grads = grads.add(params, alpha=weight_decay)
                weight_decay = 0.0
            first = torch.where(steps < 0.5, 1 / (1 - self.dampening), 1.0)
            grads = grads * first
            steps.add_(1)
        sgd(
            [params],
            [grads],
            slots or [None],
            fused=True if graph_safe else None,
            weight_decay=weight_decay,
            momentum=self.momentum,
            lr=lr,  # type: ignore[arg-type]  # the fused kernel takes a tensor rate
            dampening=self.dampening,
            nesterov=self.nesterov,
            maximize=False,
        )


def clip_grad_norm_(grads: Sequence[torch.Tensor], max_norm: float) -> None:
    """Scale flat gradients ([P_i], or [K, P_i] per copy) in place so that each copy's norm over all of
    them is at most ``max_norm``: ``torch.nn.utils.clip_grad_norm_``'s rule, without a device sync."""
    norms = torch.stack([torch.linalg.vector_norm(g, dim=-1) for g in grads])  # [n] or [n, K]
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0).unsqueeze(-1)
    for g in grads:
        g.mul_(coef)


def side_optimizer(cfg: Config, half: str) -> Optimizer:
    """The optimizer of the client side (``half`` = "client") or the server side ("server") of a run."""
    name = (cfg.client_optimizer if half == "client" else cfg.server_optimizer) or cfg.optimizer
    lr = (cfg.client_lr if half == "client" else cfg.server_lr) or cfg.lr
    return Optimizer(
        name,
        lr,
        cfg.momentum,
        cfg.dampening,
        cfg.nesterov,
        cfg.weight_decay,
        (cfg.betas[0], cfg.betas[1]),
        cfg.eps,
        cfg.amsgrad,
        cfg.clip_grad_norm,
    )


class LRSchedule:
    """The learning rate of each round, from a real ``torch.optim.lr_scheduler`` on a dummy optimizer.

    Round r (from 1) gets the rate after r − 1 scheduler steps, as epoch r − 1 would under torch: so the
    sequence is exactly torch's. The rate changes per round (between fed-server aggregations), not per
    iteration. ``cosine`` anneals from the base rate to ``lr_min`` over ``lr_cosine_rounds`` (default:
    ``rounds``); ``step`` multiplies by ``lr_gamma`` every ``lr_step_size`` rounds; ``exponential`` by
    ``lr_gamma`` every round.
    """

    def __init__(self, cfg: Config, base_lr: float) -> None:
        self._opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        self._sched = _scheduler(cfg, self._opt)
        self._rates: list[float] = []

    def __call__(self, rnd: int) -> float:
        while len(self._rates) < rnd:
            if self._rates:
                self._opt.step()  # no gradients, no change; keeps torch from warning about the order
                if self._sched is not None:
                    self._sched.step()
            self._rates.append(float(self._opt.param_groups[0]["lr"]))
        return self._rates[rnd - 1]


def _scheduler(cfg: Config, opt: torch.optim.Optimizer) -> lr_scheduler.LRScheduler | None:
    if cfg.lr_schedule == "none":
        return None
    if cfg.lr_schedule == "step":
        assert cfg.lr_step_size is not None  # the config requires it
        return lr_scheduler.StepLR(opt, cfg.lr_step_size, 0.1 if cfg.lr_gamma is None else cfg.lr_gamma)
    if cfg.lr_schedule == "exponential":
        assert cfg.lr_gamma is not None
        return lr_scheduler.ExponentialLR(opt, cfg.lr_gamma)
    return lr_scheduler.CosineAnnealingLR(opt, cfg.lr_cosine_rounds or cfg.rounds, cfg.lr_min or 0.0)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
