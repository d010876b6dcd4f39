"""Models a run saves and `splitfed export`: plain state_dicts that load into a fresh PyTorch model and give
the accuracy the run reported."""

import re

import pytest
import torch
from torch import nn

from splitfed import SplitfedError, export_model, load_model, run
from splitfed.cli import main
from splitfed.models import build_model
from splitfed.setup import load_data

from .conftest import small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


ALGORITHMS = ("minibatch_sfl", "sfl_v1", "centralized")


@pytest.fixture(scope="module")
def registered_run(tmp_path_factory):
    """A registered model with BatchNorm (buffers travel too) on synthetic images, models every 2 rounds."""
    out = tmp_path_factory.mktemp("export") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = small_config(
        model="resnet18",
        model_args={"width": 4},
        synthetic_shape=(3, 8, 8),
        algorithm=ALGORITHMS,
        rounds=4,
        model_every=2,
        momentum=0.9,
        divergence_every=0,
        out=str(out),
    )
    result = run(cfg)
    torch.set_num_threads(threads)
    return result


def fresh_resnet(result):
    """Built by name, as any PyTorch code would build it: no splitfed run involved."""
    return build_model("resnet18", 10, (3, 8, 8), {"width": 4})


def test_exported_models_load_into_a_fresh_model_with_the_reported_accuracy(registered_run, tmp_path, capsys):
    result, run_dir = registered_run, registered_run.out_dir
    data = load_data(result.config)
    for name in ALGORITHMS:
        out = tmp_path / f"{name}.pt"
        assert main(["export", str(run_dir), "--algorithm", name, "--out", str(out)]) == 0
        state = torch.load(out, weights_only=True)
        assert all(v.device.type == "cpu" for v in state.values())
        model = fresh_resnet(result)
        model.load_state_dict(state)  # strict: every key, every shape
        assert accuracy(model, data.test_x, data.test_y) == pytest.approx(
            result.final_accuracy[name], abs=1e-12
        )
        # the final model the run saved by itself is the same state_dict
        saved = torch.load(run_dir / "models" / f"{name}.pt", weights_only=True)
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
        bn = [k for k in state if k.endswith("running_mean")]
        assert bn and any(state[k].abs().sum() > 0 for k in bn)  # trained BatchNorm statistics, not init


def test_per_round_models_are_saved_every_k_rounds_and_export_reads_them(registered_run, tmp_path):
    result, run_dir = registered_run, registered_run.out_dir
    data = load_data(result.config)
    for name in ALGORITHMS:
        files = sorted(p.name for p in (run_dir / "models" / name).iterdir())
        assert files == ["round-2.pt", "round-4.pt"], name
        round2 = result.by_algorithm[name][1]
        model = fresh_resnet(result)
        model.load_state_dict(torch.load(run_dir / "models" / name / "round-2.pt", weights_only=True))
        assert accuracy(model, data.test_x, data.test_y) == pytest.approx(round2["test_accuracy"], abs=1e-12)
        out = export_model(run_dir, tmp_path / f"{name}-2.pt", name, round=2)
        again = torch.load(out, weights_only=True)
        assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    # the last round is the checkpoint's: the same weights either way
    last = load_model(run_dir, "sfl_v1", round=4).state_dict()
    final = load_model(run_dir, "sfl_v1").state_dict()
    assert all(torch.equal(last[k], final[k]) for k in final)


def test_a_run_of_a_user_module_exports_from_python_with_the_module(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g)
    y = x[:, :3].argmax(1)

    def make():  # plain PyTorch, no splitfed: what a user rebuilds their model with
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))

    torch.manual_seed(0)
    cfg = small_config(algorithm=("sfl_v2", "fedavg"), divergence_every=0, out=str(tmp_path / "r"))
    cfg = cfg.replace(dataset="digits", synthetic_shape=None, synthetic_samples=None, model=None)
    result = run(cfg, model=make(), data=(x[:300], y[:300], x[300:], y[300:]))
    for name in ("sfl_v2", "fedavg"):
        with pytest.raises(SplitfedError, match="given to run\\(\\) as a Python object .*export_model"):
            load_model(result.out_dir, name)
        path = export_model(result.out_dir, tmp_path / f"{name}.pt", name, model=make())  # any weights
        fresh = make()
        fresh.load_state_dict(torch.load(path, weights_only=True))
        assert accuracy(fresh, x[300:], y[300:]) == pytest.approx(result.final_accuracy[name], abs=1e-12)
    wrong = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(SplitfedError, match="holds 176 parameters for a half of 88: the model given is not"):
        load_model(result.out_dir, "fedavg", model=wrong)


def test_export_mistakes_are_one_line_and_exit_2(registered_run, tmp_path, capsys):
    run_dir = str(registered_run.out_dir)
    cases = {
        "not a run": ([str(tmp_path)], "is not a run directory: it has no config.toml"),
        "several algorithms": (
            [run_dir],
            r"holds 3 algorithms \(minibatch_sfl, sfl_v1, centralized\); choose",
        ),
        "unknown algorithm": (
            [run_dir, "--algorithm", "fedavg"],
            "has no algorithm 'fedavg'; it ran: minibatch_sfl",
        ),
        "round not saved": (
            [run_dir, "--algorithm", "sfl_v1", "--round", "3"],
            "no model of sfl_v1 after round 3: the rounds saved are 2, 4; its checkpoint holds round 4",
        ),
        "no out": ([run_dir, "--algorithm", "sfl_v1"], "the following arguments are required: --out"),
    }
    for name, (args, message) in cases.items():
        with pytest.raises(SystemExit) as exit_info:  # argparse exits; the rest return
            raise SystemExit(main(["export", *args, *([] if name == "no out" else ["--out", "m.pt"])]))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, name
        assert err.count("\n") == 1 and err.startswith("splitfed: error: "), (name, err)
        assert re.search(message, err), (name, err)
