"""splitfed sweep and report on a tiny grid: expansion, resuming an interrupted sweep, the report."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitfed import Config, SplitfedError, run
from splitfed.analysis import load_study, tables
from splitfed.analysis.ids import run_id
from splitfed.cli import main
from splitfed.sweep import expand

REPO = Path(__file__).resolve().parents[1]

GRID = """
dataset = "synthetic"
synthetic_shape = [1, 8, 8]
synthetic_samples = 200
model = "digits_cnn"
cut_layer = 2
clients = 2
rounds = 4
local_iters = 2
batch_size = 8
divergence_every = 2
divergence_samples = 20
device = "cpu"
figures = false  # each run's own figures (test_run draws them): the report's are the study's

[[grid]]
algorithm = ["minibatch_sfl", "sfl_v2", "fedavg"]
non_iid_ratio = [0.0, 1.0]
seed = [0, 1]

[[grid]]
algorithm = ["minibatch_sfl"]
cut_layer = [1, 2]
non_iid_ratio = [0.0, 1.0]
seed = [0, 1]

[[grid]]
algorithm = ["centralized"]
non_iid_ratio = [0.0]
seed = [0, 1]
"""


def _without_times(text: str) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if not k.endswith("_time_s")} for line in text.splitlines()
    ]


def test_grid_expansion_names_and_deduplicates_points(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    points = expand(grid, tmp_path / "s")
    # 3 algorithms x 2 ratios x 2 seeds, + MiniBatch-SFL's cut 1 (cut 2 is already there), + centralized
    assert len(points) == 12 + 4 + 2
    cut1 = next(
        p for p in points if p.config.cut_layer == 1 and p.config.non_iid_ratio == 1.0 and not p.config.seed
    )
    assert cut1.config.algorithm == ("minibatch_sfl",) and cut1.name == run_id(cut1.config)  # named by its id
    assert all(p.config.out == str(tmp_path / "s" / p.name) for p in points)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = 2\n", "no \\[\\[grid\\]\\] table"),
        ("[[grid]]\nroundz = [1]\n", "'roundz' is not a config field"),
        ("[[grid]]\nrounds = 3\n", "rounds must be a non-empty list"),
        ("[[grid]]\nrounds = [0]\n", "rounds must be a positive integer"),
        ("out = 'x'\n[[grid]]\nseed = [1]\n", "out is set by the sweep"),
    ],
)
def test_bad_grids_are_refused(tmp_path, text, message):
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    with pytest.raises(SplitfedError, match=message):
        expand(grid, tmp_path / "s")


def test_sweep_resumes_and_the_report_checks_the_claims(tmp_path, capsys, monkeypatch):
    grid = tmp_path / "tiny.toml"
    grid.write_text(GRID)
    out = tmp_path / "sweep"
    assert main(["sweep", str(grid), "--out", str(out), "--workers", "2"]) == 0
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert len(rows) == 18 and {r["status"] for r in rows} == {"done"}
    finished = {r["run"]: (out / r["run"] / "metrics.jsonl").read_text() for r in rows}

    # One run interrupted after 2 of its 4 rounds, one never started: the sweep finishes both.
    victim, fresh = rows[0]["run"], rows[1]["run"]
    victim_config = next(p.config for p in expand(grid, out) if p.name == victim)
    shutil.rmtree(out / victim)
    shutil.rmtree(out / fresh)
    _forget(out, {victim, fresh})  # as a sweep stopped before it tabled them
    run(victim_config.replace(rounds=2, threads=max(1, (os.cpu_count() or 1) // 2)))  # as a worker of 2
    (out / victim / "summary.csv").unlink()  # as a kill before the end leaves it
    capsys.readouterr()
    assert main(["sweep", str(grid), "--out", str(out), "--workers", "2"]) == 0
    log = capsys.readouterr().out
    assert "16 already done" in log and "ETA" in log
    assert "sweep: 18/18 runs done, 72/72 rounds (100%)" in log
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert {r["status"] for r in rows} == {"done"} and {r["rounds_done"] for r in rows} == {"4"}
    assert sorted(r["run"] for r in tables.read_runs(out)) == sorted(finished)  # both tabled again, once
    assert {r.run: len(r.records) for r in load_study(out)} == dict.fromkeys(finished, 4)
    for name, text in finished.items():  # the re-run points match their first run exactly
        assert _without_times((out / name / "metrics.jsonl").read_text()) == _without_times(text), name

    monkeypatch.chdir(REPO)  # the report reads experiments/paper/claims.toml from the current directory
    assert main(["report", str(out)]) == 0
    report = (out / "report" / "report.md").read_text()
    assert "Claims from `experiments/paper/claims.toml`" in report
    assert "δ_c /param" in report and "δ_s /param" in report  # the cut-layer table, both sides
    assert "| 1.0 | SFL-V2 | 2 |" in report and "| 1.0 | FedAvg (FL) | 2 |" in report  # margins, paired
    for figure in ("accuracy_vs_round", "accuracy_vs_noniid", "cut_layer", "divergence_vs_noniid"):
        stem = out / "report" / f"{figure}_synthetic_digits_cnn_N2"
        assert stem.with_suffix(".png").stat().st_size > 10_000, figure
        assert stem.with_suffix(".svg").stat().st_size > 10_000, figure
    agg = list(csv.DictReader((out / "report" / "aggregate.csv").open()))
    assert {a["algorithm"] for a in agg} == {"minibatch_sfl", "sfl_v2", "fedavg", "centralized"}
    assert all(a["seeds"] == "2" for a in agg)
    assert len(list(csv.DictReader((out / "report" / "margins.csv").open()))) == 4  # 2 ratios x 2 baselines

    # --out puts the same report elsewhere (docs/results/ is made this way)
    assert main(["report", str(out), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").read_text() == report


def _forget(out: Path, runs: set[str]) -> None:
    """The study's runs.csv without ``runs`` (metrics.csv.gz keeps their rows: packing replaces them)."""
    kept = [r for r in tables.read_runs(out) if r["run"] not in runs]
    with (out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)


def test_report_of_a_directory_without_runs_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no runs in" in capsys.readouterr().err


def _id_of_seed(grid: Path, out: Path, seed: int) -> str:
    return next(p.name for p in expand(grid, out) if p.config.seed == seed)


def _training_sweep(tmp_path, seeds: int, sigint_ignored: bool = False) -> tuple[subprocess.Popen, Path]:
    """A sweep of ``seeds`` long runs in a subprocess (stderr piped), returned once its first run is
    training; and that run's metrics file."""
    grid = tmp_path / "long.toml"
    grid.write_text(  # rounds of one step each: many a second
        'rounds = 5000\nlocal_iters = 1\nclients = 2\ndivergence_every = 0\nalgorithm = "fedavg"\n'
        f"[[grid]]\nseed = {list(range(seeds))}\n"
    )
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "splitfed.cli", "sweep", str(grid), "--out", str(out)]
    if sigint_ignored:  # as a shell script's `splitfed sweep ... &` starts it: SIGINT ignored, inherited
        # (a shell rather than preexec_fn, which forks this process: a fork beside gRPC's threads, left by
        # the deployment tests that run in threads, can abort in the child)
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / _id_of_seed(grid, out, 0) / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.stat().st_size > 0):
        assert time.monotonic() < deadline and sweep.poll() is None, "the sweep never started its run"
        time.sleep(0.2)
    return sweep, metrics


def test_a_killed_sweep_leaves_no_worker_training_on(tmp_path):
    """kill -9 of the sweep: its worker notices within seconds and stops writing the run directory."""
    sweep, metrics = _training_sweep(tmp_path, seeds=1)
    sweep.kill()
    sweep.communicate()
    time.sleep(4)  # the worker's watch looks every second
    size = metrics.stat().st_size
    time.sleep(5)
    assert metrics.stat().st_size == size, "a worker went on training after its sweep was killed"


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "started-with-sigint-ignored"])
def test_ctrl_c_stops_a_sweep_at_once_with_one_line_and_no_worker_left(tmp_path, sigint_ignored):
    """SIGINT to the sweep alone (as when a scheduler stops it): it ends its runs now, instead of
    waiting for every queued run, says how to continue, and exits 130 -- also when it was started with
    SIGINT ignored, as a script's background job is."""
    sweep, metrics = _training_sweep(tmp_path, seeds=3, sigint_ignored=sigint_ignored)
    sweep.send_signal(signal.SIGINT)
    try:
        _, err = sweep.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        sweep.kill()
        raise AssertionError("the sweep went on after Ctrl-C") from None
    assert sweep.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "sweep interrupted with 0 of 3 runs done; the same command continues" in lines[0]
    size = metrics.stat().st_size
    time.sleep(3)
    assert metrics.stat().st_size == size, "a worker went on training after the sweep stopped"
    out = tmp_path / "sweep"
    assert not (
        out / _id_of_seed(tmp_path / "long.toml", out, 1)
    ).exists()  # queued runs dropped, not started


def test_the_report_leaves_out_divergence_never_measured(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitfed.analysis import Group, Setting
    from splitfed.analysis import figures as study_figures

    def history(algorithm: str, **extra: float) -> list[dict]:
        return [{"algorithm": algorithm, "round": r, "test_accuracy": 0.5, **extra} for r in (1, 2, 3)]

    groups = [
        Group(("synthetic", "cnn4", 2), a, 2, p, [history(a)]) for a in ("fedavg", "sfl_v2") for p in (0, 1)
    ]
    assert study_figures.divergence_vs_ratio(Setting(groups, tmp_path), plt) == []
    groups[0].histories = [history("fedavg", divergence_client_relative=1.0, divergence_server_relative=2.0)]
    lines = study_figures.divergence_vs_ratio(Setting(groups, tmp_path), plt)
    assert "| fedavg | 1.000 / 2.000 | – |" in lines


def test_a_grid_string_is_not_parsed_as_a_number(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('[[grid]]\nseed = ["1"]\n')
    with pytest.raises(SplitfedError, match=r"seed in \[\[grid\]\] of .* must be an integer, got '1'"):
        expand(grid, tmp_path / "s")
    grid.write_text('rounds = "2"\n[[grid]]\nseed = [1]\n')
    with pytest.raises(SplitfedError, match="rounds in .* must be an integer, got '2'"):
        expand(grid, tmp_path / "s")


def test_a_workers_warnings_go_to_its_runs_log(tmp_path, monkeypatch, capsys):
    import warnings

    from splitfed import Config, runner
    from splitfed.sweep import _run_point

    def warns(config):
        warnings.warn("about this run", UserWarning, stacklevel=1)
        return runner.RunResult(config, tmp_path / "r", [], {}, [])

    monkeypatch.setattr(runner, "run", warns)
    assert _run_point(Config(out=str(tmp_path / "r")), 1, tmp_path / "r.log") == ""
    assert "UserWarning: about this run" in (tmp_path / "r.log").read_text()
    assert "about this run" not in capsys.readouterr().err


def _grid_points(tmp_path, text):
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    return expand(grid, tmp_path / "s")


def test_points_are_named_by_run_id_distinct_for_distinct_values(tmp_path):
    """model_args 1, "1" and 1.0 read alike as text, and are three runs."""
    points = _grid_points(tmp_path, '[[grid]]\nmodel_args = [{width = 1}, {width = "1"}, {width = 1.0}]\n')
    names = [p.name for p in points]
    assert len(set(names)) == 3 and all(len(n) == 12 and int(n, 16) >= 0 for n in names), names
    assert [p.config.model_args["width"] for p in points] == [1, "1", 1.0]


def test_points_that_differ_only_where_they_run_are_one_run_and_refused(tmp_path):
    with pytest.raises(
        SplitfedError, match=r"differ only in data_dir \(where or how a run executes.*are one run"
    ):
        _grid_points(tmp_path, '[[grid]]\ndata_dir = ["a/b", "a_b"]\n')


def _finished_run(tmp_path, algorithms=("fedavg", "sl"), rounds=2):
    from splitfed.sweep import Point

    config = Config(algorithm=algorithms, rounds=rounds, out=str(tmp_path / "run"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(config.to_toml())
    lines = [json.dumps({"algorithm": a, "round": r}) for a in algorithms for r in range(1, rounds + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    with (run_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["algorithm", "rounds", "final_accuracy", "best_accuracy"])
        writer.writeheader()
        writer.writerows(
            {"algorithm": a, "rounds": rounds, "final_accuracy": 0.5, "best_accuracy": 0.6}
            for a in algorithms
        )
    return Point("run", {"seed": 0}, config), run_dir


def test_a_run_is_done_only_when_its_files_say_so_completely(tmp_path):
    from splitfed.sweep import _status, write_index

    point, run_dir = _finished_run(tmp_path)
    assert _status(point) == ("done", 4)
    summary, metrics = (run_dir / "summary.csv").read_text(), (run_dir / "metrics.jsonl").read_text()
    broken = {
        "empty summary": ("", metrics),
        "summary header only": (summary.splitlines()[0] + "\n", metrics),
        "summary missing an algorithm": ("".join(summary.splitlines(True)[:2]), metrics),
        "summary of fewer rounds": (summary.replace(",2,", ",1,"), metrics),
        "metrics missing a round": (summary, "".join(metrics.splitlines(True)[:3])),
        "metrics with a torn line": (summary, metrics[:-5]),
        "metrics doubled": (summary, metrics + metrics),
    }
    for name, (summary_text, metrics_text) in broken.items():
        (run_dir / "summary.csv").write_text(summary_text)
        (run_dir / "metrics.jsonl").write_text(metrics_text)
        assert _status(point)[0] == "partial", name
        rows = write_index([point], tmp_path)  # an unfinished run has no accuracy, and no crash
        assert rows[0]["status"] == "partial" and "final_accuracy" not in rows[0], name


def test_the_index_names_a_section_key_one_table_varies_and_another_leaves_at_its_default(tmp_path):
    # SFL-V2's schedule swept in one [[grid]] table and not in the other: the index row of every point
    # still says which schedule it ran (this crashed at the end of a sweep, after every run had finished)
    from splitfed.sweep import expand, write_index

    grid = tmp_path / "grid.toml"
    grid.write_text(
        'dataset = "synthetic"\nrounds = 1\n\n[[grid]]\nalgorithm = ["fedavg"]\n\n'
        '[[grid]]\nalgorithm = ["sfl_v2"]\nsfl_v2.schedule = ["interleaved"]\n'
    )
    points = expand(grid, tmp_path / "out")
    (tmp_path / "out").mkdir()
    rows = write_index(points, tmp_path / "out")
    assert [(r["algorithm"], r["sfl_v2.schedule"]) for r in rows] == [
        ("fedavg", "client_sequential"),
        ("sfl_v2", "interleaved"),
    ]
