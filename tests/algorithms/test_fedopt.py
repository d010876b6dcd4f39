"""FedAvgM and FedAdam/FedYogi/FedAdagrad against plain-PyTorch server optimizers; FedAvgM with β = 0 and
η = 1 is FedAvg."""

import copy

import pytest
import torch

from ..conftest import small_config
from .helpers import (
    SMOOTH_MODEL,
    assert_different_model,
    assert_same_model,
    average,
    both_executions,
    final_model,
    local_sgd,
    train_one,
    weights_of,
)

ATOL = 1e-5


def reference_fedopt(setup, rounds, tau, lr, server_step):
    """FedAvg's clients; the server turns the mean update Δ into the next model with ``server_step(name,
    x, Δ)``; buffers are averaged."""
    streams, model, b = setup.context().streams, copy.deepcopy(setup.model), setup.cfg.batch_size
    for _ in range(rounds):
        trained = []
        for n in range(setup.cfg.clients):
            batches = [streams.batch(n, b) for _ in range(tau)]
            trained.append(local_sgd(model, batches, lr).state_dict())
        mean = average(trained, weights_of(setup))
        params = dict(model.named_parameters())
        new = {
            k: (server_step(k, params[k].detach(), v - params[k].detach()) if k in params else v)
            for k, v in mean.items()
        }
        model.load_state_dict(new)
    return model


def adam_server(lr, b1, b2, tau, rule):
    m, v = {}, {}

    def step(name, x, delta):
        m[name] = b1 * m.get(name, torch.zeros_like(x)) + (1 - b1) * delta
        prev = v.get(name, torch.full_like(x, tau**2))
        if rule == "adam":
            v[name] = b2 * prev + (1 - b2) * delta**2
        elif rule == "yogi":
            v[name] = prev - (1 - b2) * delta**2 * torch.sign(prev - delta**2)
        else:
            v[name] = prev + delta**2
        return x + lr * m[name] / (v[name].sqrt() + tau)

    return step


def momentum_server(lr, beta):
    m = {}

    def step(name, x, delta):
        m[name] = beta * m.get(name, torch.zeros_like(x)) + delta
        return x + lr * m[name]

    return step


CFG = dict(model=SMOOTH_MODEL, local_iters=2, rounds=3, lr=0.05, divergence_every=0)


@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad"])
def test_adaptive_servers_are_the_plain_pytorch_ones_in_both_executors(rule):
    cfg = small_config(**CFG, fed_lr=0.02, fed_betas=(0.8, 0.95), fed_eps=0.01)
    setup, seq, bat = both_executions(cfg, f"fed{rule}")
    ref = reference_fedopt(setup, 3, 2, 0.05, adam_server(0.02, 0.8, 0.95, 0.01, rule))
    assert_same_model(final_model(setup, seq), ref, atol=ATOL)
    assert_same_model(final_model(setup, bat), ref, atol=ATOL)


def test_fedavgm_is_the_plain_pytorch_server_momentum():
    cfg = small_config(**CFG, fed_lr=0.7, fed_momentum=0.5)
    setup, seq, bat = both_executions(cfg, "fedavgm")
    ref = reference_fedopt(setup, 3, 2, 0.05, momentum_server(0.7, 0.5))
    assert_same_model(final_model(setup, seq), ref, atol=ATOL)
    assert_same_model(final_model(setup, bat), ref, atol=ATOL)
    _, fedavg, _, _ = train_one(small_config(**CFG), "fedavg")
    assert_different_model(final_model(setup, seq), final_model(setup, fedavg))


def test_fedavgm_without_momentum_at_rate_1_is_fedavg():
    cfg = small_config(local_iters=3, rounds=3, lr=0.05)
    setup, m, _, _ = train_one(cfg.replace(fed_momentum=0.0, fed_lr=1.0), "fedavgm")
    _, avg, _, _ = train_one(cfg, "fedavg")
    assert_same_model(final_model(setup, m), final_model(setup, avg), atol=1e-7)  # x + (mean − x) = mean
