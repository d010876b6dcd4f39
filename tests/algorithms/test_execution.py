"""Every executor runs every algorithm's one definition to the same result.

Tolerances: the batched executor runs independent clients as one vectorised computation whose kernels sum
in another order, so it agrees with the sequential one up to float32 rounding, and how that rounding falls
depends on the CPU (AVX2 and AVX-512 kernels differ in their last bits). What holds on any x86 CPU:
- after ONE step the two agree to a few ulps of values of order 1 (measured ≤ 1.2e-7 here): rtol 1e-5,
  atol 1e-6, for the real models (cnn4, a BatchNorm ResNet);
- over several steps, only a model without kinks (``SMOOTH_MODEL``: tanh, average pooling) keeps the
  difference growing smoothly (measured ≤ 6e-8 after 6 steps at lr 0.05): atol 1e-5. With ReLU and max-pool
  a last-bit difference can flip a max-pool's choice and part the runs by lr × a gradient in one step
  (4e-8 to 2e-4 within one round of cnn4); BatchNorm on batches of 8 amplifies rounding chaotically (2e-2
  after 6 steps on one CPU).
Where nothing is vectorised (one client batch per slot; unequal batches) the arithmetic is the same and
the results are bitwise equal.
"""

import pytest
import torch

from splitfed.algorithms import ALGORITHMS
from splitfed.algorithms.base import LOCKSTEP
from splitfed.config import ALL_ALGORITHMS

from ..conftest import small_config
from .helpers import EVERY_HOOK, SMOOTH_MODEL, TEST_ALGORITHM, assert_same_model, final_model, train_one

NEW = ("fedprox", "scaffold", "fedavgm", "fedadam", "fedbn", "ushaped_sl", "sfl_local_loss", EVERY_HOOK)
ONE_STEP = {"rtol": 1e-5, "atol": 1e-6}
FEW_STEPS = {"rtol": 1e-4, "atol": 1e-5}
# a momentum buffer after one step is the raw gradient, whose elements that sum terms of both signs (a
# BatchNorm weight's gradient over the batch) carry rounding errors the size of their terms, not of
# themselves: on an AVX2-only CPU one element of 2,852 of ResNet-18's differed by 1.3e-6 (6e-5 relative)
# between batched and one-client-at-a-time convolutions. The parameters, the gradient times lr, still
# meet ONE_STEP; a wrong client weight or a missing client moves gradients by ~1e-2
ONE_STEP_GRADIENTS = {"rtol": 1e-5, "atol": 1e-5}

CONFIGS = {
    "plain": {},
    "momentum": {"momentum": 0.9, "weight_decay": 1e-3},
    "unequal-shards": {"partition": "dirichlet", "dirichlet_alpha": 0.3},
    "partial": {"clients": 5, "clients_per_round": 3},
    "bf16-wire": {"wire_dtype": "bfloat16"},
    "interleaved": {"sflv2_schedule": "interleaved"},
}


def both_executions(cfg, name):
    setup, seq, seq_history, _ = train_one(cfg.replace(execution="sequential"), name)
    _, bat, bat_history, _ = train_one(cfg.replace(execution="batched"), name)
    return setup, (seq, seq_history), (bat, bat_history)


def assert_same_counts(a_history, b_history):
    for a, b in zip(a_history, b_history, strict=True):
        for key in (
            "server_steps",
            "samples",
            "client_bytes_up",
            "client_bytes_down",
            "bytes",
            "participants",
        ):
            assert a[key] == b[key], key


CASES = [(name, config) for name in ALL_ALGORITHMS for config in CONFIGS]
# the newer algorithms where their parts and state make a difference: momentum averaged with them,
# clients that skip rounds (their own state waits), unequal shards (unequal weights)
CASES += [(name, config) for name in NEW for config in ("momentum", "partial", "unequal-shards")]


@pytest.mark.parametrize(("name", "config"), CASES)
def test_batched_equals_sequential_over_several_steps(name, config):
    cfg = small_config(
        model=SMOOTH_MODEL, local_iters=3, rounds=2, lr=0.05, divergence_every=0, **CONFIGS[config]
    )
    setup, (seq, seq_history), (bat, bat_history) = both_executions(cfg, name)
    assert_same_counts(seq_history, bat_history)
    if ALGORITHMS.get(name)(cfg).schedule != LOCKSTEP or name == "centralized":
        # one client batch per slot: nothing to vectorise, the same arithmetic
        assert torch.equal(bat.w_c.params, seq.w_c.params) and torch.equal(bat.w_s.params, seq.w_s.params)
    assert_same_model(final_model(setup, bat), final_model(setup, seq), atol=FEW_STEPS["atol"])
    for a, b in zip(seq_history, bat_history, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5


REAL_MODELS = {
    "resnet18-batchnorm": {
        "model": "resnet18",
        "model_args": {"width": 4, "norm": "batch"},
        "synthetic_shape": (3, 16, 16),
    },
    "cnn4": {"model": "cnn4", "synthetic_shape": (1, 28, 28)},
}


@pytest.mark.parametrize("model", REAL_MODELS)
@pytest.mark.parametrize("name", ["minibatch_sfl", "sfl_v1", "fedavg"])
def test_batched_equals_sequential_after_one_step_of_a_real_model(name, model):
    cfg = small_config(
        local_iters=1, rounds=1, lr=0.05, momentum=0.9, divergence_every=0, **REAL_MODELS[model]
    )
    _, (seq, _), (bat, _) = both_executions(cfg, name)
    for a, b in ((bat.w_c, seq.w_c), (bat.w_s, seq.w_s)):
        torch.testing.assert_close(a.params, b.params, **ONE_STEP)
        torch.testing.assert_close(a.buffers, b.buffers, **ONE_STEP)  # BatchNorm running statistics
        torch.testing.assert_close(a.opt, b.opt, **ONE_STEP_GRADIENTS)


@pytest.mark.parametrize("name", ["minibatch_sfl", "sfl_v1", "fedavg"])
def test_unequal_batches_run_unvectorised_and_equal(name):
    cfg = small_config(
        local_iters=2, rounds=2, partition="dirichlet", dirichlet_alpha=0.3, batch_alloc="proportional"
    )
    _, (seq, _), (bat, _) = both_executions(cfg, name)
    assert len({len(p) for p in train_one(cfg, name)[0].parts}) > 1
    assert torch.equal(bat.w_c.params, seq.w_c.params) and torch.equal(bat.w_s.params, seq.w_s.params)


@pytest.mark.parametrize("wire_dtype", ["float16", "bfloat16"])
def test_compressed_smashed_data_is_counted_at_its_size_and_changes_the_numbers_a_little(wire_dtype):
    cfg = small_config(local_iters=2, rounds=1, lr=0.05, divergence_every=0)
    setup, full, full_history, _ = train_one(cfg, "minibatch_sfl")
    _, half, half_history, _ = train_one(cfg.replace(wire_dtype=wire_dtype), "minibatch_sfl")
    b_full, b_half = full_history[0]["bytes"], half_history[0]["bytes"]
    assert b_half["smashed"] * 2 == b_full["smashed"] and b_half["smashed_grad"] * 2 == b_full["smashed_grad"]
    assert b_half["labels"] == b_full["labels"] and b_half["client_weights"] == b_full["client_weights"]
    assert_same_model(final_model(setup, half), final_model(setup, full), atol=5e-3)  # close, not equal
    diff = (half.w_c.params - full.w_c.params).abs().max()
    assert diff > 0


def test_an_algorithm_defined_in_the_tests_runs_in_every_in_process_executor():
    cfg = small_config(
        algorithm=(TEST_ALGORITHM,), model=SMOOTH_MODEL, local_iters=3, rounds=2, lr=0.05, divergence_every=0
    )
    setup, (seq, seq_history), (bat, bat_history) = both_executions(cfg, TEST_ALGORITHM)
    assert [r["server_steps"] for r in seq_history] == [2 * 3, 2 * 3]  # its main_server ran, as written
    assert_same_counts(seq_history, bat_history)
    assert_same_model(final_model(setup, bat), final_model(setup, seq), atol=FEW_STEPS["atol"])
    _, mb, _, _ = train_one(cfg, "minibatch_sfl")
    assert not torch.allclose(mb.w_s.params, seq.w_s.params)  # and it is not MiniBatch-SFL
