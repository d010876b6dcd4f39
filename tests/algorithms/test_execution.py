"""The vectorised (vmap) and loop executions of the lockstep clients train the same models."""

import pytest

from splitfed import SplitfedError

from ..conftest import small_config
from .helpers import assert_same_model, final_model, train_one


@pytest.mark.parametrize(
    ("model", "args", "shape"),
    [("cnn4", {}, (1, 28, 28)), ("resnet18", {"width": 4, "norm": "batch"}, (3, 16, 16))],
)
def test_minibatch_sfl_vmap_equals_loop(model, args, shape):
    cfg = small_config(
        model=model, model_args=args, synthetic_shape=shape, local_iters=3, rounds=2, lr=0.05, momentum=0.9
    )
    setup, loop, loop_history, _ = train_one(cfg, "minibatch_sfl")
    _, vmap, vmap_history, _ = train_one(cfg.replace(execution="vmap"), "minibatch_sfl")
    assert_same_model(final_model(setup, vmap), final_model(setup, loop), atol=1e-4)
    for a, b in zip(loop_history, vmap_history):
        assert a["server_steps"] == b["server_steps"] and a["samples"] == b["samples"]
        assert a["client_bytes_up"] == b["client_bytes_up"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4


def test_vmap_needs_equal_batches():
    with pytest.raises(SplitfedError, match="execution=vmap .* needs equal batches"):
        small_config(execution="vmap", batch_alloc="proportional")


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
