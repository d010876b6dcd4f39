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
