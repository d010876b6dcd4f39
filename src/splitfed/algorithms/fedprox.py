"""FedProx: FedAvg whose clients minimise their loss plus a proximal term that keeps them near the
round's global model.

T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020 (Algorithm 2).

    for t = 0, ..., T − 1:
        the server sends w^t to the selected clients               fed_server (Average): download
        each client k finds w_k^{t+1} ≈ argmin_w h_k(w; w^t),      FedAvg's client (τ SGD steps) on
            h_k(w; w^t) = F_k(w) + μ/2 ‖w − w^t‖²                   ∇h_k = ∇F_k + μ (w − w^t): ProxTerm
        w^{t+1} := the average of the w_k^{t+1}                    fed_server (Average): end

The term is a ``Correction``: ``correction.prox_mu`` adds it to any algorithm's client parts (a proximal
term on the client side of MiniBatch-SFL is ``--algorithm minibatch_sfl --correction.prox-mu 0.01``).
With μ = 0 FedProx is FedAvg to every digit (a test).
"""

import torch

from .base import ClientRound, Correction, register, register_correction
from .fedavg import FedAvg

DEFAULT_MU = 0.01


@register_correction
class ProxTerm(Correction):
    """μ/2 ‖w − w^r‖² on every client part: its gradient μ (w − w^r) joins the loss's."""

    knob = "correction.prox_mu"

    @property
    def mu(self) -> float:
        mu = self.cfg.correction.prox_mu
        return DEFAULT_MU if mu is None else mu

    def begin(self, client: ClientRound) -> None:
        for part, state in client.start.model.items():
            client.scratch(part)["anchor"] = state.params  # w^r, what this client started from

    def correct(self, part: str, grad: torch.Tensor, params: torch.Tensor, scratch: dict) -> torch.Tensor:
        return grad.add(params - scratch["anchor"], alpha=self.mu)


@register("fedprox")
class FedProx(FedAvg):
    """FedAvg with the proximal term μ/2 ‖w − w^r‖² (``correction.prox_mu``, default 0.01)."""

    always = (ProxTerm,)
