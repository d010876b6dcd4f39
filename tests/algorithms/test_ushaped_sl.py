"""U-shaped split learning: the same arithmetic as split learning (SGD of the whole model over the
clients' batches in the round's order), with the labels never leaving the client."""

import pytest

from splitfed.errors import SplitfedError

from ..conftest import small_config
from .helpers import SMOOTH_MODEL, assert_same_model, both_executions, final_model, reference_sgd, train_one


def test_ushaped_sl_is_sgd_over_the_clients_batches_in_the_round_order_in_both_executors():
    cfg = small_config(model=SMOOTH_MODEL, local_iters=2, rounds=2, lr=0.05, divergence_every=0)
    setup, seq, bat = both_executions(cfg, "ushaped_sl")
    streams, ctx = setup.context().streams, setup.context()
    order = [n for r in (1, 2) for n in ctx.order(list(range(cfg.clients)), r)]
    ref = reference_sgd(setup, [streams.batch(n, cfg.batch_size) for n in order for _ in range(2)], lr=0.05)
    assert_same_model(final_model(setup, seq), ref, atol=1e-5)
    assert_same_model(final_model(setup, bat), ref, atol=1e-5)
    assert set(seq.model) == {"client", "server", "tail"}


def test_the_labels_stay_on_the_client_and_the_tail_is_the_models_last_block():
    cfg = small_config(local_iters=2, rounds=1)
    _setup, algo, history, _ = train_one(cfg, "ushaped_sl")
    sent = history[-1]["bytes"]
    assert "labels" not in sent and sent["features"] == sent["features_grad"] > 0
    assert algo.sides["tail"].location == "client" and algo.sides["server"].location == "main_server"
    with pytest.raises(SplitfedError, match="tail_cut .* must come after cut_layer"):
        train_one(cfg.replace(cut_layer=2, tail_cut=1), "ushaped_sl")
