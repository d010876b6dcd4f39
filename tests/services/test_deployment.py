"""Real processes on loopback: the deployment trains what the simulation trains, and survives faults."""

import importlib.util
import json

import pytest

from splitfed.cli import main
from splitfed.engine.record import DEPLOYMENT, FIELDS, SIMULATION, fields, record_problem
from splitfed.executors import train
from splitfed.setup import prepare

from ..algorithms.helpers import EVERY_HOOK, SMOOTH_MODEL, TEST_ALGORITHM
from .harness import (
    Roles,
    assert_states_close,
    deployed_model,
    deployment,
    metrics_lines,
    run_in_threads,
    simulated_model,
    simulated_run,
    tiny_config,
    wait_for,
)


@pytest.mark.parametrize(
    "changes",
    [
        {"algorithm": ("minibatch_sfl",)},
        {"algorithm": ("minibatch_sfl",), "wire_dtype": "bfloat16", "momentum": 0.9},
        {"algorithm": ("sfl_v2",)},
        {"algorithm": ("sfl_v2",), "sflv2_schedule": "interleaved"},
        {"algorithm": ("fedavg",)},
        {"algorithm": ("sfl_v1",), "momentum": 0.9},
        {"algorithm": ("sl",)},
    ],
    ids=[
        "minibatch_sfl",
        "minibatch_sfl-bf16-momentum",
        "sfl_v2",
        "sfl_v2-interleaved",
        "fedavg",
        "sfl_v1-momentum",
        "sl",
    ],
)
def test_the_deployment_trains_the_simulations_models(tmp_path, changes):
    # Every role in a thread of this process (gRPC and TLS on loopback as between machines): the math of
    # each algorithm's deployment. Role processes, kills and restarts are the tests below and test_faults.
    config = tiny_config(tmp_path, **changes)
    config_file, config, _ = deployment(tmp_path, config)
    history, deploy = run_in_threads(config_file)
    w_c, w_s = deployed_model(deploy)
    sim_c, sim_s = simulated_model(config)
    assert_states_close(w_c, sim_c)
    assert_states_close(w_s, sim_s)
    assert [r["round"] for r in history] == [1, 2, 3] and all(r["participants"] == 3 for r in history)
    _, sim_history, _ = train(config.algorithm[0], prepare(config.replace(out=None)))
    for deployed, simulated in zip(history, sim_history, strict=True):  # the same messages, counted
        assert deployed["samples"] == simulated["samples"]
        up = zip(deployed["client_bytes_up"], simulated["client_bytes_up"], strict=True)
        assert all(wire >= counted for wire, counted in up)  # + headers and framing
        assert abs(deployed["train_loss"] - simulated["train_loss"]) < 1e-4
        rates = ("lr_client", "lr_server")
        assert [deployed[k] for k in rates] == [simulated[k] for k in rates]
        assert_one_record_schema(deployed, simulated)


def assert_one_record_schema(deployed: dict, simulated: dict) -> None:
    """Both sides write a round's record as engine/record.py defines it: the same keys but for those it
    marks as one side's alone (a key either side adds outside the definition fails here)."""
    assert set(deployed) <= set(fields(DEPLOYMENT)), set(deployed) - set(fields(DEPLOYMENT))
    assert set(simulated) <= set(fields(SIMULATION)), set(simulated) - set(fields(SIMULATION))
    one_side = {k for k, f in FIELDS.items() if f.only}
    assert set(deployed) - one_side == set(simulated) - one_side
    assert record_problem(deployed, deployed["round"]) is None
    assert record_problem(simulated, simulated["round"]) is None


FEDBN_ON_RESNET = {"algorithm": ("fedbn",), "model": "resnet18", "model_args": {"width": 4}}
FEDBN_ON_RESNET |= {"synthetic_shape": (3, 8, 8)}  # normalisation layers on both sides of the cut


@pytest.mark.parametrize(
    "changes",
    [
        {"algorithm": (TEST_ALGORITHM,)},
        {"algorithm": (EVERY_HOOK,), "model": SMOOTH_MODEL},
        {"algorithm": ("scaffold",)},
        {"algorithm": ("fedprox",), "prox_mu": 0.5},
        {"algorithm": ("fedadam",)},
        {
            "algorithm": ("fedbn",),
            "model": "resnet18",
            "model_args": {"width": 4},
            "synthetic_shape": (3, 8, 8),
        },
        {"algorithm": ("ushaped_sl",)},
        {"algorithm": ("sfl_local_loss",)},
        {"algorithm": ("minibatch_sfl",), "control_variates": True, "prox_mu": 0.1},
    ],
    ids=lambda c: "-".join([c["algorithm"][0], *(k for k in c if k in ("control_variates", "prox_mu"))]),
)
def test_every_algorithm_and_one_defined_in_the_tests_deploy_and_train_the_simulations_models(
    tmp_path, changes
):
    # the every-hook algorithm: two exchanges per iteration, a client objective from the client's own
    # state, extras up, a fed server with state that averages by name; the others each their own parts
    config = tiny_config(tmp_path, **changes)
    config_file, config, _ = deployment(tmp_path, config)
    history, deploy = run_in_threads(config_file)
    assert [r["round"] for r in history] == [1, 2, 3]
    w_c, w_s = deployed_model(deploy)
    sim_c, sim_s, sim_history = simulated_run(config)
    assert_states_close(w_c, sim_c)
    assert_states_close(w_s, sim_s)
    for deployed, simulated in zip(history, sim_history, strict=True):
        assert abs(deployed["train_loss"] - simulated["train_loss"]) < 1e-4


def test_centralized_has_nothing_to_deploy(tmp_path, capsys):
    assert main(["launch", "--algorithm", "centralized", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "union of the clients' data in one place" in err


@pytest.mark.parametrize("algorithm", ["minibatch_sfl", "sl"])
def test_launch_prints_the_table_and_counts_the_bytes_on_the_wire(tmp_path, capsys, algorithm):
    argv = [
        "launch",
        "--algorithm",
        algorithm,
        "--clients",
        "3",
        "--dataset",
        "synthetic",
        "--synthetic-shape",
        "1,8,8",
        "--synthetic-samples",
        "240",
        "--model",
        "digits_cnn",
        "--rounds",
        "2",
        "--local-iters",
        "3",
        "--batch-size",
        "8",
        "--divergence-every",
        "0",
        "--device",
        "cpu",
        "--no-figures",  # the table and the bytes are the point here; the launch below draws figures
        "--workdir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{algorithm}] round   2/2" in out and "final acc" in out and f"{algorithm}  " in out
    # the wire carries what the simulation counts, plus framing: within 1% for the per-iteration traffic
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    wire = record["wire_bytes"]
    smashed = 3 * 3 * 8 * (32 * 4 * 4) * 4  # clients x tau x b x (32x4x4 floats) x 4 bytes
    labels = 3 * 3 * 8 * 8
    assert smashed + labels <= wire["main_server_in"] <= 1.01 * (smashed + labels)
    assert smashed <= wire["main_server_out"] <= 1.01 * smashed
    assert len(record["client_bytes_up"]) == 3
    if importlib.util.find_spec("tensorboard") is not None:  # the deployment's run has its scalars too
        assert any((tmp_path / "run" / "tensorboard" / algorithm).iterdir())


@pytest.mark.parametrize("victim", ["main_server", "fed_server"])
def test_a_server_killed_mid_run_restarts_and_the_result_is_unchanged(tmp_path, victim):
    config = tiny_config(tmp_path, rounds=4, local_iters=12 if victim == "main_server" else 6)
    config_file, config, deploy = deployment(tmp_path, config)
    roles = Roles(config_file, config.clients)
    # after round 1 for the main server (so it dies mid-round 2), after round 2 for the fed server
    wait_for(lambda: metrics_lines(tmp_path / "run") >= (1 if victim == "main_server" else 2))
    roles.kill(victim)
    roles.start(victim)
    codes = roles.wait()
    assert set(codes.values()) == {0}, {k: roles.log(k)[-2000:] for k in codes}
    assert "resumed after round" in roles.log(victim)
    w_c, w_s = deployed_model(deploy)
    sim_c, sim_s = simulated_model(config)
    assert_states_close(w_c, sim_c)
    assert_states_close(w_s, sim_s)
    assert metrics_lines(tmp_path / "run") == 4


@pytest.mark.alone  # a client slowed by a test beside it past the 2 s iteration timeout is dropped too
def test_a_client_that_dies_is_dropped_and_rejoins_when_back(tmp_path):
    config = tiny_config(tmp_path, rounds=6, local_iters=4)
    config_file, config, _ = deployment(
        tmp_path, config, straggler_policy="drop", iteration_timeout_s=2.0, round_timeout_s=20.0
    )
    roles = Roles(config_file, config.clients)
    wait_for(lambda: metrics_lines(tmp_path / "run") >= 1)
    roles.kill("client_2")
    wait_for(lambda: metrics_lines(tmp_path / "run") >= 3)  # rounds go on without it
    roles.start("client", 2)
    codes = roles.wait()
    assert codes["fed_server"] == 0 and codes["client_0"] == 0 and codes["client_2"] == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6
    assert any(r["participants"] == 2 and 2 in r["dropped_clients"] for r in records)  # logged
    assert records[-1]["participants"] == 3 and records[-1]["dropped_clients"] == []  # back


def test_a_role_with_bad_flags_is_one_line_and_exit_2(tmp_path, capsys):
    config_file, _, _ = deployment(tmp_path, tiny_config(tmp_path))
    used = tmp_path / "used"  # a --out that holds a run already: refused before anything starts
    used.mkdir()
    (used / "config.toml").write_text("")
    for argv, message in [
        (["client", "--config", str(config_file), "--id", "7"], "--id must be in 0..2, got 7"),
        (["main-server", "--config", str(config_file), "--threads", "0"], "threads must be a positive"),
        (["fed-server", "--config", str(tmp_path / "nope.toml")], "cannot read config file"),
        (["launch", "--restarts", "-1", "--workdir", str(tmp_path / "w")], "--restarts must be 0 or more"),
        (["launch", "--out", str(used), "--workdir", str(tmp_path / "w")], "already holds a run"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)


def test_a_launch_of_several_algorithms_is_a_run_like_splitfed_run(tmp_path, capsys, monkeypatch):
    """`splitfed launch` with two algorithms and a workdir relative to the current directory: one
    deployment after the other, then one run directory as `splitfed run` writes it (config, metrics,
    summary, figures, models) whose table holds the simulation's numbers, and `splitfed export` works."""
    import csv

    import torch

    from splitfed import Config, run

    monkeypatch.chdir(tmp_path)
    flags = ["--algorithm", "minibatch_sfl,fedavg", "--clients", "2", "--dataset", "synthetic"]
    flags += ["--synthetic-shape", "1,8,8", "--synthetic-samples", "160", "--model", "digits_cnn"]
    flags += ["--rounds", "2", "--local-iters", "2", "--batch-size", "8", "--divergence-every", "0"]
    flags += ["--device", "cpu", "--threads", "1"]
    assert main(["launch", *flags, "--workdir", "demo", "--out", "run"]) == 0
    out = capsys.readouterr().out
    assert out.count("final acc") >= 1 and "results in run:" in out
    config = Config.from_toml(tmp_path / "run" / "config.toml")
    assert config.algorithm == ("minibatch_sfl", "fedavg")
    simulated = run(config.replace(out=str(tmp_path / "sim")))
    with (tmp_path / "run" / "summary.csv").open() as f:
        deployed = {row["algorithm"]: row for row in csv.DictReader(f)}
    for row in simulated.summary:
        got = deployed[row["algorithm"]]
        assert float(got["final_accuracy"]) == pytest.approx(row["final_accuracy"], abs=1e-6)
        assert float(got["final_test_loss"]) == pytest.approx(row["final_test_loss"], rel=1e-4)
    assert (tmp_path / "run" / "accuracy.png").is_file()
    assert main(["export", "run", "--algorithm", "fedavg", "--out", "fedavg.pt"]) == 0
    exported = torch.load(tmp_path / "fedavg.pt")
    for name, value in simulated.models["fedavg"].state_dict().items():
        assert torch.allclose(exported[name], value, atol=1e-5), name


def test_launch_restarts_a_role_that_dies_and_ends_no_healthy_role(tmp_path):
    """launch used to SIGTERM every healthy role 30 s after its fed server died; now a role that dies is
    reported and, with --restarts, started again: the run ends whole, every other role ending by itself."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    argv = [sys.executable, "-m", "splitfed", "launch", "--clients", "2", "--dataset", "synthetic"]
    argv += ["--synthetic-shape", "1,8,8", "--synthetic-samples", "160", "--model", "digits_cnn"]
    argv += ["--rounds", "4", "--local-iters", "6", "--batch-size", "8", "--divergence-every", "0"]
    argv += ["--device", "cpu", "--threads", "1", "--no-figures", "--workdir", str(tmp_path / "work")]
    argv += ["--out", str(tmp_path / "run"), "--restarts", "1"]
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def role(name):
        for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
            if name in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
                return int(pid)
        return None

    wait_for(lambda: metrics_lines(tmp_path / "run") >= 1, timeout=120)
    others = {name: role(name) for name in ("main-server", "--id 0", "--id 1")}
    os.kill(role("fed-server"), signal.SIGKILL)
    time.sleep(0.5)
    assert all(role(name) == pid for name, pid in others.items())  # nobody else was touched
    out, _ = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, out[-3000:]
    assert "launch: fed_server exited with -9; starting it again (0 restarts left)" in out
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]
