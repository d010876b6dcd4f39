"""The Python API with the user's own objects: models, data (tabular too), loss, callbacks, progress,
TensorBoard; the CLI's --model pkg.module:builder and --dataset PATH.pt; the examples of docs/api.md and
the README, executed."""

import json
import os
import re
import socket
import sys
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from splitfed import Config, SplitfedError, run
from splitfed.cli import main
from splitfed.config import ALL_ALGORITHMS
from splitfed.data.datasets import user_data
from splitfed.engine.metrics import SplitModel, train_flops_per_sample
from splitfed.models import MODELS, split
from splitfed.setup import prepare

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    """A user module that splitfed has never heard of."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


def tabular(n=500, d=12, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, classes, generator=g)).argmax(1)
    return x, y


def user_model(d=12, classes=5):
    torch.manual_seed(0)
    return nn.Sequential(Block(d, 32), Block(32, 32), nn.Linear(32, classes))


def cfg(**changes):
    base = dict(
        clients=4,
        rounds=2,
        local_iters=3,
        batch_size=16,
        divergence_samples=40,
        divergence_every=1,
        device="cpu",
        lr=0.1,
    )
    return Config(**(base | changes))


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_a_user_module_and_a_tabular_tensor_dataset_train_with_every_algorithm(tmp_path):
    x, y = tabular(600)
    model = user_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    train, test = TensorDataset(x[:500], y[:500]), TensorDataset(x[500:], y[500:])
    result = run(
        cfg(algorithm=ALL_ALGORITHMS, cut_layer=1, out=str(tmp_path / "r")),
        model=model,
        data=(train, test),
        on_round=seen.append,
    )
    assert "Block" not in MODELS and result.config.model.startswith("python:Sequential@")
    assert result.config.dataset.startswith("python:")
    # on_round saw every record, in order, as metrics.jsonl holds them
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert seen == result.history == lines and len(seen) == 2 * len(ALL_ALGORITHMS)
    # the caller's module is untouched: training happened on a copy
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for name in ALL_ALGORITHMS:
        last = result.by_algorithm[name][-1]
        assert result.final_accuracy[name] == last["test_accuracy"]
        assert abs(accuracy(result.models[name], x[500:], y[500:]) - last["test_accuracy"]) < 1e-9, name
        assert 0 < last["train_loss"] < 10 and last["divergence_client"] >= 0
        assert len(last["test_accuracy_per_class"]) == 5
    # tabular FLOPs: Block(12, 32) on the client, Block(32, 32) + Linear(32, 5) on the server
    mb = result.by_algorithm["minibatch_sfl"][0]
    assert mb["client_flops"] == mb["samples"] * 2 * (2 * 12 * 32)  # forward + weight gradients
    assert mb["server_flops"] == mb["samples"] * 3 * 2 * (32 * 32 + 32 * 5)  # + input gradients
    # sfl_v1 = fedavg under plain SGD, with a user model too
    v1, fa = result.by_algorithm["sfl_v1"], result.by_algorithm["fedavg"]
    assert [r["test_accuracy"] for r in v1] == [r["test_accuracy"] for r in fa]
    data = json.loads((tmp_path / "r" / "data.json").read_text())
    assert data["in_shape"] == [12] and data["num_classes"] == 5


def test_final_accuracy_is_each_algorithms_own_last_round(tmp_path):
    x, y = tabular(400)
    result = run(
        cfg(algorithm=("sl", "fedavg"), rounds=3, eval_every=2, divergence_every=0, out=str(tmp_path / "r")),
        model=user_model(),
        data=(x, y),
    )
    assert [r["round"] for r in result.by_algorithm["sl"]] == [1, 2, 3]
    assert "test_accuracy" not in result.by_algorithm["sl"][0]  # eval_every = 2
    for name in ("sl", "fedavg"):
        assert result.final_accuracy[name] == result.by_algorithm[name][-1]["test_accuracy"]
    assert result.history[-1]["algorithm"] == "fedavg"  # what history[-1] alone would have given for sl


def test_a_builder_gets_the_classes_and_shape_and_its_weights_from_the_init_seed():
    x, y = tabular(300, d=7, classes=3)
    calls = []

    def build(num_classes, in_shape):
        calls.append((num_classes, in_shape))
        return nn.Sequential(nn.Linear(in_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))

    a = prepare(cfg(), model=build, data=(x, y))
    b = prepare(cfg(), model=build, data=(x, y))
    c = prepare(cfg(init_seed=7), model=build, data=(x, y))
    assert calls[0] == (3, (7,)) and a.data.in_shape == (7,) and a.data.num_classes == 3
    assert torch.equal(a.init_c.params, b.init_c.params) and not torch.equal(a.init_c.params, c.init_c.params)
    assert a.cfg.cut_layer == 1  # the middle cut of three children
    # a given module keeps its own weights, whatever the init seed
    module = build(3, (7,))
    d = prepare(cfg(init_seed=3), model=module, data=(x, y))
    assert torch.equal(d.init_c.params, torch.cat([p.reshape(-1) for p in module[0].parameters()]))


def test_user_data_forms_agree_and_the_held_out_test_set_is_a_fixed_fifth_of_each_class():
    x, y = tabular(503, classes=4)
    whole = user_data((x, y))
    counts = torch.bincount(y, minlength=4)
    held = torch.bincount(whole.test_y, minlength=4)
    assert torch.equal(held, torch.floor(counts * 0.2 + 0.5).long())
    assert len(whole.train_y) + len(whole.test_y) == 503
    # the split is the same at every call (its own seed), and train and test share no sample
    again = user_data((x.numpy(), y.numpy()))  # arrays work as tensors
    assert torch.equal(again.test_x, whole.test_x) and again.name == whole.name
    rows = {tuple(r.tolist()) for r in whole.train_x}
    assert not rows & {tuple(r.tolist()) for r in whole.test_x}

    class Rows(Dataset):  # a map-style Dataset that is not a TensorDataset: read item by item
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], int(self.y[i])

    forms = [
        (x[:400], y[:400], x[400:], y[400:]),
        {"x_train": x[:400], "y_train": y[:400], "x_test": x[400:], "y_test": y[400:]},
        (TensorDataset(x[:400], y[:400]), TensorDataset(x[400:], y[400:])),
        (Rows(x[:400], y[:400]), Rows(x[400:], y[400:])),
    ]
    sets = [user_data(f) for f in forms]
    for ds in sets[1:]:
        assert torch.equal(ds.train_x, sets[0].train_x) and torch.equal(ds.test_y, sets[0].test_y)
        assert ds.name == sets[0].name and ds.num_classes == 4
    assert user_data({"x_train": x, "y_train": y, "num_classes": 9}).num_classes == 9
    assert user_data((x.double(), y.int())).train_x.dtype == torch.float32
    tokens = user_data((torch.randint(0, 50, (100, 6)), torch.arange(100) % 3))
    assert tokens.train_x.dtype == torch.int64 and tokens.in_shape == (6,)


def test_non_iid_partitions_sampling_and_divergence_work_on_tabular_data():
    x, y = tabular(800, classes=8)
    setup = prepare(cfg(clients=8, non_iid_ratio=1.0), model=user_model(classes=8), data=(x, y))
    # p = 1: each client holds a contiguous run of the label-sorted data, clients in label order
    labels = torch.cat([setup.data.train_y[part] for part in setup.parts])
    assert torch.equal(labels, labels.sort().values) and len(labels.unique()) == 8
    xb, yb = setup.context().batch(0)
    assert xb.shape == (16, 12) and yb.dtype == torch.int64
    div = setup.divergence(setup.split_model(), setup.init_c, setup.init_s)
    assert div["divergence_client"] > 0


def test_training_flops_count_any_input_shape_and_integer_inputs():
    client, server = nn.Sequential(nn.Linear(12, 32)), nn.Sequential(nn.ReLU(), nn.Linear(32, 5))
    assert train_flops_per_sample(client, server, (12,)) == (2 * 2 * 12 * 32, 3 * 2 * 32 * 5)
    seq = nn.Sequential(nn.Linear(4, 8))  # acts on the last dimension: [3, 4] per sample is 3 rows
    assert train_flops_per_sample(seq, nn.Sequential(nn.Linear(8, 2)), (3, 4))[0] == 3 * 2 * 2 * 4 * 8
    embed = nn.Sequential(nn.Embedding(50, 8), nn.Flatten())
    flops = train_flops_per_sample(embed, nn.Sequential(nn.Linear(48, 3)), (6,), torch.int64)
    # a lookup is no product; its backward adds each of the 6 × 8 looked-up gradient elements into the table
    assert flops == (6 * 8, 3 * 2 * 48 * 3)


def test_an_embedding_model_trains_on_integer_inputs(tmp_path):
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 50, (300, 6), generator=g), torch.randint(0, 3, (300,), generator=g)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(48, 3))
    result = run(
        cfg(algorithm=("minibatch_sfl", "centralized"), cut_layer=1, out=str(tmp_path / "r")),
        model=model,
        data=(tokens, labels),
    )
    assert set(result.final_accuracy) == {"minibatch_sfl", "centralized"}


def test_on_round_sees_every_record_and_can_stop_a_run_that_then_resumes(tmp_path):
    x, y = tabular(400)
    config = cfg(algorithm=("minibatch_sfl", "sfl_v2"), rounds=3, divergence_every=0, out=str(tmp_path / "r"))
    whole = run(config.replace(out=str(tmp_path / "whole")), model=user_model(), data=(x, y))

    def stop_at_sfl_v2(record):
        if record["algorithm"] == "sfl_v2":
            raise KeyboardInterrupt

    assert run(config, model=user_model(), data=(x, y), on_round=stop_at_sfl_v2).interrupted
    seen = []
    resumed = run(config.replace(resume=True), model=user_model(), data=(x, y), on_round=seen.append)
    assert [(r["algorithm"], r["round"]) for r in seen] == [("sfl_v2", 2), ("sfl_v2", 3)]
    drop = ("train_time_s", "round_time_s", "wall_time_s")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in whole.history]
    # other data, or another model, cannot continue the run
    x2, y2 = tabular(400, seed=1)
    with pytest.raises(SplitfedError, match=r"different config: dataset \('python:"):
        run(config.replace(resume=True), model=user_model(), data=(x2, y2))
    torch.manual_seed(1)
    other = nn.Sequential(Block(12, 32), Block(32, 32), nn.Linear(32, 5))
    with pytest.raises(SplitfedError, match=r"different config: model \('python:Sequential@"):
        run(config.replace(resume=True), model=other, data=(x, y))
    with pytest.raises(SplitfedError, match="given to run\\(\\) as Python data; pass it again"):
        run(Config.from_toml(tmp_path / "r" / "config.toml").replace(resume=True), model=user_model())


def _rank(rank: int, world: int, port: int, out: str, seeds: list[int]) -> None:
    """One rank of a torch.distributed job (torchrun's environment) calling run() with its own objects."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    x, y = tabular(300)
    torch.manual_seed(seeds[rank])
    model = nn.Sequential(Block(12, 32), Block(32, 32), nn.Linear(32, 5))
    run(cfg(algorithm=("minibatch_sfl",), rounds=1, divergence_every=0, out=out), model=model, data=(x, y))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_ranks_of_a_distributed_job_must_be_given_the_same_objects(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path / "same"), [0, 0]), nprocs=2, join=True)
    assert (tmp_path / "same" / "models" / "minibatch_sfl.pt").is_file()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 was given another model or data than rank 0"):
        mp.spawn(_rank, args=(2, _free_port(), str(tmp_path / "other"), [0, 1]), nprocs=2, join=True)
    assert not (tmp_path / "other").exists()


def test_progress_prints_each_round_when_on_and_nothing_when_off(tmp_path, capsys, monkeypatch):
    import logging

    x, y = tabular(300)
    log = logging.getLogger("splitfed")
    handlers, level = list(log.handlers), log.level
    monkeypatch.setattr(logging.root, "handlers", [])  # a script that configured no logging
    config = cfg(algorithm=("fedavg",), rounds=2, divergence_every=0)
    run(config.replace(out=str(tmp_path / "on")), model=user_model(), data=(x, y), progress=True)
    out = capsys.readouterr().out
    assert "[       fedavg] round   1/2" in out and "round   2/2" in out and "final acc" in out
    run(config.replace(out=str(tmp_path / "off")), model=user_model(), data=(x, y), progress=False)
    run(config.replace(out=str(tmp_path / "auto")), model=user_model(), data=(x, y))  # stdout: not a tty
    assert capsys.readouterr().out == ""
    assert log.handlers == handlers and log.level == level  # the logger is left as it was


def test_progress_goes_through_the_users_logging_configuration(tmp_path, capsys, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("splitfed"), "propagate", True)  # a script's logger propagates
    x, y = tabular(300)
    config = cfg(algorithm=("fedavg",), rounds=1, divergence_every=0, out=str(tmp_path / "r"))
    run(config, model=user_model(), data=(x, y), progress=True)
    assert "[       fedavg] round   1/1" in caplog.text  # to the handler configured (pytest's, here)
    assert capsys.readouterr().out == ""  # and not printed a second time


def test_tensorboard_event_files_hold_each_rounds_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing import event_accumulator

    x, y = tabular(300)
    result = run(
        cfg(algorithm=("minibatch_sfl", "fedavg"), rounds=3, divergence_every=2, out=str(tmp_path / "r")),
        model=user_model(),
        data=(x, y),
    )
    for name in ("minibatch_sfl", "fedavg"):
        acc = event_accumulator.EventAccumulator(str(tmp_path / "r" / "tensorboard" / name))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"test_accuracy", "train_loss", "client_flops", "divergence_client_relative"} <= tags
        assert "test_accuracy_per_class" not in tags and "client_bytes_up" not in tags  # lists stay out
        records = result.by_algorithm[name]
        for tag in ("test_accuracy", "train_loss", "server_steps"):
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [1, 2, 3]
            assert [e.value for e in events] == pytest.approx([r[tag] for r in records], rel=1e-6)
        assert [e.step for e in acc.Scalars("divergence_client")] == [1, 3]  # measured rounds only
        if name == "minibatch_sfl":
            smashed = acc.Scalars("bytes/smashed")
            assert [e.value for e in smashed] == [r["bytes"]["smashed"] for r in records]


def test_a_user_loss_is_checked_and_used_by_evaluation():
    x, y = tabular(300)

    def smoothed(output, target):
        return F.cross_entropy(output, target, label_smoothing=0.2)

    # evaluation reports the run's loss, whatever it is
    setup = prepare(cfg(), model=user_model(), data=(x, y))
    test_x, test_y = setup.data.test_x, setup.data.test_y
    _, ce, _ = setup.split_model().evaluate(setup.init_c, setup.init_s, test_x, test_y)
    own = SplitModel(setup.client_module, setup.server_module, smoothed)
    _, smooth, _ = own.evaluate(setup.init_c, setup.init_s, test_x, test_y)
    client, server = split(setup.model, setup.cfg.cut_layer)
    with torch.no_grad():
        logits = server(client(test_x))
    assert smooth == pytest.approx(float(smoothed(logits, test_y)), rel=1e-5) and smooth != ce
    assert ce == pytest.approx(float(F.cross_entropy(logits, test_y)), rel=1e-5)
    for bad, message in (
        (
            lambda o, t: F.cross_entropy(o, t, reduction="none"),
            r"scalar float tensor; it returned shape \[2\]",
        ),
        (lambda o, t: 1.0, "it returned float"),
        (lambda o: o.sum(), r"loss fails on the model's output and labels \(TypeError"),
        ("ce", "loss must be a function"),
    ):
        with pytest.raises(SplitfedError, match=message):
            prepare(cfg(), model=user_model(), data=(x, y), loss=bad)


@pytest.mark.parametrize("execution", ["sequential", "batched"])
def test_a_user_loss_is_what_training_minimises_and_what_metrics_report(tmp_path, execution):
    x, y = tabular(300)

    def smoothed(output, target):
        return F.cross_entropy(output, target, label_smoothing=0.2)

    config = cfg(
        algorithm=("minibatch_sfl", "sfl_v1"),
        execution=execution,
        divergence_every=0,
        out=str(tmp_path / "r"),
    )
    result = run(config, model=user_model(), data=(x, y), loss=smoothed)
    plain = run(config.replace(out=str(tmp_path / "ce")), model=user_model(), data=(x, y))
    test = user_data((x, y))
    for name in ("minibatch_sfl", "sfl_v1"):
        ours, theirs = result.by_algorithm[name][-1], plain.by_algorithm[name][-1]
        assert ours["train_loss"] != theirs["train_loss"]  # the sides trained on the smoothed loss
        with torch.no_grad():
            logits = result.models[name].eval()(test.test_x)
        assert ours["test_loss"] == pytest.approx(float(smoothed(logits, test.test_y)), rel=1e-5)
    # the same data, batches and initial weights: only the loss differs, and so do the trained weights
    a = result.models["minibatch_sfl"].state_dict()
    b = plain.models["minibatch_sfl"].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize(
    "model, data, message",
    [
        (
            "ok",
            (torch.randn(10, 12), torch.zeros(9, dtype=torch.long)),
            "x_train has 10 samples but y_train has 9",
        ),
        (
            "ok",
            (torch.randn(10, 12), torch.rand(10)),
            "y_train holds torch.float32 values; labels must be integers",
        ),
        ("ok", (torch.randn(10, 12), -torch.ones(10, dtype=torch.long)), "holds the label -1"),
        (
            "ok",
            (torch.randn(10), torch.zeros(10, dtype=torch.long)),
            r"x_train has shape \[10\]; it needs one row",
        ),
        ("ok", (torch.randn(10, 12),), "got a tuple of 1"),
        ("ok", "data.csv", "got str"),
        ("ok", {"x_train": torch.randn(4, 2), "labels": torch.zeros(4)}, "unknown key 'labels'"),
        (
            "ok",
            (torch.randn(40, 12), torch.arange(40) % 5, torch.randn(10, 11), torch.arange(10) % 5),
            r"x_test samples are \[11\] but x_train samples are \[12\]",
        ),
        ("ok", (torch.randn(3, 12), torch.arange(3)), "too few to hold out 20% of each class"),
        (
            nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5)),
            None,
            r"cannot take python:\w+ inputs \[12\]: mat1 and mat2",
        ),
        (
            nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)),
            None,
            r"outputs \[2, 3\] for 2 samples; it must output \[2, 5\]",
        ),
        (lambda n: nn.Sequential(), None, r"a builder must take \(num_classes, in_shape\); it takes \(n\)"),
        (lambda n, s: nn.Linear(s[0], n), None, "is a Linear whose forward calls fewer than two modules"),
        (Block(12, 5), None, "is a Block whose forward calls fewer than two modules"),
        (lambda n, s: nn.Sequential(nn.Conv2d(*s, 3)), None, r"cannot be built for inputs \[12\]"),
        (42, None, "is a int; give an nn.Module"),
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), None, "client side without parameters \\(Flatten\\)"),
    ],
)
def test_a_bad_model_or_data_is_one_line(model, data, message):
    x, y = tabular(200)
    model = user_model() if isinstance(model, str) else model
    with pytest.raises(SplitfedError) as excinfo:
        prepare(cfg(), model=model, data=(x, y) if data is None else data)
    assert re.search(message, _one_line(excinfo)), str(excinfo.value)


def test_objects_and_config_naming_the_same_thing_is_refused():
    x, y = tabular(200)
    with pytest.raises(SplitfedError, match="a model is given twice: config.model = 'cnn4'"):
        prepare(cfg(model="cnn4"), model=user_model(), data=(x, y))
    with pytest.raises(SplitfedError, match="data are given twice: config.dataset = 'synthetic'"):
        prepare(cfg(dataset="synthetic"), model=user_model(), data=(x, y))
    with pytest.raises(SplitfedError, match="model python:Seq was given to run\\(\\) as a Python object"):
        prepare(cfg(model="python:Seq"), data=(x, y))


# --- the command line: --model pkg.module:builder, --dataset PATH.pt --------------------------------------

USER_MODULE = """
from torch import nn


def build(num_classes, in_shape, width=16):
    return nn.Sequential(nn.Linear(in_shape[0], width), nn.ReLU(), nn.Linear(width, num_classes))


def wrong(num_classes):
    return nn.Sequential()


fixed = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
not_a_model = 3
"""


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """A module of builders in the working directory (a fresh name: imports are cached) and data files."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "broken_module.py").write_text("import no_such_package_anywhere\n")
    x, y = tabular(300)
    torch.save(
        {"x_train": x[:250], "y_train": y[:250], "x_test": x[250:], "y_test": y[250:]}, tmp_path / "d.pt"
    )
    torch.save({"x_train": x, "y_train": y[:-1]}, tmp_path / "short.pt")
    torch.save({"x_train": x, "y_train": y.float()}, tmp_path / "float.pt")
    torch.save([x, y], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return name


SMALL = ["--clients", "3", "--rounds", "1", "--local-iters", "2", "--batch-size", "8", "--device", "cpu"]
SMALL += ["--divergence-samples", "20", "--algorithm", "minibatch_sfl,fedavg"]


def test_the_cli_takes_a_builder_by_module_path_and_a_data_file(user_files, tmp_path):
    argv = ["run", "--model", f"{user_files}:build", "--model-arg", "width=8", "--dataset", "d.pt", *SMALL]
    assert main([*argv, "--out", "r"]) == 0
    saved = Config.from_toml(tmp_path / "r" / "config.toml")
    assert saved.model == f"{user_files}:build" and saved.dataset == "d.pt"
    assert json.loads((tmp_path / "r" / "data.json").read_text())["in_shape"] == [12]
    state = torch.load(tmp_path / "r" / "models" / "fedavg.pt")
    assert state["0.weight"].shape == (8, 12)  # width=8 reached the builder
    # a module-level nn.Sequential by path; and the same builder as a Python object records its path
    assert main(["run", "--model", f"{user_files}:fixed", "--dataset", "d.pt", *SMALL, "--out", "s"]) == 0
    module = __import__(user_files)
    x, y = tabular(300)
    result = run(
        cfg(algorithm=("fedavg",), rounds=1, out=str(tmp_path / "p")), model=module.build, data=(x, y)
    )
    assert result.config.model == f"{user_files}:build"


def test_bad_module_paths_and_data_files_are_one_line_with_exit_2(user_files, tmp_path, capsys):
    cases = {
        "no module": (["--model", "no_such_mod:build"], "cannot import no_such_mod \\(ModuleNotFoundError"),
        "import fails": (
            ["--model", "broken_module:build"],
            "cannot import broken_module \\(ModuleNotFoundError",
        ),
        "no attribute": (["--model", f"{user_files}:nope"], f"module {user_files} has no attribute 'nope'"),
        "no attr part": (["--model", f"{user_files}:"], "name a builder as pkg.module:function"),
        "wrong signature": (
            ["--model", f"{user_files}:wrong"],
            "a builder must take \\(num_classes, in_shape\\)",
        ),
        "not a model": (["--model", f"{user_files}:not_a_model"], "is a int; it must be an nn.Module"),
        "bad model arg": (
            ["--model", f"{user_files}:build", "--model-arg", "depth=2"],
            "has no argument 'depth'",
        ),
        "shape": (
            ["--model", f"{user_files}:build", "--dataset", "digits"],
            "cannot take digits inputs \\[1, 8, 8\\]",
        ),
        "lengths": (["--dataset", "short.pt"], "x_train has 300 samples but y_train has 299 labels"),
        "float labels": (["--dataset", "float.pt"], "y_train holds torch.float32 values"),
        "not a dict": (["--dataset", "list.pt"], "data file list.pt holds a list; it must hold a dict"),
        "unreadable": (["--dataset", "junk.pt"], "data file junk.pt cannot be read as tensors"),
        "missing": (["--dataset", "nope.pt"], "data file nope.pt not found"),
        "unknown": (["--dataset", "data.csv"], "unknown dataset 'data.csv'"),
    }
    for name, (args, message) in cases.items():
        argv = ["--model", f"{user_files}:build", "--dataset", "d.pt", *SMALL, *args, "--out", "x"]
        assert main(["run", *argv]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("splitfed: error: "), (name, err)
        assert re.search(message, err), (name, err)
        assert not (tmp_path / "x").exists(), name


# --- the documentation's examples run as written ------------------------------------------------------


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _exec_blocks(blocks: list[str], where: str) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{where} python block {i + 1}", "exec"), namespace)


def test_every_example_of_docs_api_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 7
    _exec_blocks(blocks, "docs/api.md")
    assert (tmp_path / "fedavg-export.pt").is_file()


def test_the_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(ROOT / "README.md")
    assert any("model=model, data=(x, y)" in b for b in blocks)  # the bring-your-own example is among them
    try:
        _exec_blocks(blocks, "README.md")
    finally:  # the README registers "mlp": other tests compare the registry with the built-in names
        MODELS._items.pop("mlp", None)


def test_the_readme_lists_every_registered_model():
    from splitfed import MODELS

    listed = (ROOT / "README.md").read_text().split("- Models (`--model`")[1].split("\n\n")[0]
    built_in = [name for name in MODELS if MODELS.get(name).__module__.startswith("splitfed.")]
    assert len(built_in) >= 4
    for name in built_in:
        assert f"`{name}`" in listed, f"README's model list lacks {name}"
