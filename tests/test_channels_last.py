"""``channels_last``: convolutions in channels-last memory order compute what the default order computes (to
float rounding), change nothing of a run's identity, and resume bit for bit."""

import json

import pytest
import torch
from torch import nn

from splitfed import run
from splitfed.bench_plain import PlainTorch
from splitfed.engine.metrics import SplitModel
from splitfed.engine.optim import Optimizer
from splitfed.engine.side import Layout, Meter, Side
from splitfed.setup import prepare

from .conftest import small_config

LAST = torch.channels_last


def client_module():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))


def server_module():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def sides(channels_last, vectorised=False):
    made = []
    for module in (client_module(), server_module()):
        opt = Optimizer("sgd", 0.1, 0.9)
        init = Layout(module).state_of(module, opt)
        made.append(Side(module, init, 2, opt, "c", Meter(), vectorised, channels_last=channels_last))
    return made


def batch(seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g)


def split_step(client, server, k, x, y):
    """One split step of copy k: the smashed data, the gradient back at the cut."""
    smashed = client.forward(k, x)
    grad = server.train_step(k, smashed.requires_grad_(), y)
    client.backward(k, grad)
    return smashed, grad


def test_a_split_step_in_channels_last_order_is_the_default_step_to_float_rounding():
    x, y = batch()
    (c0, s0), (c1, s1) = sides(False), sides(True)
    smashed0, grad0 = split_step(c0, s0, 1, x, y)
    smashed1, grad1 = split_step(c1, s1, 1, x, y)
    # the order is real: the smashed data leave the client side in channels-last memory order, and only then
    assert smashed1.is_contiguous(memory_format=LAST) and not smashed1.is_contiguous()
    assert smashed0.is_contiguous() and not smashed0.is_contiguous(memory_format=LAST)
    torch.testing.assert_close(smashed1, smashed0, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad1, grad0, rtol=0, atol=1e-6)
    for a, b in ((c0, c1), (s0, s1)):
        # the flat state keeps its one order: a party in either order reads the other's state
        torch.testing.assert_close(b.state(1).params, a.state(1).params, rtol=0, atol=1e-6)
        torch.testing.assert_close(b.state(1).buffers, a.state(1).buffers, rtol=0, atol=1e-6)
        torch.testing.assert_close(b.state(1).opt, a.state(1).opt, rtol=0, atol=1e-6)
        assert torch.equal(b.state(0).params, a.state(0).params)  # copy 0 untouched in both


def test_a_vectorised_call_runs_in_the_default_order_and_trains_each_copy_as_alone():
    # torch.func.vmap cannot carry a memory format (asking for one inside it raises): the vectorised path
    # runs as it did, copy for copy
    xs, ys = zip(*(batch(seed) for seed in (3, 4)), strict=True)
    (c_all, s_all), (c_one, s_one) = sides(True, vectorised=True), sides(True)
    smashed = c_all.forward_each([0, 1], list(xs))
    grads = s_all.train_each([0, 1], [s.requires_grad_() for s in smashed], list(ys))
    c_all.backward_each([0, 1], grads)
    for k in (0, 1):
        split_step(c_one, s_one, k, xs[k], ys[k])
        torch.testing.assert_close(c_all.state(k).params, c_one.state(k).params, rtol=0, atol=1e-5)
        torch.testing.assert_close(s_all.state(k).params, s_one.state(k).params, rtol=0, atol=1e-5)


def test_evaluation_and_the_divergence_gradients_in_channels_last_order_match_the_default():
    client, server = client_module(), server_module()
    w_c, w_s = Layout(client).state_of(client), Layout(server).state_of(server)
    x, y = torch.randn(40, 3, 8, 8), torch.randint(0, 5, (40,))
    plain, last = SplitModel(client, server), SplitModel(client, server, channels_last=True)
    seen = []  # the order the server side's convolution is given its input in
    server[0].register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=LAST)))
    acc0, loss0, per_class0 = plain.evaluate(w_c, w_s, x, y)
    assert seen == [False]
    acc1, loss1, per_class1 = last.evaluate(w_c, w_s, x, y)
    assert seen == [False, True]
    assert (acc1, per_class1) == (acc0, per_class0) and loss1 == pytest.approx(loss0, abs=1e-6)
    for g0, g1 in zip(plain.gradients(w_c, w_s, x, y), last.gradients(w_c, w_s, x, y), strict=True):
        torch.testing.assert_close(g1, g0, rtol=0, atol=1e-6)


def metrics(path):
    lines = (path / "metrics.jsonl").read_text().splitlines()
    drop = {"train_time_s", "round_time_s", "wall_time_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def test_a_channels_last_run_is_the_same_run_to_float_rounding_and_resumes_bit_for_bit(tmp_path):
    cfg = small_config(algorithm=("minibatch_sfl", "sfl_v2"), rounds=3, channels_last=True)
    whole = run(cfg.replace(out=str(tmp_path / "whole")))
    run(cfg.replace(out=str(tmp_path / "cut"), rounds=1))
    run(cfg.replace(out=str(tmp_path / "cut"), resume=True))
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")
    plain = run(cfg.replace(out=str(tmp_path / "plain"), channels_last=False))
    # a machine setting, as a thread count is: the run's identity (its name in a sweep) is the same
    assert whole.config.run_identity() == plain.config.run_identity()
    assert whole.config.channels_last and not plain.config.channels_last
    # six steps at lr 0.01: the orders differ in the last bits, so the losses agree far inside 1e-4, and a
    # test sample whose two logits nearly tie may flip (0.02 is four of the 200 test samples)
    for a, b in zip(whole.history, plain.history, strict=True):
        assert (a["algorithm"], a["round"]) == (b["algorithm"], b["round"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.02)


def test_the_benchmark_floor_runs_in_the_order_it_is_compared_in():
    setup = prepare(small_config(channels_last=True))
    floor = PlainTorch(setup, setup.context(), giant=True)
    # (with one input channel both orders are the same layout: a convolution with more tells them apart)
    conv = next(m for m in floor.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=LAST) and not conv.weight.is_contiguous()
    floor.run_round(1, setup.participants(1))
    assert conv.weight.grad.is_contiguous(memory_format=LAST)  # trained in that order
