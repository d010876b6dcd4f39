"""The torch.distributed executor: 2 gloo processes on the CPU train what one process trains.

Between one process and two, only sums are taken in another order (the fed server's all-reduce of each
rank's weighted sum, against one running sum): last-bit differences, on a model without kinks (see
tests/algorithms/test_execution.py) bounded like the batched executor's, atol 1e-5 after several steps.
At equal processes and threads a resumed run repeats the uninterrupted one exactly.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from splitfed import run
from splitfed.engine.checkpoint import read_run_checkpoint

from ..algorithms.helpers import EVERY_HOOK, SMOOTH_MODEL
from ..conftest import small_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, changes: dict) -> None:
    """One rank of the job, as torchrun would start it (its environment), running ``run()``."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from ..algorithms import helpers  # noqa: F401  (registers the smooth model in this process)

    run(small_config(**changes))


def run_ranks(world: int, **changes) -> None:
    mp.spawn(_rank, args=(world, _free_port(), changes), nprocs=world, join=True)


def final_states(out, name):
    saved = read_run_checkpoint(out / "checkpoints" / f"{name}.pt")
    return saved["w_c"], saved["w_s"], saved["history"]


CASE = dict(
    model=SMOOTH_MODEL,
    clients=6,
    clients_per_round=4,
    rounds=3,
    local_iters=3,
    lr=0.05,
    momentum=0.9,
    threads=1,
)


@pytest.mark.parametrize("name", ["minibatch_sfl", "sfl_v1", "fedavg"])
def test_two_processes_train_what_one_process_trains(tmp_path, name):
    run(small_config(**CASE, algorithm=(name,), out=str(tmp_path / "one")))
    run_ranks(2, **CASE, algorithm=(name,), out=str(tmp_path / "two"))
    one_c, one_s, one_history = final_states(tmp_path / "one", name)
    two_c, two_s, two_history = final_states(tmp_path / "two", name)
    for a, b in ((one_c, two_c), (one_s, two_s)):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(one_history, two_history, strict=True):
        assert a["participants"] == b["participants"] == 4
        for key in ("samples", "server_steps", "client_bytes_up", "client_bytes_down", "bytes"):
            assert a[key] == b[key], key  # the same messages, counted on the ranks that sent them
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    config = (tmp_path / "two" / "config.toml").read_text()
    assert "processes = 2" in config


def test_two_processes_train_what_one_process_trains_for_every_other_distributable_algorithm(tmp_path):
    # one job for all of them (processes cost seconds to start): control variates and per-client state
    # on the rank that owns the client, fed servers with state, an auxiliary part, a conversation of two
    # exchanges per iteration, corrections as a config
    names = ("scaffold", "fedadam", "fedbn", "sfl_local_loss", EVERY_HOOK)
    case = CASE | {"algorithm": names, "prox_mu": 0.1}
    run(small_config(**case, out=str(tmp_path / "one")))
    run_ranks(2, **case, out=str(tmp_path / "two"))
    for name in names:
        one_c, one_s, one_history = final_states(tmp_path / "one", name)
        two_c, two_s, two_history = final_states(tmp_path / "two", name)
        for a, b in ((one_c, two_c), (one_s, two_s)):
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
        for a, b in zip(one_history, two_history, strict=True):
            for key in ("samples", "server_steps", "client_bytes_up", "client_bytes_down", "bytes"):
                assert a[key] == b[key], (name, key)
            assert abs(a["train_loss"] - b["train_loss"]) < 1e-5, name


@pytest.mark.parametrize("name", ["sfl_v2", "sl", "ushaped_sl", "centralized"])
def test_what_cannot_spread_over_processes_is_refused_in_one_line(name):
    from splitfed.algorithms import create
    from splitfed.errors import SplitfedError
    from splitfed.executors.distributed import check_distributable

    with pytest.raises(SplitfedError, match="run it in one process") as e:
        check_distributable(create(small_config(), name))
    assert "\n" not in str(e.value)


def test_each_rank_holds_copies_only_of_its_own_clients():
    from splitfed.algorithms import create
    from splitfed.executors import make_executor
    from splitfed.executors.distributed import DistributedExecutor, Group
    from splitfed.setup import prepare

    setup = prepare(small_config(clients=40, clients_per_round=8))
    rounds = [setup.participants(r) for r in range(1, 3)]
    algo = create(setup.cfg, "minibatch_sfl")
    one = make_executor(algo, setup.context(), "sequential")
    assert one.sides["client"].num_copies == 8  # the round's participants, not the 40 clients
    rank = DistributedExecutor(algo, setup.context(), Group(1, 2, setup.device), False, rounds)
    owned = max(sum(n % 2 == 1 for n in r) for r in rounds)
    assert rank.sides["client"].num_copies == owned < 8


def _cli(*args):
    return [sys.executable, "-m", "splitfed", "run", *args]


# no figures: drawing them takes longer than these runs (test_run checks them)
BASE = [
    "--dataset", "synthetic", "--synthetic-shape", "1,8,8", "--synthetic-samples", "400",
    "--model", "digits_cnn", "--clients", "6", "--local-iters", "30", "--batch-size", "8",
    "--divergence-every", "0", "--threads", "1", "--device", "cpu", "--no-figures",
    "--algorithm", "minibatch_sfl", "--processes", "2",
]  # fmt: skip


def test_a_killed_rank_and_a_restart_with_resume_give_the_uninterrupted_metrics(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(_cli(*BASE, "--rounds", "4", "--out", str(tmp_path / "whole")), check=True, env=env)
    out = tmp_path / "killed"
    parent = subprocess.Popen(_cli(*BASE, "--rounds", "4", "--out", str(out)), env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text()
    ranks = [int(p) for p in children.split()]
    os.kill(ranks[1], signal.SIGKILL)  # rank 1, mid-run
    assert parent.wait(timeout=60) != 0
    done = metrics.read_text().count("\n")
    assert done < 4
    subprocess.run(_cli(*BASE, "--rounds", "4", "--out", str(out), "--resume"), check=True, env=env)
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in metrics.read_text().splitlines()]
    for a, b in zip(whole, resumed, strict=True):
        for key in ("round", "test_accuracy", "test_loss", "train_loss"):
            assert a[key] == b[key], (key, a["round"])


def test_rank_0_killed_by_a_signal_is_one_line_naming_it_not_a_bare_exit_status(tmp_path):
    out = tmp_path / "killed"
    parent = subprocess.Popen(
        _cli(*BASE, "--rounds", "20", "--out", str(out)), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text()
    ranks = [int(p) for p in children.split()]
    os.kill(ranks[0], signal.SIGKILL)  # rank 0, the one that speaks for the job
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 128 + signal.SIGKILL
    assert err.decode().strip() == (
        f"splitfed: error: rank 0 of 2 was killed by SIGKILL; the other ranks were stopped; continue with "
        f"--out {out} --resume"
    )


@pytest.mark.parametrize("name", ["sfl_v2", "sl", "centralized"])
def test_an_algorithm_whose_clients_take_turns_is_refused_in_one_line(tmp_path, name):
    args = [
        *BASE[:-4],
        "--algorithm",
        name,
        "--processes",
        "2",
        "--rounds",
        "1",
        "--out",
        str(tmp_path / "r"),
    ]
    p = subprocess.run(_cli(*args), capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "run it in one process" in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()


def _rank_result(rank: int, world: int, port: int, changes: dict, out: str) -> None:
    """One rank running ``run()``; what it returned saved to OUT/rank-<rank>.pt."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    result = run(small_config(**changes))
    models = {name: model.state_dict() for name, model in result.models.items()}
    torch.save((result.history, result.summary, models), Path(out) / f"rank-{rank}.pt")


def test_a_mixed_list_spreads_what_distributes_runs_the_rest_in_rank_0_and_every_rank_returns_it(
    tmp_path,
):
    case = CASE | {"algorithm": ("sfl_v2", "minibatch_sfl")}  # sfl_v2's turns do not spread
    one = run(small_config(**case, out=str(tmp_path / "one")))
    mp.spawn(
        _rank_result, args=(2, _free_port(), case | {"out": str(tmp_path / "two")}, str(tmp_path)), nprocs=2
    )
    history, summary, models = torch.load(tmp_path / "rank-0.pt", weights_only=False)
    assert [r["algorithm"] for r in history] == [r["algorithm"] for r in one.history]  # the config's order
    assert [row["algorithm"] for row in summary] == ["sfl_v2", "minibatch_sfl"]
    for a, b in zip(one.history, history, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5, a["algorithm"]
    for name in case["algorithm"]:
        for key, value in one.models[name].state_dict().items():
            torch.testing.assert_close(models[name][key], value, rtol=1e-4, atol=1e-5)
    # rank 1 returns rank 0's result (it trained none of sfl_v2 and reports no rounds of its own)
    history_1, summary_1, models_1 = torch.load(tmp_path / "rank-1.pt", weights_only=False)
    assert history_1 == history and summary_1 == summary
    for name in case["algorithm"]:
        for key, value in models[name].items():
            assert torch.equal(models_1[name][key], value), (name, key)


def test_processes_with_a_mixed_list_print_one_table(tmp_path):
    args = [*BASE[:-4], "--algorithm", "sfl_v2,fedavg", "--processes", "2", "--rounds", "1"]
    p = subprocess.run(_cli(*args, "--out", str(tmp_path / "r")), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    table = [line.split()[0] for line in p.stdout.splitlines() if line.startswith(("sfl_v2 ", "fedavg "))]
    assert table == ["sfl_v2", "fedavg"], p.stdout
    assert "2 processes" in p.stdout


def _rank_with(rank: int, world: int, port: int, changes: list[dict]) -> None:
    _rank(rank, world, port, changes[rank])


@pytest.mark.parametrize("other", [{"lr": 0.2}, {"seed": 1}, {"rounds": 4}, {"clients": 8}])
def test_a_rank_started_with_another_config_is_refused_by_every_rank(other):
    case = CASE | {"algorithm": ("minibatch_sfl",), "divergence_every": 0}
    with pytest.raises(mp.ProcessRaisedException, match="started with another config than rank 0") as e:
        mp.spawn(_rank_with, args=(2, _free_port(), [case, case | other]), nprocs=2, join=True)
    assert f"{next(iter(other))} = " in str(e.value)
