"""The shipped experiment grids run: their smallest points, shrunk to seconds, in the suite."""

from pathlib import Path

import pytest

from splitfed import run
from splitfed.analysis import load_groups, select_lr, tables
from splitfed.cli import main
from splitfed.data.datasets import find_fmnist
from splitfed.errors import SplitfedError
from splitfed.sweep import expand

ROOT = Path(__file__).resolve().parents[1]


def fmnist_available() -> bool:
    try:
        find_fmnist(None)
        return True
    except SplitfedError:
        return False


@pytest.mark.skipif(not fmnist_available(), reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.parametrize(
    ("grid", "pick"),
    [
        ("experiments/beyond/many-clients.toml", lambda p: p.config.clients == 10),
        ("experiments/beyond/many-clients.toml", lambda p: p.config.clients == 1000),
        ("experiments/beyond/vit-cuts.toml", lambda p: p.config.cut_layer == 4),
    ],
    ids=["many-clients-N10", "many-clients-N1000", "vit-cut-4"],
)
def test_a_grid_point_runs_as_written_but_short(tmp_path, grid, pick):
    point = next(p for p in expand(ROOT / grid, tmp_path) if pick(p))
    among = point.config.divergence.clients  # keep the suite fast: the draw's size is not the point here
    divergence = {"every": 1, "samples": 10, "clients": None if among is None else min(among, 10)}
    # no figures: what a run draws is test_run's and test_report's to check, not the grid's
    short = point.config.replace(rounds=2, local_iters=2, divergence=divergence, figures=False)
    result = run(short.replace(algorithm=("minibatch_sfl",), out=str(tmp_path / "run")))
    assert [r["round"] for r in result.history] == [1, 2]
    assert all(0 <= r["test_accuracy"] <= 1 for r in result.history)
    assert result.history[-1]["participants"] == (point.config.clients_per_round or point.config.clients)


GRIDS = sorted(p for p in (ROOT / "experiments").rglob("*.toml") if "[[grid]]" in p.read_text())


@pytest.mark.parametrize("grid", GRIDS, ids=[p.stem for p in GRIDS])
def test_every_shipped_grid_expands_to_valid_configs(tmp_path, grid):
    points = expand(grid, tmp_path)  # validates every point's config, as a sweep does before it starts
    assert points and len({p.name for p in points}) == len(points)


STUDIES = {  # results folder: the grids run to the end, and the grids of the rest (for a GPU), which write
    # into it too
    "paper/results/fmnist-epoch": (
        ("paper/fmnist-epoch.toml", "paper/fmnist-tuned.toml"),
        ("paper/fmnist-epoch-rest.toml", "paper/fmnist-tuned-rest.toml"),
    ),
    "paper/results/fmnist-epoch5": (("paper/fmnist-epoch5.toml",), ("paper/fmnist-epoch5-rest.toml",)),
    "paper/results/fmnist-epoch-drift": (
        ("paper/fmnist-epoch-drift.toml",),
        ("paper/fmnist-epoch-drift-rest.toml",),
    ),
    "beyond/results/many-clients": (("beyond/many-clients.toml",), ()),
    "beyond/results/vit-cuts": (("beyond/vit-cuts.toml",), ()),
    "edge/results/phone-time": (("edge/phone-time.toml",), ()),
}


@pytest.mark.parametrize("study", list(STUDIES), ids=[s.rpartition("/")[2] for s in STUDIES])
def test_a_results_grid_is_run_to_the_end_and_its_rest_names_runs_alike(tmp_path, study):
    # docs/results.md is reproduced by sweeping the main grid (every run already in the study's tables, by
    # its id) and reporting the folder; the -rest grid, for a GPU, writes into the same tables by the same ids
    grids, rest_grids = STUDIES[study]
    results = ROOT / "experiments" / study
    # what is committed: the tables and the grid (a sweep's run directories beside them are working state)
    assert {"grid.toml", "metrics.csv.gz", "partitions.csv", "runs.csv"} <= {
        p.name for p in results.iterdir()
    }
    main = {p.name for grid in grids for p in expand(ROOT / "experiments" / grid, tmp_path)}
    rest = {p.name for grid in rest_grids for p in expand(ROOT / "experiments" / grid, tmp_path)}
    tried = {r["run"] for r in tables.read_runs(results) if r["status"] in ("finished", "diverged")}
    assert main <= tried, sorted(main - tried)[:3]
    assert tried <= main | rest, sorted(tried - main - rest)[:3]


@pytest.mark.parametrize("study", list(STUDIES), ids=[s.rpartition("/")[2] for s in STUDIES])
def test_every_rate_chosen_in_a_committed_study_is_settled(study):
    # the paper's rate searches were staged (every rate in seed 0, the close ones in more seeds): no rate
    # left at fewer seeds may beat the chosen one on the seeds both ran, or docs/results.md reports a
    # choice that one more run could overturn (the message names the rate; the report names its seeds)
    groups = load_groups(ROOT / "experiments" / study, diverged_cells=True)
    unsettled = [
        f"{key}: {g.lr} beats {s.chosen.lr} on fewer seeds"
        for key, s in select_lr(groups, 5).items()
        for g in s.unsettled
    ]
    assert not unsettled, unsettled


def test_the_committed_report_is_rebuilt_byte_for_byte_from_the_committed_tables(tmp_path):
    # docs/results/<study>/ is what `splitfed report` makes of experiments/*/results/<study>/: the smallest
    # study rebuilt here, every text file and drawing (PNG encoding is left to the manual check of the
    # closing note: the same pinned matplotlib draws it, but a PNG is the first to change with a library)
    committed = ROOT / "docs" / "results" / "fmnist-epoch5"
    assert (
        main(["report", str(ROOT / "experiments/paper/results/fmnist-epoch5"), "--out", str(tmp_path)]) == 0
    )
    names = sorted(p.name for p in committed.iterdir() if p.suffix in (".md", ".csv", ".svg"))
    assert names == sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".md", ".csv", ".svg"))
    changed = [n for n in names if (tmp_path / n).read_bytes() != (committed / n).read_bytes()]
    assert not changed, f"rebuilt differently: {changed}"
