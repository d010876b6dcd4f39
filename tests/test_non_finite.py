"""NaN or inf never trains on silently: refused where it enters (data, initial weights, the model's
output) and caught in the round it appears, with the last good round kept."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from splitfed import Config, SplitfedError, run
from splitfed.analysis import tables
from splitfed.engine.checkpoint import read_run_checkpoint

from .conftest import small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    ("changes", "round_"),
    [
        ({"lr": 1e10}, 1),  # inf loss at once
        ({"lr": 1e3}, 2),  # weights blow up in round 1, the loss turns NaN in round 2
        ({"optimizer": "adam", "eps": 0.0, "lr": 0.01}, 1),  # 0/0 where a gradient entry is 0
    ],
)
def test_a_diverging_round_stops_the_run_in_one_line_and_keeps_the_rounds_before(tmp_path, changes, round_):
    config = small_config(algorithm=("minibatch_sfl", "fedavg"), rounds=3, out=str(tmp_path), **changes)
    with pytest.raises(SplitfedError) as e:
        run(config)
    message = _one_line(e)
    assert f"minibatch_sfl diverged in round {round_}:" in message and "NaN" in message, message
    assert (tmp_path / "diverged.txt").read_text() == message + "\n"  # a sweep does not run it again
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, round_))
    assert all(r["train_loss"] == r["train_loss"] for r in records)  # no NaN was written
    checkpoint = tmp_path / "checkpoints" / "minibatch_sfl.pt"
    if round_ > 1:  # the last good round, finite (a resume or an export reads it)
        saved = read_run_checkpoint(checkpoint)
        assert saved["round"] == round_ - 1
        assert all(torch.isfinite(v).all() for state in saved["model"].values() for v in state.values())
    else:
        assert not checkpoint.exists()


def test_every_rank_stops_with_the_diverged_round(tmp_path):
    cmd = [
        sys.executable, "-m", "splitfed", "run", "--dataset", "synthetic", "--synthetic-shape", "1,8,8",
        "--synthetic-samples", "400", "--model", "digits_cnn", "--clients", "4", "--local-iters", "2",
        "--batch-size", "8", "--divergence-every", "0", "--threads", "1", "--rounds", "3",
        "--algorithm", "minibatch_sfl", "--processes", "2", "--lr", "1000", "--out", str(tmp_path / "r"),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "minibatch_sfl diverged in round 2" in p.stderr, p.stderr


def _xy(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return x, x[:, :3].argmax(1)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def _config(**changes):
    base = dict(algorithm=("fedavg",), cut_layer=2, clients=4, rounds=1, local_iters=2, batch_size=8)
    return Config(**(base | changes), divergence_every=0, device="cpu")


@pytest.mark.parametrize("where", ["x_train", "x_test"])
def test_non_finite_inputs_are_refused_before_training(tmp_path, where):
    x, y = _xy()
    x_test, y_test = _xy(100, seed=1)
    (x if where == "x_train" else x_test)[7, 3] = float("nan")
    with pytest.raises(SplitfedError, match="inputs hold NaN or inf in 1 of .* sample 7") as e:
        run(_config(out=str(tmp_path / "r")), model=_mlp(), data=(x, y, x_test, y_test))
    _one_line(e)
    assert not (tmp_path / "r").exists()


def test_non_finite_initial_weights_are_refused():
    model = _mlp()
    with torch.no_grad():
        model[2].bias[1] = float("inf")
    with pytest.raises(SplitfedError, match=r"initial parameter 2.bias holds NaN or inf") as e:
        run(_config(), model=model, data=_xy())
    _one_line(e)


class _Broken(nn.Module):
    def __init__(self, fault):
        super().__init__()
        self.fault = fault
        self.body = nn.Linear(16, 3)

    def forward(self, x):
        out = self.body(x)
        return out * float("nan") if self.fault == "nan" else out.long()


@pytest.mark.parametrize(
    ("fault", "message"), [("nan", "outputs NaN or inf"), ("int", "outputs torch.int64")]
)
def test_a_model_whose_output_is_not_finite_scores_is_refused(fault, message):
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), _Broken(fault))
    with pytest.raises(SplitfedError, match=message) as e:
        run(_config(cut_layer=1), model=model, data=_xy())
    _one_line(e)


def test_a_sweep_tries_a_diverging_run_once_and_lists_it_among_its_failures(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'dataset = "synthetic"\nsynthetic_shape = [1, 8, 8]\nsynthetic_samples = 100\nclients = 2\n'
        'rounds = 2\nlocal_iters = 1\ndivergence_every = 0\nalgorithm = ["fedavg"]\nfigures = false\n'
        "[[grid]]\nlr = [0.01, 1e10]\n"
    )
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "splitfed", "sweep", str(grid), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 2 and "1 of 2 runs failed" in first.stderr, first.stderr
    # the study's runs table holds it as tried: status diverged, the run's own line as its note
    runs = {float(r["lr"]): r for r in tables.read_runs(out)}
    assert runs[0.01]["status"] == "finished" and runs[1e10]["status"] == "diverged"
    diverged = runs[1e10]["note"]
    assert diverged.startswith("fedavg diverged in round ")
    assert (out / runs[1e10]["run"] / "diverged.txt").read_text().strip() == diverged
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "0 already done, 1 diverged (not run again)" not in again.stdout
    assert "1 already done, 1 diverged (not run again)" in again.stdout, again.stdout
    assert list(json.loads((out / "failures.json").read_text()).values()) == [diverged]
