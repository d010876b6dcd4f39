"""docs/algorithms.md's tutorial runs as written: a user's algorithm from the user's own module, from the
command line (``--algorithm pkg.module:Class``) and from Python (the class itself), registered nowhere."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitfed import run
from splitfed.errors import SplitfedError
from splitfed.executors.distributed import check_distributable

from .conftest import small_config

DOC = Path(__file__).parent.parent / "docs" / "algorithms.md"


def blocks(lang: str) -> list[str]:
    tutorial = DOC.read_text().split("## Your own algorithm, in one page")[1]
    return re.findall(rf"```{lang}\n(.*?)```", tutorial, re.S)


@pytest.fixture
def mypkg(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "robust.py").write_text(blocks("python")[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def test_the_tutorial_algorithm_runs_from_the_command_line_as_written(mypkg):
    (command,) = [line for line in blocks("bash")[0].splitlines() if line.strip()]
    argv = command.split()
    assert argv[:2] == ["splitfed", "run"]
    done = subprocess.run(
        [sys.executable, "-m", "splitfed.cli", *argv[1:], "--divergence-every", "0", "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=mypkg,
    )
    assert done.returncode == 0, done.stderr
    assert "mypkg.robust:TrimmedFedAvg" in done.stdout + done.stderr and "fedavg" in done.stdout + done.stderr


def test_the_tutorial_algorithm_runs_from_python_as_written_and_refuses_processes(mypkg):
    exec(blocks("python")[1], {})  # the page's own example
    assert (mypkg / "runs" / "trimmed" / "summary.csv").is_file()
    from mypkg.robust import TrimmedFedAvg

    with pytest.raises(SplitfedError, match="not an average .* run it in one process"):
        check_distributable(TrimmedFedAvg(small_config()))


def test_the_tutorial_trimmed_mean_with_nothing_trimmed_is_fedavg(mypkg):
    from mypkg.robust import TrimmedFedAvg

    class Untrimmed(TrimmedFedAvg):
        trim = 0.0

    cfg = small_config(rounds=2, divergence_every=0)
    mine = run(cfg.replace(algorithm=(Untrimmed, "fedavg")))
    a, b = (mine.models[name].state_dict() for name in mine.config.algorithm)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
