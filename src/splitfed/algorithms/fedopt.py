"""Adaptive federated optimisation: the fed server treats the clients' mean update as a pseudo-gradient
and steps the global model with an optimizer of its own.

S. J. Reddi, Z. Charles, M. Zaheer, Z. Garrett, K. Rush, J. Konečný, S. Kumar, H. B. McMahan, "Adaptive
Federated Optimization", ICLR 2021 (Algorithm 2: FedAdagrad, FedYogi, FedAdam); T.-M. H. Hsu, H. Qi,
M. Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", arXiv 1909.06335, 2019 (FedAvgM).

    for t = 0, ..., T − 1:
        sample S; every i in S starts from x_t, K SGD steps        fed_server (Average), FedAvg's client
        Δ_t := (1/|S|) Σ_i (x_{i,K} − x_t)                          ServerStep.update: mean − model
        FedAvgM:   m_t := β m_{t−1} + Δ_t;  x_{t+1} := x_t + η m_t   (Hsu et al.)
        m_t := β1 m_{t−1} + (1 − β1) Δ_t                            the adaptive ones:
        v_t := v_{t−1} + Δ_t²                                       FedAdagrad
        v_t := v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)         FedYogi
        v_t := β2 v_{t−1} + (1 − β2) Δ_t²                           FedAdam
        x_{t+1} := x_t + η m_t / (√v_t + τ)

The server optimizer steps the parameters; buffers (BatchNorm statistics) and the clients' optimizer
state are averaged, as FedAvg. v_{−1} = τ² as in the paper's experiments (so the first step is not
1/τ-sized); m and v are the fed server's state, checkpointed by name. With β = 0 and η = 1, FedAvgM is
FedAvg (a test).
"""

import torch

from .base import Algorithm, Average, Model, register
from .fedavg import FedAvg


class ServerStep(Average):
    """Average, then x := x + η·(step of the mean update Δ = mean − x), per part, on the parameters."""

    def __init__(self, algo: Algorithm, lr: float) -> None:
        super().__init__(algo)
        self.lr = lr
        self.moments: dict[str, torch.Tensor] = {}  # "m.<part>", "v.<part>"

    def direction(self, part: str, delta: torch.Tensor) -> torch.Tensor | None:
        """The step from the mean update Δ (None: Δ itself, plain averaging)."""
        return None

    def update(self, model: Model, mean: Model) -> Model:
        out = {}
        for part, avg in mean.items():
            x = model[part].params
            step = self.direction(part, avg.params - x)
            if step is None:  # x + η Δ; at η = 1 the mean itself, to every digit
                params = avg.params if self.lr == 1.0 else x + self.lr * (avg.params - x)
            else:
                params = x + self.lr * step
            out[part] = type(avg)(params, avg.buffers, avg.opt)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return super().state_dict() | dict(self.moments)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.moments = {k: v for k, v in state.items() if k[:2] in ("m.", "v.")}

    def moment(self, name: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        if name not in self.moments:
            self.moments[name] = torch.full_like(like, fill)
        return self.moments[name]


class Momentum(ServerStep):
    def __init__(self, algo: Algorithm, lr: float, beta: float) -> None:
        super().__init__(algo, lr)
        self.beta = beta

    def direction(self, part: str, delta: torch.Tensor) -> torch.Tensor:
        m = self.moment(f"m.{part}", delta)
        m.mul_(self.beta).add_(delta)
        return m


class Adaptive(ServerStep):
    def __init__(self, algo: Algorithm, lr: float, betas: tuple[float, float], tau: float, rule: str) -> None:
        super().__init__(algo, lr)
        self.betas, self.tau, self.rule = betas, tau, rule

    def direction(self, part: str, delta: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        m = self.moment(f"m.{part}", delta)
        v = self.moment(f"v.{part}", delta, fill=self.tau**2)
        m.mul_(b1).add_(delta, alpha=1 - b1)
        sq = delta * delta
        if self.rule == "adagrad":
            v.add_(sq)
        elif self.rule == "yogi":
            v.sub_((1 - b2) * sq * torch.sign(v - sq))
        else:
            v.mul_(b2).add_(sq, alpha=1 - b2)
        return m / (v.sqrt() + self.tau)


@register("fedavgm")
class FedAvgM(FedAvg):
    """FedAvg with server momentum: β = ``fed_optimizer.momentum`` (0.9), η = ``fed_optimizer.lr`` (1)."""

    knobs = ("fed_optimizer.lr", "fed_optimizer.momentum")

    def fed_server(self) -> Momentum:
        cfg = self.cfg
        fed = cfg.fed_optimizer
        beta = 0.9 if fed.momentum is None else fed.momentum
        return Momentum(self, 1.0 if fed.lr is None else fed.lr, beta)


class _AdaptiveFedOpt(FedAvg):
    rule = "adam"
    knobs = ("fed_optimizer.lr", "fed_optimizer.betas", "fed_optimizer.eps")

    def fed_server(self) -> Adaptive:
        cfg = self.cfg
        fed = cfg.fed_optimizer
        b1, b2 = fed.betas or (0.9, 0.99)
        lr = 0.01 if fed.lr is None else fed.lr
        return Adaptive(self, lr, (b1, b2), 1e-3 if fed.eps is None else fed.eps, self.rule)


@register("fedadam")
class FedAdam(_AdaptiveFedOpt):
    """FedAvg with an Adam server; ``[fed_optimizer]`` η ``lr`` (0.01), β ``betas`` (0.9, 0.99), τ ``eps``
    (1e-3)."""

    rule = "adam"


@register("fedyogi")
class FedYogi(_AdaptiveFedOpt):
    """FedAvg with a Yogi server (FedAdam's knobs and defaults)."""

    rule = "yogi"


@register("fedadagrad")
class FedAdagrad(_AdaptiveFedOpt):
    """FedAvg with an Adagrad server (FedAdam's knobs and defaults; β2 unused)."""

    rule = "adagrad"
