"""FedBN: FedAvg whose clients keep their own normalisation layers, so that each normalises with the
statistics of its own feature distribution.

X. Li, M. Jiang, X. Zhang, M. Kamp, Q. Dou, "FedBN: Federated Learning on Non-IID Features via Local
Batch Normalization", ICLR 2021 (Algorithm 1).

    for each round t:
        each client k: w_k ← the global model, but for its own BN   fed_server (Average): download;
            parameters (and statistics), kept from its last round    FedBN.client_begin
        E local epochs of SGD                                        FedAvg's client
        the server averages every layer but BN                       fed_server (Average), client_end

The normalisation layers (BatchNorm, GroupNorm, LayerNorm: found by the type of the module that owns a
parameter, through the part's ``Layout``) are each client's state that outlives the round, with their
optimizer state. The fed server still averages them, for one thing only: the global model that evaluation
scores on the whole test set needs some normalisation layers, and the clients' average is the choice made
here (the paper scores each client's model on its own data). On a model without normalisation layers
FedBN is FedAvg to every digit (a test).
"""

import torch
from torch import nn

from .base import ClientRound, register
from .fedavg import FedAvg

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_entries(client: ClientRound, part: str) -> dict[str, torch.Tensor]:
    """Where part's normalisation layers lie in its State: indices into params, buffers and opt."""
    layout = client.layouts[part]
    params, buffers = layout.select(lambda name: issubclass(layout.owners[name], NORMS))
    state = client.model[part]
    slots = state.opt.numel() // max(1, state.params.numel())  # the optimizer's per-parameter slots
    opt = torch.cat([params + i * state.params.numel() for i in range(slots)]) if slots else params[:0]
    device = state.params.device
    return {"params": params.to(device), "buffers": buffers.to(device), "opt": opt.to(device)}


@register("fedbn")
class FedBN(FedAvg):
    """FedAvg with each client's normalisation layers kept local."""

    def client_begin(self, client: ClientRound) -> None:
        for part, state in client.model.items():
            for key, idx in norm_entries(client, part).items():
                own = client.state.get(f"norm.{part}.{key}")
                if own is not None:  # from its last round; the first round starts from the global ones
                    getattr(state, key)[idx] = own
        super().client_begin(client)

    def client_end(self, client: ClientRound) -> dict[str, torch.Tensor]:
        for part, state in client.model.items():
            for key, idx in norm_entries(client, part).items():
                if len(idx):
                    client.state[f"norm.{part}.{key}"] = getattr(state, key)[idx].clone()
        return super().client_end(client)
