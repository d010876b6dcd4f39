"""End to end: the run directory, determinism, checkpoint/resume (with real kills), the Python API."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from splitfed import Config, SplitfedError, run
from splitfed.config import ALL_ALGORITHMS
from splitfed.rundir import RunDir

from .conftest import small_config

REPO = Path(__file__).resolve().parents[1]
TIME_FIELDS = {"train_time_s", "round_time_s", "wall_time_s"}


def metrics(path):
    """metrics.jsonl without its wall-clock fields, the only ones that may differ between two runs."""
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_FIELDS} for line in lines]


def test_a_run_writes_its_directory_and_returns_history_and_models(tmp_path):
    cfg = small_config(algorithm=ALL_ALGORITHMS, out=str(tmp_path / "run"), figures=True)
    result = run(cfg)
    out = tmp_path / "run"
    for name in ("config.toml", "metrics.jsonl", "summary.csv", "partition.csv", "partition.txt"):
        assert (out / name).is_file(), name
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "divergence.png").stat().st_size > 10_000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        f"{a}.pt" for a in ALL_ALGORITHMS
    )
    # config.toml is the resolved config: it reloads to the config the run used
    assert Config.from_toml(out / "config.toml") == result.config
    assert (
        result.config.model == "digits_cnn"
        and result.config.cut_layer == 2
        and result.config.non_iid_ratio == 0.8
    )
    lines = metrics(out)
    assert len(lines) == len(result.history) == 2 * len(ALL_ALGORITHMS)
    for rec in result.history:
        for key in (
            "algorithm",
            "round",
            "test_accuracy",
            "test_loss",
            "train_loss",
            "divergence_client",
            "divergence_server_relative",
            "client_bytes_up",
            "client_flops",
            "server_flops",
            "wall_time_s",
        ):
            assert key in rec, key
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["algorithm"] for r in rows] == list(ALL_ALGORITHMS)
    # .models: the final model of each algorithm, whose accuracy is the one reported
    data_x, data_y = _test_set(cfg)
    for name, model in result.models.items():
        model.eval()
        with torch.no_grad():
            acc = (model(data_x).argmax(1) == data_y).float().mean().item()
        last = [r for r in result.history if r["algorithm"] == name][-1]
        assert abs(acc - last["test_accuracy"]) < 1e-6, name
    hist = list(csv.reader((out / "partition.csv").open()))
    assert hist[0][:2] == ["client", "samples"] and len(hist) == 1 + cfg.clients


def _test_set(cfg):
    from splitfed.setup import load_data

    ds = load_data(cfg)
    return ds.test_x, ds.test_y


def test_bytes_on_the_link_match_the_analytic_count(tmp_path):
    cfg = small_config(algorithm=("minibatch_sfl", "fedavg"), local_iters=3, rounds=1, divergence_every=0)
    result = run(cfg.replace(out=str(tmp_path / "r")))
    mb, fl = result.history
    smashed = 32 * 4 * 4  # digits_cnn cut 2 on 8x8 inputs
    client_state = sum(p.numel() for p in result.models["minibatch_sfl"][:2].parameters()) * 4
    full_state = sum(p.numel() for p in result.models["fedavg"].parameters()) * 4
    b, tau = cfg.batch_size, 3
    assert mb["client_bytes_up"] == [tau * b * (smashed * 4 + 8) + client_state] * cfg.clients
    assert mb["client_bytes_down"] == [tau * b * smashed * 4 + client_state] * cfg.clients
    assert mb["bytes"] == {
        "client_weights": cfg.clients * client_state,
        "global_client_weights": cfg.clients * client_state,
        "labels": cfg.clients * tau * b * 8,
        "smashed": cfg.clients * tau * b * smashed * 4,
        "smashed_grad": cfg.clients * tau * b * smashed * 4,
    }
    assert fl["client_bytes_up"] == fl["client_bytes_down"] == [full_state] * cfg.clients
    # FLOPs: FedAvg does on the client what MiniBatch-SFL splits between client and main server
    assert fl["client_flops"] == mb["client_flops"] + mb["server_flops"] and fl["server_flops"] == 0


def test_same_seed_same_metrics_and_another_seed_differs(tmp_path):
    cfg = small_config(algorithm=("minibatch_sfl", "sfl_v2", "sl"), rounds=3)
    run(cfg.replace(out=str(tmp_path / "a")))
    run(cfg.replace(out=str(tmp_path / "b")))
    run(cfg.replace(out=str(tmp_path / "c"), seed=1))
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert metrics(tmp_path / "a") != metrics(tmp_path / "c")


def _strict_flags() -> tuple:
    b = torch.backends
    return (
        b.cuda.matmul.allow_tf32,
        b.cudnn.allow_tf32,
        b.cudnn.deterministic,
        b.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


def test_deterministic_sets_the_cuda_flags_and_leaves_a_cpu_run_as_it_was(tmp_path, monkeypatch):
    from splitfed.setup import deterministic_cuda

    before = _strict_flags()
    # on the CPU the option changes nothing: the process's global torch flags stay, the numbers too
    cfg = small_config(algorithm=("minibatch_sfl", "sfl_v2"), rounds=2)
    run(cfg.replace(out=str(tmp_path / "plain")))
    run(cfg.replace(out=str(tmp_path / "strict"), deterministic=True))
    assert metrics(tmp_path / "plain") == metrics(tmp_path / "strict")
    assert _strict_flags() == before
    # what it does on CUDA (called directly here, every flag put back afterwards)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    b = torch.backends
    try:
        deterministic_cuda()
        assert _strict_flags() == (False, False, True, False, True, True, ":4096:8")
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark = before[:4]
        torch.use_deterministic_algorithms(before[4], warn_only=before[5])
    assert _strict_flags()[:6] == before[:6]


def test_seed_per_purpose_changes_only_its_own_part(tmp_path):
    base = small_config(algorithm=("fedavg",), rounds=1)
    a = run(base.replace(out=str(tmp_path / "a")))
    b = run(base.replace(out=str(tmp_path / "b"), init_seed=5))
    assert (tmp_path / "a" / "partition.csv").read_text() == (tmp_path / "b" / "partition.csv").read_text()
    assert (
        a.history[0]["test_accuracy"] != b.history[0]["test_accuracy"]
        or a.history[0]["test_loss"] != b.history[0]["test_loss"]
    )
    run(base.replace(out=str(tmp_path / "c"), partition_seed=5))
    assert (tmp_path / "a" / "partition.csv").read_text() != (tmp_path / "c" / "partition.csv").read_text()


def test_batchnorm_models_train_in_every_algorithm(tmp_path):
    cfg = small_config(
        model="resnet18",
        model_args={"width": 4},
        synthetic_shape=(3, 16, 16),
        rounds=1,
        algorithm=ALL_ALGORITHMS,
        momentum=0.9,
        out=str(tmp_path / "r"),
    )
    result = run(cfg)
    assert all(0 <= r["test_accuracy"] <= 1 and r["train_loss"] == r["train_loss"] for r in result.history)


class _Crash(Exception):
    pass


def test_interrupted_between_checkpoint_and_metrics_line_resumes_exactly(tmp_path, monkeypatch):
    cfg = small_config(algorithm=("minibatch_sfl", "sfl_v1"), rounds=4, momentum=0.5)
    run(cfg.replace(out=str(tmp_path / "whole")))
    calls = {"n": 0}
    original = RunDir.append_metrics

    def crash_on_fifth(self, record):
        calls["n"] += 1
        if calls["n"] == 5:  # round 1 of sfl_v1: its checkpoint is written, its metrics line is not
            raise _Crash
        original(self, record)

    monkeypatch.setattr(RunDir, "append_metrics", crash_on_fifth)
    with pytest.raises(_Crash):
        run(cfg.replace(out=str(tmp_path / "cut")))
    assert not (tmp_path / "cut" / "summary.csv").exists()  # not complete-looking
    monkeypatch.setattr(RunDir, "append_metrics", original)
    run(cfg.replace(out=str(tmp_path / "cut"), resume=True))
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


def test_resume_can_extend_a_finished_run(tmp_path):
    cfg = small_config(algorithm=("sfl_v2", "fedavg"), rounds=4)
    run(cfg.replace(out=str(tmp_path / "whole")))
    run(cfg.replace(out=str(tmp_path / "grown"), rounds=2))
    run(cfg.replace(out=str(tmp_path / "grown"), resume=True))
    assert metrics(tmp_path / "grown") == metrics(tmp_path / "whole")


def test_resume_refuses_a_different_config_and_new_runs_refuse_a_used_directory(tmp_path):
    cfg = small_config(algorithm=("fedavg",), rounds=1, out=str(tmp_path / "r"))
    run(cfg)
    with pytest.raises(SplitfedError, match=r"cannot resume .* different config: lr \(0.01 -> 0.1\)"):
        run(cfg.replace(lr=0.1, resume=True))
    with pytest.raises(SplitfedError, match="already holds a run; pass --resume"):
        run(cfg)
    with pytest.raises(SplitfedError, match="nothing to resume"):
        run(cfg.replace(out=str(tmp_path / "empty"), resume=True))


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "splitfed.cli", *args], capture_output=True, text=True, **kw)


def test_a_run_at_a_constant_rate_does_not_import_torch_dynamo():
    """torch imports its compiler (torch._dynamo, 1.5 s) on a first torch.optim optimizer or a first
    dispatch-mode call: every process that trains (a run, a rank, each role of a deployment) paid it at its
    start, for nothing it uses. The engine's own optimizer step and FLOP count need neither."""
    code = (
        "import sys; from tests.conftest import small_config; from splitfed import run; "
        "run(small_config(algorithm=('minibatch_sfl', 'sfl_v2', 'fedavg'), rounds=1, local_iters=1)); "
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path):
    config = tmp_path / "exp.toml"
    cfg = small_config(algorithm=("scaffold", "sl"), rounds=6, local_iters=25)
    config.write_text(cfg.to_toml())
    whole = _cli("run", "--config", str(config), "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    for kill_after in (2, 8):  # mid first algorithm; mid second
        out = tmp_path / f"killed{kill_after}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "splitfed.cli", "run", "--config", str(config), "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").exists() else 0
            if lines >= kill_after or proc.poll() is not None:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert not (out / "summary.csv").exists()
        resumed = _cli("run", "--out", str(out), "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert metrics(out) == metrics(tmp_path / "whole")


def test_resume_refuses_fewer_rounds_and_damaged_checkpoints(tmp_path):
    cfg = small_config(algorithm=("fedavg",), rounds=2, out=str(tmp_path / "r"))
    run(cfg)
    with pytest.raises(SplitfedError, match=r"fewer rounds \(1\) than it was set to \(2\)"):
        run(cfg.replace(rounds=1, resume=True))
    (tmp_path / "r" / "checkpoints" / "fedavg.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SplitfedError, match="fedavg.pt is unreadable .*delete it"):
        run(cfg.replace(resume=True))


def test_client_sampling_is_seeded_and_varies_by_round():
    from splitfed.setup import prepare

    setup = prepare(small_config(clients=10, clients_per_round=3))
    rounds = [setup.participants(r) for r in range(1, 6)]
    assert all(len(p) == 3 and p == sorted(set(p)) for p in rounds)
    assert len({tuple(p) for p in rounds}) > 1
    assert rounds == [prepare(setup.cfg).participants(r) for r in range(1, 6)]
    assert prepare(setup.cfg.replace(clients_per_round=None)).participants(1) == list(range(10))


def test_a_validation_split_is_held_out_of_training_the_same_for_every_seed(tmp_path):
    from splitfed.setup import prepare

    setups = [prepare(small_config(validation_samples=50, seed=s)) for s in (0, 1)]
    full = prepare(small_config())
    for setup in setups:
        data = setup.data
        assert len(data.val_y) == 50 and len(data.train_y) == len(full.data.train_y) - 50
        assert sum(setup.data_sizes) <= len(data.train_y)  # clients share only the rest
        # the held-out samples are not among the training samples
        rows = {tuple(x.flatten().tolist()) for x in data.val_x}
        assert not rows & {tuple(x.flatten().tolist()) for x in data.train_x}
    assert torch.equal(setups[0].data.val_x, setups[1].data.val_x)  # one draw, whatever the run seed
    result = run(small_config(validation_samples=50, algorithm=("fedavg",), out=str(tmp_path / "r")))
    assert all(0 <= r["val_accuracy"] <= 1 and r["val_loss"] > 0 for r in result.history)
    with pytest.raises(SplitfedError, match="validation_samples must be between 1 and"):
        prepare(small_config(validation_samples=10**6))


def test_eval_every_skips_evaluations_but_never_the_last_round_and_accuracy_per_class_adds_up(tmp_path):
    result = run(small_config(rounds=5, eval_every=2, algorithm=("fedavg",), out=str(tmp_path / "r")))
    evaluated = [r["round"] for r in result.history if "test_accuracy" in r]
    assert evaluated == [2, 4, 5]
    assert all("train_loss" in r for r in result.history)  # every round still trains and is recorded
    last = result.history[-1]
    setup_counts = torch.bincount(load_test_labels(result.config))
    per_class = torch.tensor(last["test_accuracy_per_class"], dtype=torch.float64)
    assert (
        abs(float((per_class * setup_counts).sum()) / int(setup_counts.sum()) - last["test_accuracy"]) < 1e-9
    )
    assert result.summary[0]["final_accuracy"] == last["test_accuracy"]


def load_test_labels(cfg):
    from splitfed.setup import load_data

    return load_data(cfg).test_y


def test_figures_off_writes_no_figure_and_a_resume_may_turn_them_on(tmp_path):
    out = tmp_path / "run"
    run(small_config(algorithm=("fedavg",), out=str(out), figures=False))
    assert not list(out.glob("*.png")) and not list(out.glob("*.svg"))
    assert (out / "summary.csv").is_file()
    run(small_config(algorithm=("fedavg",), out=str(out), rounds=3, figures=True, resume=True))
    assert (out / "accuracy.png").is_file() and (out / "accuracy.svg").is_file()


def test_a_run_records_what_produced_it_once_per_session(tmp_path):
    """provenance.json: the code (version, commit and a clean tree where the source is a git checkout),
    torch and CUDA, the device; a resume adds its own entry (it may run elsewhere)."""
    import subprocess

    import torch

    from splitfed.provenance import SOURCE

    out = tmp_path / "run"
    run(small_config(algorithm=("fedavg",), out=str(out), rounds=1))
    run(small_config(algorithm=("fedavg",), out=str(out), rounds=2, resume=True))
    sessions = json.loads((out / "provenance.json").read_text())
    assert len(sessions) == 2
    for entry in sessions:
        assert entry["torch"] == torch.__version__ and entry["cuda"] == torch.version.cuda
        assert entry["device"] == "cpu" and entry["deterministic"] is False
        # the CPU's vector instructions beside its model: they decide the last bits and the speed
        assert entry["device_name"].endswith(f"({torch.backends.cpu.get_cpu_capability()})")
        assert entry["splitfed"] and entry["python"] and entry["started"]
    head = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (not an installed wheel): the commit is on record
        assert sessions[0]["commit"] == head.stdout.strip() and isinstance(sessions[0]["clean"], bool)


def test_a_tree_is_clean_when_only_the_studies_results_changed(tmp_path):
    # a sweep writes its study's tables (experiments/*/results/) while its runs record provenance: those
    # are outputs; a changed source file or grid is not
    import subprocess

    from splitfed.provenance import git_state

    def git(*args):
        subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True
        )

    package, results, grid = (
        tmp_path / "src/pkg",
        tmp_path / "experiments/paper/results/s",
        tmp_path / "experiments/paper",
    )
    package.mkdir(parents=True)
    results.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    (results / "runs.csv").write_text("run\n")
    (grid / "s.toml").write_text("lr = 0.01\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    assert git_state(package)["clean"] is True
    (results / "runs.csv").write_text("run\nabc\n")
    assert git_state(package)["clean"] is True
    (grid / "s.toml").write_text("lr = 0.02\n")
    assert git_state(package)["clean"] is False
    git("checkout", "-q", "--", "experiments/paper/s.toml")
    (package / "code.py").write_text("x = 2\n")
    assert git_state(package)["clean"] is False


def test_the_one_message_handler_writes_bare_lines_to_stdout_or_appends_to_a_file(tmp_path, capsys):
    import logging

    from splitfed._log import logging_only_to, message_handler

    log = logging.getLogger("splitfed")
    (tmp_path / "run.log").write_text("before\n")
    for handler in (message_handler(), message_handler(tmp_path / "run.log")):
        with logging_only_to(handler, logging.INFO):
            log.info("round 1")
        handler.close()
    assert capsys.readouterr().out == "round 1\n"
    assert (tmp_path / "run.log").read_text() == "before\nround 1\n"
