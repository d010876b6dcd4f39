"""Optimizers and schedules given as objects: a torch.optim class, a factory with parameter groups, an
lr_scheduler factory; against the named path and against plain PyTorch, bit for bit where both run
torch's element-wise kernels on the same numbers (a flat vector or per-tensor views of it: same arithmetic
per element, so equal to the last bit on any CPU).
"""

import copy
import json
import tomllib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitfed import Config, SplitfedError, run
from splitfed.engine.optim import LRSchedule, Optimizer, side_optimizer
from splitfed.progress import scalars
from splitfed.setup import prepare

from ..algorithms.helpers import SMOOTH_MODEL, final_model, train_one
from ..conftest import small_config


# Importable by name (config.toml records them as tests.engine.test_optimizer_objects:<name>).
def adamw_groups(named):
    """AdamW with weight decay on matrices and kernels only (not on biases and norms), and the
    no-decay group at twice the rate: two groups that differ in both."""
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0, "lr": 0.02}],
        lr=0.01,
    )


def warmup_cosine(opt):
    """Two rounds of linear warm-up from a tenth of the rate, then a cosine over three."""
    sched = torch.optim.lr_scheduler
    return sched.SequentialLR(
        opt, [sched.LinearLR(opt, 0.1, 1.0, total_iters=2), sched.CosineAnnealingLR(opt, T_max=3)], [2]
    )


def same_model(a: nn.Module, b: nn.Module) -> None:
    """Equal to the last bit, every parameter and buffer."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs by {(sa[k] - sb[k]).abs().max().item()}"


# --- a class equals its name ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "name", "knobs"),
    [
        (torch.optim.SGD, "sgd", {"momentum": 0.9, "weight_decay": 1e-3}),
        (torch.optim.Adam, "adam", {"betas": (0.8, 0.99)}),
        (torch.optim.AdamW, "adamw", {"weight_decay": 0.1}),
    ],
    ids=["sgd", "adam", "adamw"],
)
@pytest.mark.parametrize("algorithm", ["minibatch_sfl", "sfl_v1", "fedavg"])
def test_a_torch_optimizer_class_trains_exactly_as_its_name(cls, name, knobs, algorithm):
    # Two rounds: the second starts from the averaged optimizer state, so this also checks that the
    # class's state (momentum buffers, moments, step counters) is averaged by the same rule.
    base = dict(model=SMOOTH_MODEL, rounds=2, lr=0.05, divergence_every=0, **knobs)
    setup_n, ex_n, _, _ = train_one(small_config(optimizer=name, **base), algorithm)
    setup_c, ex_c, _, _ = train_one(small_config(optimizer=cls, **base), algorithm)
    same_model(final_model(setup_c, ex_c), final_model(setup_n, ex_n))


def test_a_class_takes_the_rate_and_the_knobs_it_accepts_and_steps_as_torch():
    cfg = small_config(optimizer=torch.optim.RMSprop, momentum=0.9, weight_decay=1e-3, lr=0.003)
    module = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    opt = side_optimizer(cfg, "client", module)
    assert not isinstance(opt, Optimizer) and opt.knobs == {"momentum", "weight_decay"}  # torch's own
    ref_model = copy.deepcopy(module)
    ref = torch.optim.RMSprop(ref_model.parameters(), lr=0.003, momentum=0.9, weight_decay=1e-3)
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    state = torch.zeros(opt.state_size(flat.numel()))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(5, 4, generator=g), torch.randint(0, 2, (5,), generator=g)
        ref.zero_grad()
        F.cross_entropy(ref_model(x), y).backward()
        grads = torch.cat([p.grad.reshape(-1) for p in ref_model.parameters()])
        ref_before = copy.deepcopy(ref_model)  # the gradient is taken at the reference's weights
        same_model(ref_before, _load(module, flat))
        ref.step()
        opt.step(flat, grads, state)
    same_model(ref_model, _load(module, flat))


def _load(module, flat):
    out = copy.deepcopy(module)
    torch.nn.utils.vector_to_parameters(flat, out.parameters())
    return out


# --- a factory with parameter groups equals plain PyTorch -------------------------------------------------
def _plain_steps(model, batches):
    opt = adamw_groups(list(model.named_parameters()))
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_a_factory_with_parameter_groups_is_plain_pytorch_for_centralized():
    cfg = small_config(model=SMOOTH_MODEL, optimizer=adamw_groups, rounds=1, local_iters=2)
    setup, executor, _, _ = train_one(cfg, "centralized")
    streams = setup.context().streams
    union = cfg.clients  # the stream after the clients' own: their union, centralized training's data
    batches = [streams.batch(union, cfg.batch_size) for _ in range(2 * cfg.clients)]  # τ·m steps of b
    same_model(final_model(setup, executor), _plain_steps(copy.deepcopy(setup.model).train(), batches))


def test_a_factory_with_parameter_groups_is_plain_pytorch_for_fedavg():
    cfg = small_config(model=SMOOTH_MODEL, optimizer=adamw_groups, rounds=1, local_iters=3)
    setup, executor, _, _ = train_one(cfg, "fedavg")
    streams = setup.context().streams
    total = sum(setup.data_sizes)
    average = {k: torch.zeros_like(v) for k, v in setup.model.state_dict().items()}
    for n, b in enumerate(setup.batch_sizes()):  # each client from the same start, its own AdamW
        client = _plain_steps(copy.deepcopy(setup.model).train(), [streams.batch(n, b) for _ in range(3)])
        for k, v in client.state_dict().items():
            average[k].add_(v, alpha=setup.data_sizes[n] / total)
    expected = copy.deepcopy(setup.model)
    expected.load_state_dict(average)
    same_model(final_model(setup, executor), expected)


# --- schedules ----------------------------------------------------------------------------------------------
def test_a_warm_up_schedule_s_rates_are_each_round_s_in_metrics_jsonl(tmp_path):
    cfg = small_config(
        algorithm=("minibatch_sfl", "fedavg"),
        rounds=5,
        local_iters=1,
        divergence_every=0,
        optimizer=adamw_groups,
        client_lr_schedule=warmup_cosine,
        server_optimizer="sgd",
        server_lr=0.1,
        server_lr_schedule="step",
        lr_step_size=2,
        out=str(tmp_path / "run"),
    )
    run(cfg)
    twin = adamw_groups([("w", nn.Parameter(torch.zeros(2, 2))), ("b", nn.Parameter(torch.zeros(2)))])
    sched = warmup_cosine(twin)
    client = []
    for _ in range(5):
        client.append(sched.get_last_lr()[0])
        twin.step()
        sched.step()
    server = [0.1, 0.1, 0.01, 0.01, 0.001]  # StepLR(2, gamma 0.1)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for name in cfg.algorithm:
        mine = [r for r in records if r["algorithm"] == name]
        assert [r["lr_client"] for r in mine] == client
        assert [r["lr_server"] for r in mine] == pytest.approx(server, rel=1e-12)
    assert client[0] == pytest.approx(0.001) and client[2] == 0.01 and client[1] < client[2] > client[3]
    assert ("lr_client", client[0]) in list(scalars(records[0]))  # TensorBoard's scalars of the round


def test_each_parameter_group_gets_its_own_scheduled_rate():
    cfg = small_config(optimizer=adamw_groups, lr_schedule=warmup_cosine, rounds=4)
    ctx = prepare(cfg).context()
    side = ctx.side("client", 2, "client")
    ctx.set_round(1)
    assert [g["lr"] for g in side.opt.opt.param_groups] == pytest.approx([0.001, 0.002])
    ctx.set_round(3)
    assert [g["lr"] for g in side.opt.opt.param_groups] == [0.01, 0.02]
    assert side.lr_value == 0.01 and ctx.rates(3) == {"lr_client": 0.01, "lr_server": 0.01}


def test_a_scheduler_factory_trains_exactly_as_the_named_schedule():
    def exponential(opt):
        return torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)

    base = dict(model=SMOOTH_MODEL, rounds=3, lr=0.1, momentum=0.5, divergence_every=0)
    setup_n, ex_n, hist_n, _ = train_one(
        small_config(lr_schedule="exponential", lr_gamma=0.5, **base), "sfl_v2"
    )
    setup_f, ex_f, hist_f, _ = train_one(small_config(lr_schedule=exponential, **base), "sfl_v2")
    same_model(final_model(setup_f, ex_f), final_model(setup_n, ex_n))
    assert [r["lr_client"] for r in hist_f] == [r["lr_client"] for r in hist_n] == [0.1, 0.05, 0.025]
    assert LRSchedule(small_config(lr_schedule=exponential), 0.1)(3) == 0.025


# --- what cannot work is refused before training, in one line -------------------------------------------
class RowFactored(torch.optim.Optimizer):
    """Keeps one number per row of a matrix (a factored second moment): not the parameter's shape."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                row = self.state[p].setdefault("row", torch.zeros(p.shape[0]))
                row.add_(p.grad.pow(2).reshape(p.shape[0], -1).mean(1))
                p.sub_(group["lr"] * p.grad)


def _half(named):
    return [p for _, p in named][: len(named) // 2]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": torch.optim.LBFGS}, "LBFGS keeps state 'func_evals' .* of type int, not a tensor"),
        ({"optimizer": RowFactored}, r"keeps state 'row' for parameter .* of shape \[16\], neither"),
        ({"server_optimizer": lambda named: "sgd"}, "returned a str; it must return a torch.optim.Optimizer"),
        ({"optimizer": _half}, "returned a list"),
        (
            {"optimizer": lambda named: torch.optim.SGD(_half(named), lr=0.1)},
            "must hold each parameter it is given exactly once; it leaves out",
        ),
        (
            {"optimizer": torch.optim.Adagrad, "momentum": 0.9},
            "momentum is set, but no side's optimizer takes",
        ),
        ({"optimizer": adamw_groups, "client_lr": 0.1}, "client_lr is set, but the client side's optimizer"),
        (
            {"optimizer": "torch.optim:lr_scheduler"},
            "is a module that is no torch.optim.Optimizer; it must be",
        ),
        (
            {"lr_schedule": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt)},
            "fails on its step 1",
        ),
        ({"lr_schedule": lambda opt: None}, "returned a NoneType; it must return a"),
    ],
    ids=[
        "lbfgs",
        "factored",
        "not-optimizer",
        "list",
        "missing",
        "knob",
        "factory-lr",
        "module",
        "plateau",
        "none",
    ],
)
def test_what_cannot_train_or_be_averaged_is_refused_before_training_in_one_line(fields, message):
    with pytest.raises(SplitfedError, match=message) as err:
        prepare(small_config(**fields))
    assert "\n" not in str(err.value)


def test_names_outside_the_list_are_refused_naming_what_is_accepted():
    with pytest.raises(SplitfedError, match="optimizer must be one of sgd, adam, adamw, or a torch.optim"):
        Config(optimizer="rmsprop")
    with pytest.raises(SplitfedError, match="server_lr_schedule must be one of .* or a factory Optimizer"):
        Config(server_lr_schedule="warmup")
    built = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(SplitfedError, match="client_optimizer is a SGD instance; give a name or"):
        Config(client_optimizer=built)


# --- recorded in config.toml, resumed bit for bit -------------------------------------------------------
def test_the_config_records_an_importable_object_by_name_and_others_by_fingerprint():
    cfg = Config(optimizer=torch.optim.RMSprop, lr_schedule=warmup_cosine)
    assert cfg.optimizer == "torch.optim.rmsprop:RMSprop"
    assert cfg.lr_schedule == "tests.engine.test_optimizer_objects:warmup_cosine"
    assert Config.from_dict(tomllib.loads(cfg.to_toml())) == cfg
    # two lambdas of the same code are one optimizer; another rate is another (a resume would refuse it)
    factories = [lambda n: torch.optim.SGD(n, lr=0.1), lambda n: torch.optim.SGD(n, lr=0.1)]
    factories.append(lambda n: torch.optim.SGD(n, lr=0.2))
    labels = [Config(optimizer=f).optimizer for f in factories]
    assert labels[0].startswith("python:") and labels[0] == labels[1] != labels[2]
    # the TOML/CLI path names a class the same way
    assert side_optimizer(
        Config.from_dict({"optimizer": "torch.optim.rmsprop:RMSprop"}), "client", nn.Linear(2, 2)
    )
    assert isinstance(side_optimizer(Config(), "client"), Optimizer)


def test_a_run_cut_short_and_resumed_with_object_optimizers_equals_the_uninterrupted_one(
    tmp_path, monkeypatch
):
    from splitfed.rundir import RunDir

    cfg = small_config(
        algorithm=("minibatch_sfl", "sfl_v1"),
        model=SMOOTH_MODEL,
        rounds=4,
        divergence_every=0,
        optimizer=adamw_groups,
        server_optimizer=torch.optim.SGD,
        momentum=0.9,
        lr_schedule=warmup_cosine,
    )
    run(cfg.replace(out=str(tmp_path / "whole")))

    class Crash(Exception):
        pass

    calls = {"n": 0}
    original = RunDir.append_metrics

    def crash_on_sixth(self, record):
        calls["n"] += 1
        if calls["n"] == 6:  # sfl_v1's round 2: its checkpoint is written, its metrics line is not
            raise Crash
        original(self, record)

    monkeypatch.setattr(RunDir, "append_metrics", crash_on_sixth)
    with pytest.raises(Crash):
        run(cfg.replace(out=str(tmp_path / "cut")))
    monkeypatch.setattr(RunDir, "append_metrics", original)
    run(cfg.replace(out=str(tmp_path / "cut"), resume=True))

    def metrics(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if not k.endswith("_time_s")} for x in lines]

    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")
    for name in cfg.algorithm:
        a = torch.load(tmp_path / "cut" / "models" / f"{name}.pt")
        b = torch.load(tmp_path / "whole" / "models" / f"{name}.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SplitfedError, match=r"cannot resume .* different config: optimizer"):
        run(cfg.replace(out=str(tmp_path / "cut"), resume=True, optimizer=torch.optim.AdamW))
