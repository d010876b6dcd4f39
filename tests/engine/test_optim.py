"""A side's optimizer, schedule, clipping, precision and loss against torch's own, copy by copy.

Tolerances as in tests/algorithms/test_execution.py: the loop path runs torch's own kernels on a flat vector
instead of per-tensor ones (element-wise, the same up to the last bit); the vectorised path's batched
forward and backward sum in another order. One step: rtol 1e-5, atol 1e-6; several steps on a model
without kinks (tanh): atol 1e-5.
"""

import copy
import functools
import importlib
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitfed import Config
from splitfed.engine.optim import LRSchedule, Optimizer, clip_grad_norm_
from splitfed.engine.side import Layout, Meter, Side, State, WeightedSum, joint_each
from splitfed.errors import SplitfedError

ONE_STEP = {"rtol": 1e-5, "atol": 1e-6}
FEW_STEPS = {"rtol": 1e-4, "atol": 1e-5}
K = 3


def smooth_module(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def batches(steps, seed=1, k=K, b=6):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(k, b, 1, 4, 4, generator=g), torch.randint(0, 3, (k, b), generator=g))
        for _ in range(steps)
    ]


TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# (our Optimizer's fields, torch.optim's keyword arguments)
OPTIMIZERS = {
    "adam": ({"name": "adam", "lr": 0.01}, {"lr": 0.01}),
    "adam-l2-amsgrad": (
        {"name": "adam", "lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "betas": (0.8, 0.99), "eps": 1e-6},
        {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "betas": (0.8, 0.99), "eps": 1e-6},
    ),
    "adamw": ({"name": "adamw", "lr": 0.01, "weight_decay": 0.1}, {"lr": 0.01, "weight_decay": 0.1}),
    "sgd-nesterov": (
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    ),
    "sgd-dampening": (
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "dampening": 0.5, "weight_decay": 1e-2},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "weight_decay": 1e-2},
    ),
}


def torch_state(opt: torch.optim.Optimizer, module: nn.Module, slot: str) -> torch.Tensor:
    return flat(opt.state[p][slot] for p in module.parameters())


def compare_with_torch(ours: dict, theirs: dict, vectorised: bool, steps: int, tol: dict, graph_safe=False):
    module = smooth_module()
    opt = Optimizer(**ours)
    side = Side(module, Layout(module).state_of(module, opt), K, opt, "s", Meter(), vectorised=vectorised)
    side.graph_safe = graph_safe
    refs = [copy.deepcopy(module) for _ in range(K)]
    torch_opts = [TORCH[opt.name](m.parameters(), **theirs) for m in refs]
    for xs, ys in batches(steps):
        side.train_each(list(range(K)), list(xs), list(ys))
        for m, o, x, y in zip(refs, torch_opts, xs, ys):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    for k in range(K):  # each copy is its own optimizer, state included
        torch.testing.assert_close(side.state(k).params, flat(refs[k].parameters()), **tol)
        num = side.layout.num_params
        for i, slot in enumerate(opt.slots):
            expected = torch_state(torch_opts[k], refs[k], slot)
            torch.testing.assert_close(side.state(k).opt[i * num : (i + 1) * num], expected, **tol)
        if opt.name != "sgd":
            assert side.state(k).opt[-1].item() == steps  # Adam's step counter
    assert not torch.equal(side.state(0).params, side.state(1).params)  # the copies saw different data
    return side


@pytest.mark.parametrize("vectorised", [False, True], ids=["loop", "vectorised"])
@pytest.mark.parametrize("config", OPTIMIZERS)
def test_each_copy_steps_as_its_own_torch_optimizer(config, vectorised):
    ours, theirs = OPTIMIZERS[config]
    compare_with_torch(ours, theirs, vectorised, steps=1, tol=ONE_STEP)
    compare_with_torch(ours, theirs, vectorised, steps=6, tol=FEW_STEPS)


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """Let torch's capturable Adam run on the CPU, so that the CUDA kernels' arithmetic is tested here."""
    for mod in map(importlib.import_module, ("torch.optim.adam", "torch.optim.adamw")):
        if hasattr(mod, "_get_capturable_supported_devices"):
            monkeypatch.setattr(mod, "_get_capturable_supported_devices", lambda supports_xla=True: ["cpu"])


@pytest.mark.parametrize("vectorised", [False, True], ids=["loop", "vectorised"])
@pytest.mark.parametrize("config", ["adam-l2-amsgrad", "adamw", "sgd-nesterov", "sgd-dampening"])
def test_the_graph_safe_kernels_step_as_torch_too(config, vectorised, capturable_on_cpu):
    # What runs on CUDA: fused SGD and capturable foreach Adam, the rate a tensor, all copies at once.
    ours, theirs = OPTIMIZERS[config]
    compare_with_torch(ours, theirs, vectorised, steps=6, tol=FEW_STEPS, graph_safe=True)


@pytest.mark.parametrize("graph_safe", [False, True], ids=["number", "tensor"])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_set_lr_changes_the_rate_of_the_next_steps(name, graph_safe, capturable_on_cpu):
    module = smooth_module()
    opt = Optimizer(name, 0.1, momentum=0.5 if name == "sgd" else 0.0)
    (x, y), (x2, y2) = batches(2, k=1)
    sides = []
    for lr in (0.1, 0.03):
        side = Side(module, Layout(module).state_of(module, opt), 1, opt, "s", Meter())
        side.graph_safe = graph_safe
        side.train_step(0, x[0], y[0])
        side.set_lr(lr)
        side.train_step(0, x2[0], y2[0])
        sides.append(side)
    ref = copy.deepcopy(module)
    torch_opt = TORCH[name](ref.parameters(), lr=0.1, **({"momentum": 0.5} if name == "sgd" else {}))
    for xb, yb, lr in ((x[0], y[0], 0.1), (x2[0], y2[0], 0.03)):
        torch_opt.param_groups[0]["lr"] = lr
        torch_opt.zero_grad()
        F.cross_entropy(ref(xb), yb).backward()
        torch_opt.step()
    # the capturable Adam computes its bias corrections in float32 (1 - 0.999 loses digits): looser
    torch.testing.assert_close(sides[1].state(0).params, flat(ref.parameters()), **FEW_STEPS)
    assert not torch.allclose(sides[0].state(0).params, sides[1].state(0).params)


@pytest.mark.parametrize(
    "fields",
    [
        {"lr_schedule": "step", "lr_step_size": 3},
        {"lr_schedule": "step", "lr_step_size": 2, "lr_gamma": 0.5},
        {"lr_schedule": "exponential", "lr_gamma": 0.7},
        {"lr_schedule": "cosine"},
        {"lr_schedule": "cosine", "lr_min": 0.001, "lr_cosine_rounds": 4},
        {"lr_schedule": "none"},
    ],
)
def test_the_rate_of_each_round_is_torch_lr_scheduler_s(fields):
    cfg = Config(rounds=10, **fields)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05)
    kind = fields["lr_schedule"]
    sched = {
        "step": lambda: torch.optim.lr_scheduler.StepLR(
            opt, fields["lr_step_size"], fields.get("lr_gamma", 0.1)
        ),
        "exponential": lambda: torch.optim.lr_scheduler.ExponentialLR(opt, fields["lr_gamma"]),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, fields.get("lr_cosine_rounds", 10), fields.get("lr_min", 0.0)
        ),
        "none": lambda: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0),
    }[kind]()
    expected = []
    for _ in range(12):  # past `rounds`: a run extended on resume goes on with torch's sequence
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    schedule = LRSchedule(cfg, 0.05)
    assert [schedule(r) for r in range(1, 13)] == expected
    assert LRSchedule(cfg, 0.05)(7) == expected[6]  # a round's rate does not depend on the calls before it
    assert len(set(expected)) > 1 or kind == "none"


def test_context_sets_every_side_s_rate_for_the_round():
    from splitfed.setup import prepare

    from ..conftest import small_config

    cfg = small_config(lr=0.1, client_lr=0.2, lr_schedule="step", lr_step_size=1, lr_gamma=0.5)
    ctx = prepare(cfg).context()
    client, server = ctx.side("client", 2, "client"), ctx.side("server", 1, "main_server")
    ctx.set_round(3)
    assert client.lr_value == pytest.approx(0.05) and server.lr_value == pytest.approx(0.025)
    assert client.lr.item() == pytest.approx(0.05) and server.lr.item() == pytest.approx(0.025)
    ctx.set_round(1)
    assert client.lr_value == 0.2 and server.lr_value == 0.1


# --- clipping ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vectorised", [False, True], ids=["loop", "vectorised"])
def test_clipping_is_clip_grad_norm_per_copy(vectorised):
    module = smooth_module()
    ((xs, ys),) = batches(1)
    xs = xs * torch.tensor([0.1, 1.0, 10.0]).view(K, 1, 1, 1, 1)
    refs = [copy.deepcopy(module) for _ in range(K)]
    for ref, x, y in zip(refs, xs, ys):
        F.cross_entropy(ref(x), y).backward()
    norms = [torch.nn.utils.clip_grad_norm_(ref.parameters(), float("inf")).item() for ref in refs]
    max_norm = sorted(norms)[1] * 1.001  # one copy above the bound, two below
    opt = Optimizer("sgd", 0.5, clip_grad_norm=max_norm)
    init = Layout(module).state_of(module, opt)
    side = Side(module, init, K, opt, "s", Meter(), vectorised=vectorised)
    side.train_each(list(range(K)), list(xs), list(ys))
    for k, ref in enumerate(refs):
        torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
        torch.optim.SGD(ref.parameters(), lr=0.5).step()
        torch.testing.assert_close(side.state(k).params, flat(ref.parameters()), **ONE_STEP)
    plain = replace(opt, clip_grad_norm=None)
    unclipped = Side(module, init, K, plain, "s", Meter(), vectorised=vectorised)
    unclipped.train_each(list(range(K)), list(xs), list(ys))
    changed = [not torch.equal(unclipped.state(k).params, side.state(k).params) for k in range(K)]
    assert sum(changed) == 1


def test_the_unsplit_step_clips_the_whole_model():
    torch.manual_seed(0)
    client, server = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh()), nn.Sequential(nn.Linear(8, 3))
    opt = Optimizer("sgd", 0.5, clip_grad_norm=0.2)
    ((xs, ys),) = batches(1, k=2)
    meter = Meter()
    c = Side(client, Layout(client).state_of(client, opt), 2, opt, "c", meter)
    s = Side(server, Layout(server).state_of(server, opt), 2, opt, "s", meter)
    joint_each([c, s], [0, 1], list(xs), list(ys))
    ref = copy.deepcopy(nn.Sequential(client, server))
    F.cross_entropy(ref(xs[1]), ys[1]).backward()
    assert torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.2) > 0.2
    torch.optim.SGD(ref.parameters(), lr=0.5).step()
    torch.testing.assert_close(c.state(1).params, flat(ref[0].parameters()), **ONE_STEP)
    torch.testing.assert_close(s.state(1).params, flat(ref[1].parameters()), **ONE_STEP)


def test_clip_grad_norm_takes_each_copy_s_norm_over_all_its_pieces():
    a, b = torch.tensor([[0.3], [3.0]]), torch.tensor([[0.4], [4.0]])  # copy 0: norm 0.5; copy 1: norm 5
    clip_grad_norm_([a, b], 1.0)
    torch.testing.assert_close(
        torch.cat([a, b], 1), torch.tensor([[0.3, 0.4], [0.6, 0.8]]), rtol=1e-5, atol=1e-6
    )


# --- mixed precision --------------------------------------------------------------------------------------
def conv_module():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)
    )


@pytest.mark.parametrize("vectorised", [False, True], ids=["loop", "vectorised"])
def test_bf16_trains_close_to_fp32_with_fp32_master_weights(vectorised):
    module = conv_module()
    opt = Optimizer("sgd", 0.2, momentum=0.5)  # Adam would magnify rounding on its near-zero gradients
    init = Layout(module).state_of(module, opt)
    sides = {
        p: Side(module, init, K, opt, "s", Meter(), vectorised=vectorised, precision=p)
        for p in ("fp32", "bf16")
    }
    for xs, ys in batches(5):
        for side in sides.values():
            grads = side.train_each(list(range(K)), list(xs), list(ys))
            assert all(g.dtype == torch.float32 for g in grads)
    bf16, fp32 = sides["bf16"], sides["fp32"]
    assert all(t.dtype == torch.float32 for t in bf16.store.to_dict().values())
    moved = (fp32.store.params - init.params).abs().max()
    diff = (bf16.store.params - fp32.store.params).abs().max()
    assert 0 < diff < 0.1 * moved  # autocast was on, and it stayed close: bf16 keeps ~3 digits
    assert bf16.meter.train_loss == pytest.approx(fp32.meter.train_loss, rel=2e-2)


def test_bf16_smashed_data_and_their_gradients_travel_as_float32():
    module = conv_module()
    opt = Optimizer("sgd", 0.1)
    side = Side(module, Layout(module).state_of(module, opt), 1, opt, "c", Meter(), precision="bf16")
    z = side.forward(0, torch.randn(4, 1, 4, 4))
    assert z.dtype == torch.float32
    side.backward(0, torch.ones_like(z))
    assert side.state(0).params.dtype == torch.float32


# --- a user's loss ----------------------------------------------------------------------------------------
def one_hot_mse(out, y):
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).float())


LOSSES = {
    "label-smoothing": functools.partial(F.cross_entropy, label_smoothing=0.2),
    "one-hot-mse": one_hot_mse,
}


@pytest.mark.parametrize("vectorised", [False, True], ids=["loop", "vectorised"])
@pytest.mark.parametrize("loss", LOSSES)
def test_a_user_loss_is_the_one_trained_on(loss, vectorised):
    loss_fn = LOSSES[loss]
    module = smooth_module()
    opt = Optimizer("sgd", 0.5)
    init = Layout(module).state_of(module, opt)
    meters = {name: Meter() for name in ("user", "default")}
    user = Side(module, init, K, opt, "s", meters["user"], vectorised=vectorised, loss=loss_fn)
    default = Side(module, init, K, opt, "s", meters["default"], vectorised=vectorised)
    ((xs, ys),) = batches(1)
    for side in (user, default):
        side.train_each(list(range(K)), list(xs), list(ys))
    for k in range(K):
        ref = copy.deepcopy(module)
        value = loss_fn(ref(xs[k]), ys[k])
        value.backward()
        torch.optim.SGD(ref.parameters(), lr=0.5).step()
        torch.testing.assert_close(user.state(k).params, flat(ref.parameters()), **ONE_STEP)
    assert not torch.allclose(user.state(0).params, default.state(0).params)
    assert meters["user"].train_loss != pytest.approx(meters["default"].train_loss)


@pytest.mark.parametrize("vectorised", [False, True], ids=["loop", "vectorised"])
def test_a_user_loss_drives_the_unsplit_step(vectorised):
    torch.manual_seed(0)
    client, server = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh()), nn.Sequential(nn.Linear(8, 3))
    opt = Optimizer("sgd", 0.5)
    ((xs, ys),) = batches(1, k=2)
    meter = Meter()
    c = Side(client, Layout(client).state_of(client, opt), 2, opt, "c", meter, vectorised=vectorised)
    s = Side(server, Layout(server).state_of(server, opt), 2, opt, "s", meter, vectorised, loss=one_hot_mse)
    joint_each([c, s], [0, 1], list(xs), list(ys))
    ref = copy.deepcopy(nn.Sequential(client, server))
    one_hot_mse(ref(xs[1]), ys[1]).backward()
    torch.optim.SGD(ref.parameters(), lr=0.5).step()
    torch.testing.assert_close(s.state(1).params, flat(ref[1].parameters()), **ONE_STEP)
    torch.testing.assert_close(c.state(1).params, flat(ref[0].parameters()), **ONE_STEP)


def test_the_context_hands_its_loss_to_the_sides_it_creates():
    from splitfed.setup import prepare

    from ..conftest import small_config

    ctx = prepare(small_config()).context()
    ctx.loss = one_hot_mse
    assert ctx.side("client", 1, "client").loss is one_hot_mse
    assert ctx.side("server", 1, "main_server").loss is one_hot_mse


# --- the state --------------------------------------------------------------------------------------------
def test_the_state_holds_each_optimizer_s_slots():
    module = smooth_module()
    num = Layout(module).num_params
    sizes = {
        "sgd": 0,
        "sgd-momentum": num,
        "sgd-dampening": num + 1,
        "adam": 2 * num + 1,
        "adam-amsgrad": 3 * num + 1,
    }
    opts = {
        "sgd": Optimizer("sgd"),
        "sgd-momentum": Optimizer("sgd", momentum=0.9),
        "sgd-dampening": Optimizer("sgd", momentum=0.9, dampening=0.1),
        "adam": Optimizer("adamw"),
        "adam-amsgrad": Optimizer("adam", amsgrad=True),
    }
    for name, opt in opts.items():
        assert Layout(module).state_of(module, opt).opt.shape == (sizes[name],), name


def test_averaging_adam_state_averages_moments_and_keeps_the_common_step():
    a = State(torch.tensor([1.0]), torch.zeros(0), torch.tensor([1.0, 4.0, 7.0]))  # exp_avg, exp_avg_sq, step
    b = State(torch.tensor([3.0]), torch.zeros(0), torch.tensor([3.0, 2.0, 7.0]))
    acc = WeightedSum()
    acc.add(a, 0.25)
    acc.add(b, 0.75)
    assert acc.result.opt.tolist() == [2.5, 2.5, 7.0]


def test_a_checkpoint_of_the_momentum_era_loads():
    s = State.from_dict({"params": torch.ones(2), "buffers": torch.zeros(0), "momentum": torch.ones(2)})
    assert s.opt.tolist() == [1.0, 1.0] and list(s.to_dict()) == ["params", "buffers", "opt"]


# --- configuration ----------------------------------------------------------------------------------------
def test_the_config_chooses_each_side_s_optimizer():
    from splitfed.engine.optim import side_optimizer

    cfg = Config(optimizer="adamw", server_optimizer="sgd", momentum=0.9, betas=[0, 0.99], server_lr=0.5)
    client, server = side_optimizer(cfg, "client"), side_optimizer(cfg, "server")
    assert (client.name, client.lr, client.betas) == ("adamw", 0.01, (0.0, 0.99))
    assert (server.name, server.lr, server.momentum) == ("sgd", 0.5, 0.9)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam, adamw"),
        ({"client_optimizer": "lion"}, "client_optimizer must be one of"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum applies to sgd only"),
        ({"betas": (0.9, 0.99)}, "betas applies to adam/adamw only"),
        ({"optimizer": "adam", "betas": (0.9,)}, "betas must be two numbers in"),
        ({"nesterov": True}, "nesterov needs momentum > 0 and dampening 0"),
        ({"dampening": 1.0, "momentum": 0.5}, r"dampening must be in \[0, 1\)"),
        ({"lr_schedule": "step"}, "lr_schedule=step needs lr_decay.step_size"),
        ({"lr_schedule": "exponential"}, "lr_schedule=exponential needs lr_decay.gamma"),
        ({"lr_decay.gamma": 0.5}, r"lr_decay\.gamma applies to lr_schedule=step or exponential only"),
        ({"lr_schedule": "cosine", "lr_decay.min_lr": -1.0}, r"lr_decay\.min_lr must be >= 0"),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm must be a positive number"),
        ({"precision": "fp8"}, "precision must be one of fp32, bf16"),
    ],
)
def test_optimizer_knobs_that_cannot_apply_are_one_line_errors(fields, message):
    with pytest.raises(SplitfedError, match=message):
        Config(**fields)


# --- on a GPU ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "fields",
    [
        {"optimizer": "sgd", "momentum": 0.9, "dampening": 0.1},
        {"optimizer": "adamw", "weight_decay": 0.1},
        {"optimizer": "adam", "precision": "bf16"},
    ],
    ids=["sgd", "adamw", "adam-bf16"],
)
def test_cuda_graphs_replay_each_round_s_rate_as_eager_steps_do(fields, caplog):
    # Captured once, replayed every round: the rate (a tensor set per round) and the optimizer state must
    # follow as in the eager run; a capture that fails falls back to eager with a warning, which fails here.
    from ..algorithms.helpers import SMOOTH_MODEL, assert_same_model, final_model, train_one
    from ..conftest import small_config

    cfg = small_config(
        device="cuda",
        execution="batched",
        model=SMOOTH_MODEL,
        local_iters=4,
        rounds=3,
        lr_schedule="exponential",
        lr_gamma=0.5,
        clip_grad_norm=0.5,
        divergence_every=0,
        **fields,
    )
    for name in ("minibatch_sfl", "fedavg"):
        setup, graphs, _, _ = train_one(cfg.replace(cuda_graphs=True), name)
        _, eager, _, _ = train_one(cfg.replace(cuda_graphs=False), name)
        assert_same_model(final_model(setup, graphs), final_model(setup, eager), atol=1e-5)
    assert "capture failed" not in caplog.text
