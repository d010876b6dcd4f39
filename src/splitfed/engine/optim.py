"""A side's optimizer: torch.optim's own functional step on one copy's flat state, or on all copies stacked.

This is the path of the named optimizers (sgd, adam, adamw); one given as an object (any torch.optim
class, or a factory with parameter groups) steps through torch's own ``optimizer.step()`` instead
(engine/user_optim.py), with its state flat in the same place and averaged by the same rule (below).

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
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

from ..choices import LR_SCHEDULES, OPTIMIZERS
from ..config import Config
from ..errors import SplitfedError
from ..registry import import_object
from .user_optim import TorchOptimizer, class_factory


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

    capturable: ClassVar[bool] = True  # its graph-safe kernels replay in a CUDA graph (module docstring)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.name!r}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")  # torch's rule

    def set_rates(self, rates: Sequence[float]) -> None:
        """Nothing to do: a Side hands this optimizer the round's rate at each step."""

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


# The config's optimizer knobs at their defaults: a class given as an object gets only those set away from
# them (its own defaults otherwise), and only those its __init__ takes.
KNOB_DEFAULTS: dict[str, Any] = {
    "momentum": 0.0,
    "dampening": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "amsgrad": False,
}
# What a named optimizer takes of them.
NAMED_KNOBS = {
    "sgd": {"momentum", "dampening", "nesterov", "weight_decay"},
    "adam": {"weight_decay", "betas", "eps", "amsgrad"},
    "adamw": {"weight_decay", "betas", "eps", "amsgrad"},
}
SideOptimizer = Optimizer | TorchOptimizer


def side_optimizer(cfg: Config, half: str, module: nn.Module | None = None) -> SideOptimizer:
    """The optimizer of the client side (``half`` = "client") or the server side ("server") of a run.

    A name (sgd, adam, adamw) gives the flat ``Optimizer``; a class or factory (as config.toml records
    it) gives a ``TorchOptimizer`` over ``module``'s parameters (required then)."""
    name = (cfg.client_optimizer if half == "client" else cfg.server_optimizer) or cfg.optimizer
    own_lr = cfg.client_lr if half == "client" else cfg.server_lr
    lr = own_lr or cfg.lr
    if name not in OPTIMIZERS:
        assert module is not None, "an optimizer given as an object needs the side's module"
        field = f"{half}_optimizer" if name != cfg.optimizer else "optimizer"
        obj = import_object(name, field, "a torch.optim.Optimizer class or factory as pkg.module:name")
        knobs = {k: getattr(cfg, k) for k, default in KNOB_DEFAULTS.items() if getattr(cfg, k) != default}
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
            make, taken = class_factory(obj, lr, knobs, name)
            return TorchOptimizer(make, name, module, cfg.clip_grad_norm, taken)
        if isinstance(obj, type) or not callable(obj):
            raise SplitfedError(
                f"{field} {name} is a {'class' if isinstance(obj, type) else type(obj).__name__} that is "
                "no torch.optim.Optimizer; it must be a "
                "torch.optim.Optimizer class or a factory (named parameters) -> Optimizer"
            )
        if own_lr is not None:  # a factory sets its own rates: a rate given for its side would be ignored
            raise SplitfedError(
                f"{half}_lr is set, but the {half} side's optimizer {name} is a factory, which sets its own "
                "rates; set them in the factory"
            )
        return TorchOptimizer(obj, name, module, cfg.clip_grad_norm)
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


def check_optimizer_knobs(cfg: Config, opts: Sequence[SideOptimizer]) -> None:
    """Refuse an optimizer knob set away from its default that no side's optimizer takes (it would be
    ignored): a class given as an object takes those its __init__ does, a factory none."""
    taken = set().union(*(NAMED_KNOBS[o.name] if isinstance(o, Optimizer) else o.knobs for o in opts))
    for knob, default in KNOB_DEFAULTS.items():
        if getattr(cfg, knob) != default and knob not in taken:
            names = ", ".join(o.name if isinstance(o, Optimizer) else o.label for o in opts)
            raise SplitfedError(
                f"{knob} is set, but no side's optimizer takes it (optimizers: {names}; a factory sets its "
                "own); set it where the optimizer is built"
            )


def side_schedule(cfg: Config, half: str) -> str:
    """The name or label of the ``half`` side's learning rate schedule."""
    return (cfg.client_lr_schedule if half == "client" else cfg.server_lr_schedule) or cfg.lr_schedule


class LRSchedule:
    """The learning rate of each round, from a real ``torch.optim.lr_scheduler`` on a twin optimizer.

    Round r (from 1) gets the rates after r − 1 scheduler steps, as epoch r − 1 would under torch: so the
    sequence is exactly torch's. The rate changes per round (between fed-server aggregations), not per
    iteration. ``cosine`` anneals from the base rate to ``lr_decay.min_lr`` over ``lr_decay.cosine_rounds``
    (default: ``rounds``); ``step`` multiplies by ``lr_decay.gamma`` every ``lr_decay.step_size`` rounds;
    ``exponential`` by ``lr_decay.gamma`` every round. A factory ``optimizer -> LRScheduler`` (config.toml:
    its label) is called on the twin and stepped the same way: warm-up included (``SequentialLR`` of
    ``LinearLR`` and a cosine).

    The twin is a plain SGD at ``base_lr`` for a named optimizer; for one given as an object
    (``optimizer``: a ``TorchOptimizer``) a fresh instance of it, so each parameter group gets its rate.
    Only the rates are taken from the scheduler (not a momentum it may cycle).
    """

    def __init__(
        self, cfg: Config, base_lr: float, half: str = "client", optimizer: TorchOptimizer | None = None
    ) -> None:
        self.name = side_schedule(cfg, half)
        self._rates: list[list[float]] = []
        self._opt: torch.optim.Optimizer | None = None
        self._sched: lr_scheduler.LRScheduler | None = None
        if optimizer is None and self.name == "none":
            # A constant rate needs no twin. Building a torch.optim optimizer imports torch._dynamo, 1.5 s
            # of the start of every process that trains (a run, a rank, a deployment's role).
            self._rates = [[float(base_lr)]]
        elif optimizer is None:
            self._opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        else:
            self._opt = optimizer.twin()
        if self._opt is not None:
            self._sched = _scheduler(cfg, self.name, self._opt, half)

    def rates(self, rnd: int) -> list[float]:
        """Every parameter group's rate in round ``rnd`` (from 1)."""
        if self._opt is None:
            return self._rates[0]
        while len(self._rates) < rnd:
            if self._rates and self._sched is not None:
                try:
                    self._opt.step()  # no gradients, no change; keeps torch from warning about the order
                    self._sched.step()
                except Exception as e:  # a user's scheduler: any failure, one line
                    first = (str(e).splitlines() or [""])[0]
                    raise SplitfedError(
                        f"lr_schedule {self.name} fails on its step {len(self._rates)} "
                        f"({type(e).__name__}: {first}); splitfed calls scheduler.step() once a round"
                    ) from None
            self._rates.append([float(g["lr"]) for g in self._opt.param_groups])
        return self._rates[rnd - 1]

    def __call__(self, rnd: int) -> float:
        """The first parameter group's rate in round ``rnd`` (from 1)."""
        return self.rates(rnd)[0]


def _scheduler(
    cfg: Config, name: str, opt: torch.optim.Optimizer, half: str
) -> lr_scheduler.LRScheduler | None:
    if name not in LR_SCHEDULES:
        field = f"{half}_lr_schedule" if name != cfg.lr_schedule else "lr_schedule"
        make = import_object(name, field, "a factory Optimizer -> LRScheduler as pkg.module:name")
        try:
            sched = make(opt)
        except Exception as e:  # a user's factory: any failure, one line
            first = (str(e).splitlines() or [""])[0]
            raise SplitfedError(f"{field} {name} cannot be built: {type(e).__name__}: {first}") from None
        if not callable(getattr(sched, "step", None)):
            raise SplitfedError(
                f"{field} {name} returned a {type(sched).__name__}; it must return a "
                "torch.optim.lr_scheduler.LRScheduler on the optimizer it is given"
            )
        return sched
    if name == "none":
        return None
    decay = cfg.lr_decay
    if name == "step":
        assert decay.step_size is not None  # the config requires it
        return lr_scheduler.StepLR(opt, decay.step_size, 0.1 if decay.gamma is None else decay.gamma)
    if name == "exponential":
        assert decay.gamma is not None
        return lr_scheduler.ExponentialLR(opt, decay.gamma)
    return lr_scheduler.CosineAnnealingLR(opt, decay.cosine_rounds or cfg.rounds, decay.min_lr or 0.0)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
