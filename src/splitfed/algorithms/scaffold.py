"""SCAFFOLD: FedAvg whose clients correct their drift with control variates, the server's c and their
own c_i, each an estimate of the update direction.

S. P. Karimireddy, S. Kale, M. Mohri, S. J. Reddi, S. U. Stich, A. T. Suresh, "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML 2020 (Algorithm 1, option II).

    server input: x, c (0), η_g; client i: c_i (0)                   ControlVariates: state, download
    for each round r = 1, ..., R:
        sample clients S; communicate (x, c) to every i in S         fed_server (Average): download
        on client i in S in parallel:
            y_i ← x                                                   (the executor loads it)
            for k = 1, ..., K: y_i ← y_i − η_l (g_i(y_i) − c_i + c)  ControlVariates.begin, correct
            c_i^+ ← c_i − c + (x − y_i) / (K η_l)                     ControlVariates.end (option II)
            communicate (Δy_i, Δc_i) ← (y_i − x, c_i^+ − c_i); c_i ← c_i^+
        (Δx, Δc) ← the average over S of (Δy_i, Δc_i)                fed_server (Average): the mean
        x ← x + η_g Δx;  c ← c + |S|/N · Δc                           Scaffold.update, ControlVariates.update

Choices: clients are averaged with weights p_n (|D_n|-proportional, as FedAvg here; uniform for equal
shards, as in the paper); the uploads are y_i itself (Δy_i = y_i − x with x known to the server);
η_g applies to the parameters, buffers (BatchNorm statistics) and optimizer state are averaged; with
momentum or Adam on the clients option II is the paper's formula with the client's rate η_l of the round.
``[correction] control_variates = true`` gives any algorithm's client parts the same correction (e.g.
MiniBatch-SFL's client side).
"""

import torch

from .base import ClientRound, Correction, Model, Payload, register, register_correction
from .fedavg import FedAvg
from .fedopt import ServerStep


@register_correction
class ControlVariates(Correction):
    """c (the fed server's, per client part) and c_i (each client's), over the parameters."""

    knob = "correction.control_variates"

    def __init__(self, cfg) -> None:  # type: ignore[no-untyped-def]
        super().__init__(cfg)
        self.c: dict[str, torch.Tensor] = {}

    def download(self, model: Model) -> dict[str, torch.Tensor]:
        for part, state in model.items():
            self.c.setdefault(part, torch.zeros_like(state.params))
        return {f"c.{part}": c for part, c in self.c.items()}

    def begin(self, client: ClientRound) -> None:
        for part in client.model:
            c_i = client.state.get(f"c.{part}")
            c = client.start.extras[f"c.{part}"]
            client.scratch(part)["correction"] = c if c_i is None else c - c_i  # −c_i + c

    def correct(self, part: str, grad: torch.Tensor, params: torch.Tensor, scratch: dict) -> torch.Tensor:
        return grad + scratch["correction"]

    def end(self, client: ClientRound) -> dict[str, torch.Tensor]:
        deltas = {}
        for part, state in client.model.items():
            c = client.start.extras[f"c.{part}"]
            c_i = client.state.get(f"c.{part}", torch.zeros_like(c))
            x, y = client.start.model[part].params, state.params
            c_plus = c_i - c + (x - y) / (client.steps * client.lr[part])
            deltas[f"delta_c.{part}"] = c_plus - c_i
            client.state[f"c.{part}"] = c_plus
        return deltas

    def update(self, model: Model, mean: Payload, participants: int, num_clients: int) -> None:
        for part in self.c:
            self.c[part] = self.c[part] + participants / num_clients * mean.extras[f"delta_c.{part}"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.c)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.c = dict(state)


@register("scaffold")
class Scaffold(FedAvg):
    """FedAvg with control variates (option II) and the server rate η_g (``fed_optimizer.lr``, default 1)."""

    always = (ControlVariates,)
    knobs = ("fed_optimizer.lr",)

    def fed_server(self) -> ServerStep:
        return ServerStep(self, lr=1.0 if self.cfg.fed_optimizer.lr is None else self.cfg.fed_optimizer.lr)
