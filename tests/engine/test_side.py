import pytest
import torch
from torch import nn

from splitfed.engine.optim import Optimizer
from splitfed.engine.side import (
    Layout,
    Meter,
    Side,
    State,
    WeightedSum,
    joint_each,
    joint_step,
    weighted_average,
)


def SGD(lr, momentum=0.0, weight_decay=0.0):
    return Optimizer("sgd", lr, momentum, weight_decay=weight_decay)


def make_module():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.0, 1e-2)])
def test_side_sgd_matches_torch_optim_sgd(momentum, weight_decay):
    module = make_module()
    reference = make_module()
    side = Side(
        module,
        Layout(module).state_of(module, SGD(0.1, momentum)),
        2,
        SGD(0.1, momentum, weight_decay),
        "c",
        Meter(),
    )
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)
        side.train_step(1, x, y)
        opt.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
    expected = Layout(reference).state_of(reference)
    torch.testing.assert_close(side.state(1).params, expected.params, rtol=0, atol=1e-6)
    torch.testing.assert_close(side.state(1).buffers, expected.buffers, rtol=0, atol=1e-6)  # BN statistics
    assert torch.equal(side.state(0).params, Layout(module).state_of(make_module()).params)  # untouched
    assert side.steps == 4 and side.samples == 24


@pytest.mark.parametrize("vectorised", [False, True])
def test_all_copies_forward_then_backward_as_minibatch_sfl_does(vectorised):
    # Every client's forward comes before any backward: copies must not disturb each other.
    module = make_module()
    init = Layout(module).state_of(module, SGD(0.1, 0.9))
    side = Side(module, init, 3, SGD(0.1, 0.9), "c", Meter(), vectorised=vectorised)
    x = torch.randn(3, 5, 1, 8, 8)
    upstream = torch.randn(2, 3, 5, 3)  # the gradients "returned by the server", per step and copy
    for t in range(2):
        side.forward_each([0, 1, 2], list(x))
        side.backward_each([0, 1, 2], list(upstream[t]))
    # batched kernels sum in another order: float32 rounding on values of order 1
    tol = {"rtol": 1e-4, "atol": 1e-5} if vectorised else {"rtol": 0, "atol": 0}
    for k in range(3):  # each copy as if trained alone
        single = Side(module, init, 1, SGD(0.1, 0.9), "c", Meter())
        for t in range(2):
            single.forward(0, x[k])
            single.backward(0, upstream[t, k])
        torch.testing.assert_close(side.state(k).params, single.state(0).params, **tol)
        torch.testing.assert_close(side.state(k).buffers, single.state(0).buffers, **tol)
        torch.testing.assert_close(side.state(k).opt, single.state(0).opt, **tol)
    assert side.steps == 6 and side.samples == 30


# One step of a vectorised call against the loop: float32 rounding of one batched kernel, on weights and
# gradients of order 1, stays far below 1e-5 on any x86 CPU (see tests/algorithms/test_execution.py).
ONE_STEP = {"rtol": 1e-5, "atol": 1e-6}


def test_train_each_vectorised_is_each_copy_trained_alone():
    module = make_module()
    init = Layout(module).state_of(module, SGD(0.1, 0.9))
    g = torch.Generator().manual_seed(3)
    xs, ys = torch.randn(3, 6, 1, 8, 8, generator=g), torch.randint(0, 3, (3, 6), generator=g)
    meters = Meter(), Meter()
    sides = [
        Side(module, init, 3, SGD(0.1, 0.9), "s", m, vectorised=v) for m, v in zip(meters, (False, True))
    ]
    grads = [side.train_each([0, 1, 2], list(xs), list(ys)) for side in sides]
    for k in range(3):
        torch.testing.assert_close(grads[1][k], grads[0][k], **ONE_STEP)
        torch.testing.assert_close(sides[1].state(k).params, sides[0].state(k).params, **ONE_STEP)
        torch.testing.assert_close(sides[1].state(k).buffers, sides[0].state(k).buffers, **ONE_STEP)
    assert abs(meters[1].train_loss - meters[0].train_loss) < 1e-6
    assert sides[1].steps == sides[0].steps == 3 and sides[1].samples == sides[0].samples == 18


def test_joint_each_vectorised_is_each_copy_trained_alone():
    torch.manual_seed(0)
    client, server = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh()), nn.Sequential(nn.Linear(8, 3))
    init_c, init_s = (
        Layout(client).state_of(client, SGD(0.5, 0.9)),
        Layout(server).state_of(server, SGD(0.5, 0.9)),
    )
    xs, ys = torch.randn(4, 5, 1, 4, 4), torch.randint(0, 3, (4, 5))
    runs = []
    for vectorised in (False, True):
        meter = Meter()
        c = Side(client, init_c, 4, SGD(0.5, 0.9), "c", meter, vectorised=vectorised)
        s = Side(server, init_s, 4, SGD(0.5, 0.9), "s", meter, vectorised=vectorised)
        joint_each([c, s], [0, 1, 2, 3], list(xs), list(ys))
        runs.append((c, s, meter))
    (c0, s0, m0), (c1, s1, m1) = runs
    torch.testing.assert_close(c1.store.params, c0.store.params, **ONE_STEP)
    torch.testing.assert_close(s1.store.opt, s0.store.opt, **ONE_STEP)
    assert abs(m1.train_loss - m0.train_loss) < 1e-6


def test_a_copy_updated_under_a_pending_graph_is_an_error_not_silent():
    module = make_module()
    side = Side(module, Layout(module).state_of(module), 2, SGD(0.1), "c", Meter())
    x = torch.randn(2, 5, 1, 8, 8)
    z0, z1 = side.forward(0, x[0]), side.forward(1, x[1])
    side.backward(0, torch.ones_like(z0))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        side.backward(1, torch.ones_like(z1))


def test_joint_step_equals_split_step_with_gradient_passing():
    torch.manual_seed(0)
    client, server = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh()), nn.Sequential(nn.Linear(8, 3))
    init_c, init_s = Layout(client).state_of(client), Layout(server).state_of(server)
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    meter = Meter()
    jc, js = Side(client, init_c, 1, SGD(0.5), "c", meter), Side(server, init_s, 1, SGD(0.5), "s", meter)
    joint_step([jc, js], 0, x, y)
    sc, ss = Side(client, init_c, 1, SGD(0.5), "c", meter), Side(server, init_s, 1, SGD(0.5), "s", meter)
    smashed = sc.forward(0, x).requires_grad_()
    sc.backward(0, ss.train_step(0, smashed, y))
    torch.testing.assert_close(jc.state(0).params, sc.state(0).params)
    torch.testing.assert_close(js.state(0).params, ss.state(0).params)


def test_weighted_average_covers_params_buffers_and_optimizer_state():
    a = State(torch.tensor([1.0, 2.0]), torch.tensor([4.0]), torch.tensor([1.0, 1.0]))
    b = State(torch.tensor([3.0, 6.0]), torch.tensor([0.0]), torch.tensor([3.0, 5.0]))
    avg = weighted_average([a, b], [0.25, 0.75])
    assert (
        avg.params.tolist() == [2.5, 5.0] and avg.buffers.tolist() == [1.0] and avg.opt.tolist() == [2.5, 4.0]
    )
    acc = WeightedSum()
    acc.add(a, 0.5)
    acc.add(b, 0.5)
    assert acc.result.params.tolist() == [2.0, 4.0]
    assert a.params.tolist() == [1.0, 2.0]  # inputs untouched
    assert a.nbytes == 5 * 4
