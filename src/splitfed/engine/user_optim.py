"""A side's optimizer given as an object: any ``torch.optim.Optimizer`` class, or a factory that builds one.

A Side holds K copies of its parameters as flat rows and averages each copy's optimizer state with its
weights (engine/optim.py has the rule per algorithm), so the state must be a flat tensor too. This wraps
one real torch optimizer, built on scratch parameters shaped like the side's: a step copies a copy's
parameters and state in, calls ``optimizer.step()`` (torch's own code, whatever the class) and copies
them back out. The copies cost 2·(P + S) floats per step, small beside a forward and backward pass.

The flat state is laid out by a probe: two steps on scratch parameters when the optimizer is built show
which state each parameter keeps. Each entry must be a float32 tensor the size of its parameter (a
moment, a momentum buffer) or a single number (a step counter): element-wise state, which averages as
the weights do. Anything else (LBFGS's integers and lists, a factored second moment) cannot be averaged
with the weights and is refused in one line before training. The last element of the flat state says
whether the optimizer has stepped yet (0 at first): before its first step the optimizer sees an empty
state and initialises it as torch does (SGD's first momentum buffer is the gradient itself).

What the factory receives: the side's ``named_parameters()`` as a list of (name, parameter) pairs, the
names those of the side's module (a split half's own names). It must return an optimizer over exactly
those parameters, each once (parameter groups welcome). A class is built as ``cls(params, lr=<the side's
rate>, **knobs)``, the knobs being the config's momentum, dampening, nesterov, weight_decay, betas, eps
and amsgrad that are set away from their defaults and that the class's ``__init__`` takes.
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SplitfedError

NamedParams = list[tuple[str, torch.Tensor]]
OptimizerFactory = Callable[[NamedParams], torch.optim.Optimizer]
INITIALISED = 0.5  # the last element of the flat state is 0 before the first step, 1 after (averaged: ~1)


def class_factory(cls: type, lr: float, knobs: dict[str, Any], label: str) -> tuple[OptimizerFactory, set]:
    """A factory building ``cls`` with ``lr`` and the knobs its ``__init__`` takes; and those knobs' names."""
    try:
        accepted = set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):  # no signature to read: pass the rate alone
        accepted = set()
    taken = {k: v for k, v in knobs.items() if k in accepted}

    def make(named: NamedParams) -> torch.optim.Optimizer:
        return cls([p for _, p in named], lr=lr, **taken)

    return make, set(taken)


class TorchOptimizer:
    """One side's optimizer built by ``make`` (see the module docstring), stepping flat copies.

    ``lr`` is the first parameter group's rate as built (what a schedule starts from and what the
    round's metrics report); ``base_rates`` every group's. ``knobs``: the config knobs passed to it.
    """

    capturable = False  # a step runs Python between kernels (state in and out): no CUDA graph holds it

    def __init__(
        self,
        make: OptimizerFactory,
        label: str,
        module: nn.Module,
        clip_grad_norm: float | None = None,
        knobs: set[str] | None = None,
    ) -> None:
        self.label = label
        self.make = make
        self.clip_grad_norm = clip_grad_norm
        self.knobs = knobs or set()
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for p in module.parameters()]
        self.numels = [p.numel() for p in module.parameters()]
        self.params, self.opt = self.build([p.detach() for p in module.parameters()])
        self.base_rates = [float(g["lr"]) for g in self.opt.param_groups]
        self.lr = self.base_rates[0]
        self.slots = self._probe()  # (param index, key, offset, numel, shape, on the parameter's device)
        self.size = sum(s[3] for s in self.slots) + 1
        self.opt.state.clear()

    # --- building and probing ---------------------------------------------------------------------------
    def twin(self) -> torch.optim.Optimizer:
        """A fresh optimizer built the same way on zero parameters of the same shapes (what a learning
        rate schedule steps to find each round's rates, leaving this one alone)."""
        params, opt = self.build([torch.zeros(s) for s in self.shapes])
        for p in params:  # a schedule steps the twin before its scheduler (torch's order): give it gradients
            p.grad = torch.zeros_like(p)
        return opt

    def build(self, like: Sequence[torch.Tensor]) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
        """Scratch parameters with the values of ``like``, and the user's optimizer over them, checked."""
        params = [nn.Parameter(p.clone().float()) for p in like]
        try:
            opt = self.make(list(zip(self.names, params, strict=True)))
        except Exception as e:  # the user's code: any failure, one line
            raise SplitfedError(f"optimizer {self.label} cannot be built: {_first_line(e)}") from None
        if not isinstance(opt, torch.optim.Optimizer):
            raise SplitfedError(
                f"optimizer {self.label} returned a {type(opt).__name__}; it must return a "
                "torch.optim.Optimizer over the named parameters it is given"
            )
        held = [id(p) for g in opt.param_groups for p in g["params"]]
        missing = [n for n, p in zip(self.names, params, strict=True) if id(p) not in held]
        if missing or len(held) != len(params):
            raise SplitfedError(
                f"optimizer {self.label} must hold each parameter it is given exactly once; "
                + (f"it leaves out {', '.join(missing[:5])}" if missing else "it holds others or duplicates")
            )
        return params, opt

    def _probe(self) -> list[tuple[int, str, int, int, torch.Size, bool]]:
        """Two steps with a fixed small gradient; the state they leave, laid out flat (or refused)."""
        layouts = []
        for _ in range(2):
            for p in self.params:
                p.grad = torch.full_like(p, 1e-3)
            try:
                self.opt.step()
            except Exception as e:
                self._refuse_state_with_a_closure()  # what stands in the way more: state it cannot average
                raise SplitfedError(
                    f"optimizer {self.label} fails on a step without a closure ({_first_line(e)}); splitfed "
                    "calls optimizer.step() once after each backward pass"
                ) from None
            layouts.append(self._layout())
        if layouts[0] != layouts[1]:
            raise SplitfedError(
                f"optimizer {self.label} changes the shape of its state between steps; splitfed averages "
                "optimizer state with the weights and needs a fixed layout"
            )
        for p in self.params:
            p.grad = None
        return layouts[1]

    def _refuse_state_with_a_closure(self) -> None:
        """For an optimizer that needs a closure (LBFGS): one step with a closure of constant loss, and
        the state it leaves refused if it cannot be averaged; nothing if it fails or leaves such state."""
        self.opt.state.clear()
        try:
            self.opt.step(lambda: torch.zeros(()))  # type: ignore[arg-type]  # (torch's stubs: float)
        except Exception:
            return
        self._layout()

    def _layout(self) -> list[tuple[int, str, int, int, torch.Size, bool]]:
        slots, offset = [], 0
        ids = {id(p): i for i, p in enumerate(self.params)}
        for key_param in self.opt.state:
            if id(key_param) not in ids:
                raise SplitfedError(f"optimizer {self.label} keeps state for a tensor that is no parameter")
        for i, p in enumerate(self.params):
            for key, value in self.opt.state.get(p, {}).items():
                if value is None:
                    continue
                where = f"optimizer {self.label} keeps state {key!r} for parameter {self.names[i]}"
                why = "; splitfed averages optimizer state element-wise with the weights (docs/api.md)"
                if not isinstance(value, torch.Tensor):
                    raise SplitfedError(f"{where} of type {type(value).__name__}, not a tensor{why}")
                if value.dtype != torch.float32:
                    raise SplitfedError(f"{where} of dtype {value.dtype}, not float32{why}")
                if value.numel() not in (p.numel(), 1):
                    raise SplitfedError(
                        f"{where} of shape {list(value.shape)}, neither the parameter's {list(p.shape)} "
                        f"nor one number{why}"
                    )
                slots.append((i, key, offset, value.numel(), value.shape, value.device == p.device))
                offset += value.numel()
        return slots

    # --- what a Side asks of an optimizer -------------------------------------------------------------
    def state_size(self, num_params: int) -> int:
        """Length of one copy's flat state (its slots, then the has-stepped flag)."""
        return self.size

    def set_rates(self, rates: Sequence[float]) -> None:
        """Each parameter group's rate for the next steps (a schedule's for this round)."""
        for group, rate in zip(self.opt.param_groups, rates, strict=True):
            group["lr"] = rate

    def step(
        self,
        params: torch.Tensor,
        grads: torch.Tensor,
        state: torch.Tensor,
        lr: float | torch.Tensor | None = None,
        graph_safe: bool = False,
    ) -> None:
        """One step of the flat ``params`` ([P], or [K, P]: each copy in turn) with ``grads``, updating
        them and the flat ``state`` in place. The rates are the groups' (``set_rates``), not ``lr``."""
        if params.dim() == 2:
            for k in range(params.shape[0]):
                self.step(params[k], grads[k], state[k])
            return
        if self.params and self.params[0].device != params.device:  # built on the CPU, run elsewhere
            for p in self.params:
                p.data = p.data.to(params.device)
        with torch.no_grad():
            torch._foreach_copy_(self.params, self._views(params))
            for p, g in zip(self.params, self._views(grads), strict=True):
                p.grad = g
            self._load(state)
            self.opt.step()
            self._store(state)
            torch._foreach_copy_(self._views(params), self.params)
        for p in self.params:
            p.grad = None

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(shape) for v, shape in zip(flat.split(self.numels), self.shapes, strict=True)]

    def _load(self, state: torch.Tensor) -> None:
        self.opt.state.clear()
        if float(state[-1]) < INITIALISED:  # never stepped: the optimizer initialises its state itself
            return
        for i, key, offset, numel, shape, on_param in self.slots:
            p = self.params[i]
            value = state[offset : offset + numel].view(shape).clone()
            self.opt.state[p][key] = value if on_param else value.cpu()

    def _store(self, state: torch.Tensor) -> None:
        for i, key, offset, numel, _, _ in self.slots:
            value = self.opt.state[self.params[i]][key]
            state[offset : offset + numel].copy_(value.reshape(-1))
        state[-1] = 1.0


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
