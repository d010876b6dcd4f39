"""FedBN against a plain-PyTorch FedBN; on a model without normalisation layers it is FedAvg."""

import copy
from collections import OrderedDict

import torch
from torch import nn

from splitfed import MODELS, register_model

from ..conftest import small_config
from .helpers import (
    assert_different_model,
    assert_same_model,
    average,
    both_executions,
    final_model,
    local_sgd,
    train_one,
    weights_of,
)

if "test_bn_both_sides" not in MODELS:

    @register_model("test_bn_both_sides")
    def _bn_model(num_classes, in_shape):
        """BatchNorm on both sides of the cut; tanh and average pooling (smooth)."""
        c, h, w = in_shape
        return nn.Sequential(
            OrderedDict(
                conv=nn.Sequential(
                    nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.AvgPool2d(2)
                ),
                fc=nn.Sequential(
                    nn.Flatten(), nn.Linear(4 * (h // 2) * (w // 2), 16), nn.BatchNorm1d(16), nn.Tanh()
                ),
                out=nn.Linear(16, num_classes),
            )
        )


def is_norm(model, key):
    owner = model.get_submodule(key.rsplit(".", 1)[0])
    return isinstance(owner, nn.modules.batchnorm._NormBase)


def reference_fedbn(setup, rounds, tau, lr):
    """Li et al.'s Algorithm 1 in plain PyTorch: each client's BN parameters and statistics stay its own;
    every other layer is averaged (the global model's BN: the clients' average, for evaluation)."""
    streams, model, b = setup.context().streams, copy.deepcopy(setup.model), setup.cfg.batch_size
    own: dict[int, dict] = {}
    for _ in range(rounds):
        trained = []
        for n in range(setup.cfg.clients):
            start = copy.deepcopy(model)
            if n in own:
                start.load_state_dict(start.state_dict() | own[n])
            local = local_sgd(start, [streams.batch(n, b) for _ in range(tau)], lr)
            own[n] = {k: v.clone() for k, v in local.state_dict().items() if is_norm(local, k)}
            trained.append(local.state_dict())
        model.load_state_dict(average(trained, weights_of(setup)))
    return model


def test_fedbn_is_the_plain_pytorch_fedbn_in_both_executors():
    cfg = small_config(
        model="test_bn_both_sides", batch_size=16, local_iters=2, rounds=3, lr=0.1, divergence_every=0
    )
    setup, seq, bat = both_executions(cfg, "fedbn")
    ref = reference_fedbn(setup, 3, 2, 0.1)
    # measured 1.2e-7 here; the bound leaves room for another CPU's rounding, well below FedBN's own
    # effect (6e-4 against FedAvg, checked below)
    assert_same_model(final_model(setup, seq), ref, atol=1e-5)
    assert_same_model(final_model(setup, bat), ref, atol=1e-5)
    _, fedavg, _, _ = train_one(cfg, "fedavg")
    assert_different_model(final_model(setup, seq), final_model(setup, fedavg), atol=1e-4)
    assert len(seq.client_states) == cfg.clients  # each client's own normalisation layers


def test_fedbn_on_a_model_without_normalisation_is_fedavg_to_every_digit():
    cfg = small_config(local_iters=3, rounds=3, lr=0.05)
    _, bn, _, _ = train_one(cfg, "fedbn")
    _, avg, _, _ = train_one(cfg, "fedavg")
    assert torch.equal(bn.w_c.params, avg.w_c.params) and torch.equal(bn.w_s.params, avg.w_s.params)
