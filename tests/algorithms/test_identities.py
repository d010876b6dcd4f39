"""The spec's algebraic identities: each pins down what an algorithm computes, to float tolerance."""

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from splitfed import MODELS, register_model

from ..conftest import small_config
from .helpers import (
    SMOOTH_MODEL,
    assert_different_model,
    assert_same_model,
    final_model,
    reference_sgd,
    train_one,
)

MODEL_CASES = [
    pytest.param("digits_cnn", {}, (1, 8, 8), id="digits_cnn"),
    pytest.param("cnn4", {}, (1, 28, 28), id="cnn4"),
    pytest.param("resnet18", {"norm": "group", "width": 4}, (3, 16, 16), id="resnet18-group"),
]


def union_batches(setup, rounds):
    """The batches each round's clients draw, concatenated per iteration (τ = 1)."""
    streams = setup.context().streams
    out = []
    for _ in range(rounds):
        pairs = [streams.batch(n, b) for n, b in enumerate(setup.batch_sizes())]
        out.append((torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])))
    return out


@pytest.mark.parametrize(("model", "args", "shape"), MODEL_CASES)
@pytest.mark.parametrize("cut", [1, 2])
def test_minibatch_sfl_with_tau_1_is_centralized_sgd_on_the_union_batch(model, args, shape, cut):
    cfg = small_config(
        model=model, model_args=args, synthetic_shape=shape, cut_layer=cut, local_iters=1, rounds=1, lr=0.1
    )
    setup, algo, _, _ = train_one(cfg, "minibatch_sfl")
    assert_same_model(final_model(setup, algo), reference_sgd(setup, union_batches(setup, 1), lr=0.1))


def test_the_identity_holds_over_rounds_with_momentum_and_weight_decay():
    # Momentum keeps the identity because the client-side momentum is averaged with the weights. Several
    # steps of batches of b against one of N·b: a smooth model, so that rounding cannot flip a max-pool.
    cfg = small_config(model=SMOOTH_MODEL, local_iters=1, rounds=3, lr=0.05, momentum=0.9, weight_decay=1e-3)
    setup, algo, _, _ = train_one(cfg, "minibatch_sfl")
    ref = reference_sgd(setup, union_batches(setup, 3), lr=0.05, momentum=0.9, weight_decay=1e-3)
    assert_same_model(final_model(setup, algo), ref)


def test_the_identity_needs_local_mean_scaling():
    cfg = small_config(local_iters=1, rounds=1, lr=0.1, client_grad_scale="global_mean")
    setup, algo, _, _ = train_one(cfg, "minibatch_sfl")
    assert_different_model(final_model(setup, algo), reference_sgd(setup, union_batches(setup, 1), lr=0.1))


if "test_server_bn" not in MODELS:

    @register_model("test_server_bn")
    def _server_bn(num_classes, in_shape):
        """Client: flatten + linear; server: BatchNorm over the smashed data, then a classifier."""
        c, h, w = in_shape
        return nn.Sequential(
            OrderedDict(
                client=nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16)),
                server=nn.Sequential(nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes)),
            )
        )


def test_server_side_batchnorm_normalises_over_the_giant_batch():
    cfg = small_config(model="test_server_bn", local_iters=1, rounds=1, lr=0.1)
    setup, algo, _, _ = train_one(cfg, "minibatch_sfl")
    # equal to the unsplit model whose BatchNorm sees the union batch: weights and running statistics
    assert_same_model(final_model(setup, algo), reference_sgd(setup, union_batches(setup, 1), lr=0.1))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sfl_v1_equals_fedavg_for_any_tau(momentum):
    cfg = small_config(local_iters=3, rounds=2, lr=0.05, momentum=momentum)
    setup, v1, _, _ = train_one(cfg, "sfl_v1")
    _, fl, _, _ = train_one(cfg, "fedavg")
    assert_same_model(final_model(setup, v1), final_model(setup, fl))


def test_with_one_client_every_split_algorithm_is_fedavg():
    cfg = small_config(clients=1, local_iters=3, rounds=2, lr=0.05)
    setup, fl, _, _ = train_one(cfg, "fedavg")
    expected = final_model(setup, fl)
    for name in ("minibatch_sfl", "sfl_v1", "sfl_v2", "sl"):
        _, algo, _, _ = train_one(cfg, name)
        assert_same_model(final_model(setup, algo), expected)
    _, algo, _, _ = train_one(cfg.replace(sflv2_schedule="interleaved"), "sfl_v2")
    assert_same_model(final_model(setup, algo), expected)


def test_one_client_fedavg_is_sgd_on_its_batches():
    cfg = small_config(clients=1, local_iters=4, rounds=1, lr=0.05)
    setup, fl, _, _ = train_one(cfg, "fedavg")
    streams = setup.context().streams
    batches = [streams.batch(0, cfg.batch_size) for _ in range(4)]
    assert_same_model(final_model(setup, fl), reference_sgd(setup, batches, lr=0.05))


def test_centralized_is_sgd_on_the_union_stream():
    cfg = small_config(local_iters=2, rounds=1, lr=0.05)
    setup, algo, _, _ = train_one(cfg, "centralized")
    streams = setup.context().streams
    batches = [streams.batch(cfg.clients, cfg.batch_size) for _ in range(2 * cfg.clients)]  # τ·N steps of b
    assert_same_model(final_model(setup, algo), reference_sgd(setup, batches, lr=0.05))


def test_sl_is_sgd_over_the_clients_batches_in_the_round_order():
    cfg = small_config(local_iters=2, rounds=1, lr=0.05)
    setup, algo, _, ctx = train_one(cfg, "sl")
    streams = setup.context().streams
    order = ctx.order(list(range(cfg.clients)), 1)
    batches = [streams.batch(n, cfg.batch_size) for n in order for _ in range(2)]
    assert_same_model(final_model(setup, algo), reference_sgd(setup, batches, lr=0.05))


def test_local_mean_is_global_mean_times_b_over_b_n():
    cfg = small_config(local_iters=1, rounds=1, lr=1.0)  # a large step: the update dwarfs float32 rounding
    setup, local, _, _ = train_one(cfg, "minibatch_sfl")
    _, glob, _, _ = train_one(cfg.replace(client_grad_scale="global_mean"), "minibatch_sfl")
    ratio = sum(setup.batch_sizes()) / cfg.batch_size  # B / b_n = N with equal batches
    d_local = local.w_c.params - setup.init_c.params
    d_global = glob.w_c.params - setup.init_c.params
    # float32 weights differ from w^0 by tiny updates: tolerance relative to the update's scale
    torch.testing.assert_close(d_local, ratio * d_global, rtol=1e-4, atol=1e-4 * float(d_local.abs().max()))
    assert float(d_global.abs().max()) > 0
    torch.testing.assert_close(local.w_s.params, glob.w_s.params)  # the server step does not change


@pytest.mark.parametrize(
    ("name", "schedule", "steps_per_round"),
    [
        ("minibatch_sfl", None, lambda tau, m: tau),  # one step per iteration on the giant batch
        ("sfl_v1", None, lambda tau, m: tau * m),  # τ on each of m server copies
        ("sfl_v2", "client_sequential", lambda tau, m: tau * m),  # one per client batch
        ("sfl_v2", "interleaved", lambda tau, m: tau * m),
        ("sl", None, lambda tau, m: tau * m),
        ("fedavg", None, lambda tau, m: tau * m),
        ("centralized", None, lambda tau, m: tau * m),
    ],
)
def test_server_side_steps_per_round(name, schedule, steps_per_round):
    cfg = small_config(local_iters=3, rounds=2, clients=5, clients_per_round=4, divergence_every=0)
    if schedule:
        cfg = cfg.replace(sflv2_schedule=schedule)
    _, _, history, _ = train_one(cfg, name)
    assert [r["server_steps"] for r in history] == [steps_per_round(3, 4)] * 2
    assert all(r["participants"] == 4 for r in history)


def reference_training(setup, rounds, make_opt, make_schedule=None, clip=None):
    """A torch.optim optimizer (and lr_scheduler, stepped once per round) on the unsplit initial model, one
    step per (x, y) of each round's batches; ``clip``: clip_grad_norm_ over the whole model."""
    model = copy.deepcopy(setup.model).train()
    opt = make_opt(model.parameters())
    schedule = make_schedule(opt) if make_schedule else None
    for batches in rounds:
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        if schedule is not None:
            schedule.step()
    return model


def test_the_identity_holds_with_a_learning_rate_schedule():
    # MiniBatch-SFL with τ = 1 is SGD on the union batch; with a schedule, SGD at torch's rate of each round.
    cfg = small_config(
        model=SMOOTH_MODEL,
        local_iters=1,
        rounds=3,
        lr=0.1,
        momentum=0.5,
        lr_schedule="exponential",
        lr_gamma=0.5,
    )
    setup, algo, _, _ = train_one(cfg, "minibatch_sfl")
    ref = reference_training(
        setup,
        [[b] for b in union_batches(setup, 3)],
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5),
        lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.5),
    )
    assert_same_model(final_model(setup, algo), ref)
    unscheduled = train_one(cfg.replace(lr_schedule="none", lr_gamma=None), "minibatch_sfl")[1]
    assert_different_model(final_model(setup, unscheduled), ref)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_sfl_v1_equals_fedavg_with_adam(optimizer):
    # Both average every per-client copy's weights and Adam state each round, so they stay equal.
    cfg = small_config(model=SMOOTH_MODEL, local_iters=3, rounds=2, optimizer=optimizer, weight_decay=0.1)
    setup, v1, _, _ = train_one(cfg, "sfl_v1")
    _, fl, _, _ = train_one(cfg, "fedavg")
    assert_same_model(final_model(setup, v1), final_model(setup, fl), atol=1e-5)
    torch.testing.assert_close(v1.w_c.opt, fl.w_c.opt, rtol=1e-4, atol=1e-6)
    assert v1.w_c.opt[-1].item() == pytest.approx(6)  # Adam's step: 3 per round, averaged over equal steps


def test_one_client_fedavg_is_torch_adam_with_whole_model_clipping_across_rounds():
    # One client: averaging is the identity, so the Adam state carries over the rounds as in one optimizer.
    cfg = small_config(
        model=SMOOTH_MODEL, clients=1, local_iters=3, rounds=2, optimizer="adam", clip_grad_norm=0.05
    )
    setup, fl, _, _ = train_one(cfg, "fedavg")
    streams = setup.context().streams
    rounds = [[streams.batch(0, cfg.batch_size) for _ in range(3)] for _ in range(2)]
    ref = reference_training(setup, rounds, lambda ps: torch.optim.Adam(ps, lr=cfg.lr), clip=0.05)
    assert_same_model(final_model(setup, fl), ref, atol=1e-5)
    unclipped = train_one(cfg.replace(clip_grad_norm=None), "fedavg")[1]
    assert_different_model(final_model(setup, unclipped), ref)
