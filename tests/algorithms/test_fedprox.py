"""FedProx against a plain-PyTorch FedProx, and its identities (μ = 0 is FedAvg; the term is a config of
any algorithm)."""

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
    train_one,
    weights_of,
)

ATOL = 1e-5  # several steps of a smooth model: rounding grows smoothly (tests/algorithms/test_execution.py)


def reference_fedprox(setup, rounds, tau, lr, mu):
    """Li et al.'s Algorithm 2 in plain PyTorch: each client minimises F_k(w) + μ/2 ‖w − w^t‖² with SGD."""
    streams, model, b = setup.context().streams, copy.deepcopy(setup.model), setup.cfg.batch_size
    for _ in range(rounds):
        anchor = [p.detach().clone() for p in model.parameters()]
        trained = []
        for n in range(setup.cfg.clients):
            local = copy.deepcopy(model).train()
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            for _ in range(tau):
                x, y = streams.batch(n, b)
                prox = sum(((p - a) ** 2).sum() for p, a in zip(local.parameters(), anchor))
                loss = torch.nn.functional.cross_entropy(local(x), y) + mu / 2 * prox
                opt.zero_grad()
                loss.backward()
                opt.step()
            trained.append(local.state_dict())
        model.load_state_dict(average(trained, weights_of(setup)))
    return model


def test_fedprox_is_the_plain_pytorch_fedprox_in_both_executors():
    cfg = small_config(model=SMOOTH_MODEL, local_iters=3, rounds=2, lr=0.05, prox_mu=5.0, divergence_every=0)
    setup, seq, bat = both_executions(cfg, "fedprox")
    ref = reference_fedprox(setup, 2, 3, 0.05, 5.0)
    assert_same_model(final_model(setup, seq), ref, atol=ATOL)
    assert_same_model(final_model(setup, bat), ref, atol=ATOL)
    _, fedavg, _, _ = train_one(cfg.replace(prox_mu=None), "fedavg")
    assert_different_model(final_model(setup, seq), final_model(setup, fedavg))  # the term acts


@pytest.mark.parametrize("execution", ["sequential", "batched"])
def test_fedprox_with_mu_0_is_fedavg_to_every_digit(execution):
    cfg = small_config(local_iters=3, rounds=2, lr=0.05, prox_mu=0.0, execution=execution)
    _, prox, prox_history, _ = train_one(cfg, "fedprox")
    _, avg, avg_history, _ = train_one(cfg.replace(prox_mu=None), "fedavg")
    for a, b in ((prox.w_c, avg.w_c), (prox.w_s, avg.w_s)):
        assert torch.equal(a.params, b.params) and torch.equal(a.buffers, b.buffers)
    assert [r["train_loss"] for r in prox_history] == [r["train_loss"] for r in avg_history]


def test_a_proximal_term_on_minibatch_sfl_is_a_config_and_acts_on_the_client_side_only():
    cfg = small_config(model=SMOOTH_MODEL, local_iters=3, rounds=1, lr=0.05, divergence_every=0)
    _, plain, _, _ = train_one(cfg, "minibatch_sfl")
    _, zero, _, _ = train_one(cfg.replace(prox_mu=0.0), "minibatch_sfl")
    _, prox, _, _ = train_one(cfg.replace(prox_mu=1.0), "minibatch_sfl")
    assert torch.equal(zero.w_c.params, plain.w_c.params) and torch.equal(zero.w_s.params, plain.w_s.params)
    # the term pulls the client side towards w_c^r: it moves less
    start = train_one(cfg.replace(rounds=1, local_iters=1, lr=1e-12), "minibatch_sfl")[1].w_c.params
    moved = lambda e: float((e.w_c.params - start).norm())
    assert moved(prox) < moved(plain)
