"""experiments/paper/lease.sh, the script a GPU lease runs: a mistake is one line and exit 2 before anything
starts, and a lease sweeps its grid and hands the study's tables to $OUT (here on the CPU, a tiny grid)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEASE = ROOT / "experiments/paper/lease.sh"


def lease(cwd: Path, *args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # its python3: this one
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(LEASE), *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, with_out, says",
    [
        ((), True, "usage: lease.sh GRID STUDY [SECONDS] [WORKERS] (got 0 arguments)"),
        (("no-such.toml", "s"), True, "no grid file no-such.toml"),
        (("grid.toml", "s", "8m"), True, "SECONDS must be a positive integer, got '8m'"),
        (("grid.toml", "s"), False, "$OUT is not set"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(tmp_path, args, with_out, says):
    (tmp_path / "grid.toml").write_text("[[grid]]\nseed = [0]\n")
    done = lease(tmp_path, *args, out=tmp_path if with_out else None)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr
    assert done.stdout == ""


def test_a_lease_sweeps_its_grid_and_hands_the_tables_to_out(tmp_path):
    (tmp_path / "src").symlink_to(ROOT / "src")  # the script runs from a repository root
    (tmp_path / "grid.toml").write_text(
        'dataset = "synthetic"\nsynthetic.shape = [1, 28, 28]\nsynthetic.samples = 64\nmodel = "cnn4"\n'
        "clients = 2\nbatch_size = 8\nrounds = 1\nlocal_iters = 1\ndivergence.every = 0\n"
        "[[grid]]\nseed = [0, 1]\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    done = lease(tmp_path, "grid.toml", "tiny", "120", "2", out=out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sweep ended with 0" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv.gz", "partitions.csv", "runs.csv"]
    study = tmp_path / "experiments/paper/results/tiny"
    assert (out / "runs.csv").read_bytes() == (study / "runs.csv").read_bytes()
    assert (out / "runs.csv").read_text().count("finished") == 2


def test_a_sweep_that_fails_fails_the_lease(tmp_path):
    (tmp_path / "src").symlink_to(ROOT / "src")
    (tmp_path / "grid.toml").write_text(
        'dataset = "synthetic"\nmodel = "no-such-model"\n[[grid]]\nseed = [0]\n'
    )
    done = lease(tmp_path, "grid.toml", "tiny", "60", "1", out=tmp_path)
    assert done.returncode == 2
    assert "unknown model 'no-such-model'" in done.stderr


def test_a_sweep_stopped_in_time_is_a_lease_that_did_its_job(tmp_path):
    # SIGINT at SECONDS: the sweep stops (its runs resume on the next machine) and the lease exits 0
    (tmp_path / "src").symlink_to(ROOT / "src")
    (tmp_path / "grid.toml").write_text(
        'dataset = "synthetic"\nsynthetic.shape = [1, 28, 28]\nsynthetic.samples = 64\nmodel = "cnn4"\n'
        "clients = 2\nbatch_size = 8\nrounds = 100000\nlocal_iters = 1\ndivergence.every = 0\n"
        "[[grid]]\nseed = [0]\n"
    )
    done = lease(tmp_path, "grid.toml", "tiny", "4", "1", out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sweep ended with 124" in done.stdout
