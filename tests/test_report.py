"""What a person reads: the run's table and its legend, the figures' look, the lazy package import, and the
sweep report's numbers on hand-written runs whose every number is known."""

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from splitfed.errors import SplitfedError

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from splitfed import analysis, plotstyle
from splitfed import report as run_report
from splitfed.analysis import Claims, Group, Setting, load_claims, load_groups, select_lr
from splitfed.analysis import figures as study_figures
from splitfed.plotstyle import STYLES
from splitfed.report import TABLE_LEGEND, format_table, plot_run, run_figures, summarize

REPO = Path(__file__).resolve().parents[1]


def _record(algorithm: str, rnd: int, acc: float, **extra: float) -> dict:
    return {
        "algorithm": algorithm,
        "round": rnd,
        "test_accuracy": acc,
        "test_loss": 1.0,
        "train_loss": 1.0 / rnd,
        "train_time_s": 0.25,
        "round_time_s": 1.0,
        "bytes_up_per_client": 2e6,
        "bytes_down_per_client": 1e6,
        "client_flops": 3e9,
        "server_flops": 4e9,
        **extra,
    }


def _history(algorithms: list[str], rounds: int = 3, **extra: float) -> list[dict]:
    # sfl_v1 and fedavg get identical numbers, as under plain SGD
    return [_record(a, r, 0.1 * r, **extra) for a in algorithms for r in range(1, rounds + 1)]


# ---------------------------------------------------------------------------------------------------------
# the run's table


def test_the_table_names_both_round_times_and_prints_a_legend_of_its_columns():
    rows = summarize(_history(["minibatch_sfl", "fedavg"]), ["minibatch_sfl", "fedavg"])
    assert rows[0]["train_s_per_round"] == 0.25 and rows[0]["round_s_per_round"] == 1.0
    table = format_table(rows).splitlines()
    assert "train s/rd" in table[0] and "round s/rd" in table[0] and "s/round" not in table[0]
    assert table[-1] == TABLE_LEGEND
    for abbreviation in ("div c (rel)", "train s/rd", "round s/rd", "MB up|dn/cl/rd", "GFLOP/rd"):
        assert abbreviation in TABLE_LEGEND, abbreviation
    assert TABLE_LEGEND in (REPO / "README.md").read_text(), "README's 'What a run prints' lacks the legend"


def test_a_record_without_round_time_shows_a_dash_not_an_error():
    history = [{k: v for k, v in r.items() if k != "round_time_s"} for r in _history(["fedavg"])]
    rows = summarize(history, ["fedavg"])
    assert math.isnan(rows[0]["round_s_per_round"])
    assert "–" in format_table(rows).splitlines()[2]


# ---------------------------------------------------------------------------------------------------------
# figures


def _lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_every_algorithm_has_its_own_colour_line_style_and_marker():
    looks = list(STYLES.values())
    for attribute in ("color", "linestyle", "marker"):
        values = [getattr(s, attribute) for s in looks]
        assert len(set(map(str, values))) == len(values), attribute
    assert plotstyle.label("fedavg") == "FedAvg (FL)" and plotstyle.label("my_algo") == "my_algo"


def test_the_run_and_sweep_figures_draw_each_algorithm_from_the_one_mapping(tmp_path):
    # one definition, imported, not copied
    assert study_figures.style is plotstyle.style and run_report.line_kwargs is plotstyle.line_kwargs
    algorithms = ["minibatch_sfl", "sfl_v1", "fedavg", "centralized"]
    figures = run_figures(
        _history(algorithms, divergence_client=1.0, divergence_client_relative=1.0), algorithms, "t"
    )
    ax = figures["accuracy"].axes[0]
    drawn = _lines(ax)
    assert set(drawn) == {plotstyle.label(a) for a in algorithms}
    for a in algorithms:
        line, look = drawn[plotstyle.label(a)], STYLES[a]
        assert line.get_color() == matplotlib.colors.to_hex(look.color) or line.get_color() == look.color
        assert line.get_marker() == look.marker
    # identical curves (SFL-V1 and FedAvg) stay apart: different dashes and markers
    v1, fl = drawn["SFL-V1"], drawn["FedAvg (FL)"]
    assert STYLES["sfl_v1"].linestyle != STYLES["fedavg"].linestyle and v1.get_marker() != fl.get_marker()
    for a in algorithms:  # drawn with its own line style
        expected = matplotlib.lines.Line2D([], [], linestyle=STYLES[a].linestyle).get_linestyle()
        assert drawn[plotstyle.label(a)].get_linestyle() == expected, a

    groups = [Group(("synthetic", "cnn4", 2), a, 2, 0.5, [_history([a])], [0]) for a in algorithms]
    setting = Setting(groups, tmp_path)
    study_figures.accuracy_vs_round(setting, plt)
    swept = _lines(setting.figures["accuracy_vs_round"].axes[0])
    for a in algorithms:
        assert swept[plotstyle.label(a)].get_color() == drawn[plotstyle.label(a)].get_color(), a
        assert swept[plotstyle.label(a)].get_marker() == drawn[plotstyle.label(a)].get_marker(), a
    for fig in (*figures.values(), setting.figures["accuracy_vs_round"]):
        plt.close(fig)


def test_round_axes_tick_whole_rounds_only(tmp_path):
    figures = run_figures(_history(["fedavg"], rounds=3), ["fedavg"], "t")
    groups = [Group(("synthetic", "cnn4", 2), "fedavg", 2, 0.5, [_history(["fedavg"])], [0])]
    setting = Setting(groups, tmp_path)
    study_figures.accuracy_vs_round(setting, plt)
    for ax in (*figures["accuracy"].axes, setting.figures["accuracy_vs_round"].axes[0]):
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator)
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        plt.close(ax.figure)


def test_a_run_writes_each_figure_as_png_and_svg_and_says_which(tmp_path):
    algorithms = ["minibatch_sfl", "fedavg"]
    paths = plot_run(
        _history(algorithms, divergence_client=1.0, divergence_client_relative=1.0), algorithms, tmp_path, "t"
    )
    names = sorted(p.name for p in paths)
    stems = ["accuracy", "accuracy_vs_bytes", "accuracy_vs_client_flops", "divergence"]
    assert names == sorted(f"{stem}.{fmt}" for stem in stems for fmt in ("png", "svg"))
    for p in paths:
        assert p.stat().st_size > 5_000, p
    assert (tmp_path / "accuracy.svg").read_text().lstrip().startswith("<?xml")
    # without divergence, no divergence figure (and it is not claimed)
    (tmp_path / "nodiv").mkdir()
    paths = plot_run(_history(algorithms), algorithms, tmp_path / "nodiv", "t")
    assert sorted(p.name for p in paths) == sorted(f"{s}.{fmt}" for s in stems[:3] for fmt in ("png", "svg"))


# ---------------------------------------------------------------------------------------------------------
# the package import


def test_importing_the_cli_does_not_import_torch():
    code = "import splitfed.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_package_still_exports_its_public_names():
    import splitfed

    for name in splitfed.__all__:
        assert getattr(splitfed, name) is not None, name
    assert splitfed.Config.__name__ == "Config" and callable(splitfed.run)
    with pytest.raises(AttributeError):
        splitfed.no_such_name  # noqa: B018


# ---------------------------------------------------------------------------------------------------------
# the sweep report, on runs written by hand

# Test accuracy at rounds 1..6 of seed 0; seed 1 adds OFFSET[algorithm]. Validation accuracy is constant.
# Validation prefers the other lr than test accuracy for every algorithm, so choosing on test would show.
TEST = {
    ("minibatch_sfl", 0.01): [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    ("minibatch_sfl", 0.1): [0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    ("sfl_v2", 0.01): [0.1, 0.2, 0.3, 0.4, 0.5, 0.7],
    ("sfl_v2", 0.1): [0.3, 0.4, 0.5, 0.55, 0.6, 0.65],
    ("fedavg", 0.01): [0.2] * 6,
    ("fedavg", 0.1): [0.25] * 6,
}
VAL = {
    ("minibatch_sfl", 0.01): 0.5,
    ("minibatch_sfl", 0.1): 0.6,
    ("sfl_v2", 0.01): 0.6,
    ("sfl_v2", 0.1): 0.5,
    ("fedavg", 0.01): 0.4,
    ("fedavg", 0.1): 0.3,
}
OFFSET = {"minibatch_sfl": 0.06, "sfl_v2": 0.02, "fedavg": 0.0}
CLAIMS = """
algorithm = "minibatch_sfl"
baselines = ["sfl_v2", "fedavg"]
last_k = 3
targets = [0.45, 0.75]
reference_lr = 0.01
[[paper]]
baseline = "sfl_v2"
margin = 24.1
where = { non_iid_ratio = 0.95 }
text = "up to 24.1% over SFL"
"""


def _write_run(
    run_dir: Path, lr: float, seed: int, records: list[dict], cut: int = 2, clients: int = 2, extra: str = ""
) -> None:
    run_dir.mkdir(parents=True)
    algorithms = ", ".join(f'"{a}"' for a in dict.fromkeys(r["algorithm"] for r in records))
    (run_dir / "config.toml").write_text(
        f'algorithm = [{algorithms}]\ndataset = "synthetic"\nmodel = "digits_cnn"\ncut_layer = {cut}\n'
        f'clients = {clients}\npartition = "non_iid_ratio"\nnon_iid_ratio = 0.95\nlr = {lr}\nseed = {seed}\n'
        f'rounds = 6\nout = "{run_dir}"\nthreads = {seed + 1}\n'  # out and threads differ: not grouping keys
        + extra
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "summary.csv").write_text("algorithm\n")  # finished


def _fake_sweep(root: Path, with_val: bool = True) -> Path:
    """lr 0.01 and 0.1, seeds 0 and 1, three algorithms per run; plus a run of MiniBatch-SFL alone at
    lr 0.01, seed 2 (no baseline has seed 2: the paired margins must leave it out)."""
    sweep = root / "sweep"
    for lr in (0.01, 0.1):
        for seed in (0, 1):
            records = []
            for a in ("minibatch_sfl", "sfl_v2", "fedavg"):
                for r, acc in enumerate(TEST[a, lr], start=1):
                    val = {"val_accuracy": VAL[a, lr]} if with_val else {}
                    records.append(_record(a, r, acc + seed * OFFSET[a], **val))
            _write_run(sweep / f"lr={lr}__seed={seed}", lr, seed, records)
    val = {"val_accuracy": 0.0} if with_val else {}
    _write_run(
        sweep / "lr=0.01__seed=2", 0.01, 2, [_record("minibatch_sfl", r, 0.6, **val) for r in range(1, 7)]
    )
    return sweep


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _cell(rows: list[dict[str, str]], algorithm: str, lr: float) -> dict[str, str]:
    (row,) = [r for r in rows if r["algorithm"] == algorithm and float(r["client_lr"]) == lr]
    return row


def test_the_sweep_report_computes_last_k_targets_lr_choice_and_paired_margins(tmp_path):
    sweep = _fake_sweep(tmp_path)
    (tmp_path / "claims.toml").write_text(CLAIMS)
    md = analysis.report(sweep, tmp_path / "out", claims=tmp_path / "claims.toml").read_text()
    agg = _rows(tmp_path / "out" / "aggregate.csv")
    assert len(agg) == 6  # 3 algorithms x 2 lrs; seeds, out and threads are not grouping keys

    mb = _cell(agg, "minibatch_sfl", 0.01)  # seeds 0, 1, 2
    assert mb["seeds"] == "3" and mb["last_k"] == "3"
    assert float(mb["last_k_accuracy_mean"]) == pytest.approx((0.7 + 0.76 + 0.6) / 3)
    assert float(mb["final_accuracy_mean"]) == pytest.approx((0.8 + 0.86 + 0.6) / 3)
    assert float(mb["best_accuracy_mean"]) == pytest.approx((0.8 + 0.86 + 0.6) / 3)
    # 45 %: rounds 3, 2, 1; 75 %: rounds 6, 5 and never
    assert float(mb["rounds_to_0.45_mean"]) == pytest.approx(2.0) and mb["rounds_to_0.45_reached"] == "3/3"
    assert float(mb["rounds_to_0.75_mean"]) == pytest.approx(5.5) and mb["rounds_to_0.75_reached"] == "2/3"
    assert "| 2.0 ± 1.0 | 5.5 ± 0.7, never in 1 |" in md
    v2 = _cell(agg, "sfl_v2", 0.01)
    assert float(v2["last_k_accuracy_std"]) == pytest.approx(0.02 / math.sqrt(2))
    assert v2["rounds_to_0.75_reached"] == "0/2" and "| never |" in md

    # chosen on validation: the lr test accuracy does NOT prefer, for every algorithm
    chosen = {(r["algorithm"], float(r["client_lr"])) for r in agg if r["chosen_on_val"] == "True"}
    assert chosen == {("minibatch_sfl", 0.1), ("sfl_v2", 0.01), ("fedavg", 0.01)}
    assert "### at lr 0.01" in md and "### each algorithm at its best lr" in md

    margins = _rows(tmp_path / "out" / "margins.csv")

    def margin(view: str, baseline: str) -> dict[str, float]:
        (row,) = [r for r in margins if r["view"].startswith(view) and r["baseline"] == baseline]
        assert row["seeds_paired"] == "2"  # seed 2 has no baseline run
        return {k: float(v) for k, v in row.items() if k.endswith(("_mean", "_std"))}

    at_ref = margin(
        "at lr 0.01", "sfl_v2"
    )  # per seed: final 0.8-0.7, 0.86-0.72; last-3 0.7-0.5333, 0.76-0.5533
    assert at_ref["final_points_mean"] == pytest.approx(0.12)
    assert at_ref["final_points_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert at_ref["final_relative_mean"] == pytest.approx((0.1 / 0.7 + 0.14 / 0.72) / 2)
    assert at_ref["last_k_points_mean"] == pytest.approx(0.7 - 1.6 / 3 + 0.02)
    assert at_ref["last_k_relative_mean"] == pytest.approx(
        ((0.7 - 1.6 / 3) / (1.6 / 3) + (0.76 - 1.66 / 3) / (1.66 / 3)) / 2
    )
    best = margin("each algorithm at its best lr", "fedavg")  # MiniBatch-SFL at 0.1 over FedAvg at 0.01
    assert best["final_points_mean"] == pytest.approx((0.7 - 0.2 + 0.76 - 0.2) / 2)
    assert "up to +24.1 (pts or %)" in md  # the paper's figure beside the measured margin at p = 0.95


def test_the_cut_layer_table_gives_both_sides_divergence_and_the_bytes_per_client(tmp_path):
    sweep = tmp_path / "sweep"
    for cut in (1, 2):
        for seed in (0, 1):
            div = {
                f"divergence_{side}{form}": 10.0 * cut + seed + (100.0 if side == "server" else 0.0)
                for side in ("client", "server")
                for form in ("", "_relative", "_per_param")
            }
            records = [
                _record(a, r, 0.5, bytes_up_per_client=1e6 * cut, **div)
                for a in ("minibatch_sfl", "fedavg")
                for r in range(1, 7)
            ]
            _write_run(sweep / f"cut={cut}__seed={seed}", 0.01, seed, records, cut=cut)
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert "| δ_s raw | δ_s rel | δ_s /param | MB up/cl/rd | client GFLOP/rd |" in md
    # cut 2, seeds 0 and 1: δ_c 20, 21; δ_s 120, 121; 2 MB up; 3 GFLOP per round
    row = "| 0.95 | 2 | 50.0 ± 0.0 | " + " | ".join(["20.5000 ± 0.7071"] * 3 + ["120.5000 ± 0.7071"] * 3)
    assert row + " | 2.000 ± 0.000 | 3.00 ± 0.00 |" in md
    assert (tmp_path / "out" / "cut_layer_minibatch_sfl_synthetic_digits_cnn_N2.png").is_file()


def test_runs_that_differ_in_n_get_accuracy_against_rounds_compute_and_bytes(tmp_path):
    sweep = tmp_path / "sweep"
    for n in (10, 1000):
        for seed in (0, 1):
            records = [
                _record(a, r, 0.1 * r, participants=10, bytes={"smashed": 1e6 * n, "labels": 1e3})
                for a in ("minibatch_sfl", "fedavg")
                for r in range(1, 7)
            ]
            _write_run(sweep / f"n={n}__seed={seed}", 0.01, seed, records, clients=n)
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert "## synthetic digits_cnn: against the number of clients" in md
    # 6 rounds of 3 GFLOP; of 1e6·N + 1e3 bytes; 10 clients per round; round time 1 s; last 5 rounds
    costs = "| 10 ± 0 | 0.01 | 40.0 ± 0.0 | 1.00 ± 0.00 | 18 ± 0 |"
    assert f"| minibatch_sfl | 0.95 | 1000 {costs} 6000 ± 0 |" in md
    assert f"| fedavg | 0.95 | 10 {costs} 60 ± 0 |" in md
    assert (tmp_path / "out" / "clients_synthetic_digits_cnn.png").is_file()


def test_a_field_unset_in_some_runs_names_only_the_runs_that_set_it(tmp_path):
    # cnn4's empty model_args beside resnet18's width: the cnn4 setting's figures and title name neither
    sweep = tmp_path / "sweep"
    records = [_record("minibatch_sfl", r, 0.1 * r) for r in range(1, 7)]
    _write_run(sweep / "plain", 0.01, 0, records, extra="model_args = {}\n")
    _write_run(sweep / "wide", 0.01, 0, records, extra="model_args = { width = 2 }\n")
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    names = sorted(p.name for p in (tmp_path / "out").glob("accuracy_vs_round_*.png"))
    stem = "accuracy_vs_round_synthetic_digits_cnn_N2"
    assert names == [f"{stem}.png", f"{stem}_width=2.png"]
    assert "model_args: width=2" in md and "model_args: ()" not in md and "model_args=" not in md


def test_a_field_one_algorithm_alone_varies_makes_a_row_of_that_algorithm_not_a_setting(tmp_path):
    # SFL-V2 run at a second schedule beside the usual three: one more row, in the same setting
    sweep = tmp_path / "sweep"
    both = [_record(a, r, 0.1 * r) for a in ("minibatch_sfl", "sfl_v2", "centralized") for r in range(1, 7)]
    _write_run(sweep / "usual", 0.01, 0, both, extra='sflv2_schedule = "client_sequential"\n')
    inter = [_record("sfl_v2", r, 0.05 * r) for r in range(1, 7)]
    _write_run(sweep / "inter", 0.01, 0, inter, extra='sflv2_schedule = "interleaved"\n')
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    agg = _rows(tmp_path / "out" / "aggregate.csv")
    assert sorted(r["algorithm"] for r in agg) == [
        "centralized",
        "minibatch_sfl",
        "sfl_v2",
        "sfl_v2 (sflv2_schedule=interleaved)",
    ]
    assert md.count("\n## ") == 1 and "sflv2_schedule:" not in md
    assert [p.name for p in (tmp_path / "out").glob("accuracy_vs_round_*.png")] == [
        "accuracy_vs_round_synthetic_digits_cnn_N2.png"
    ]
    assert plotstyle.label("sfl_v2 (sflv2_schedule=interleaved)") == "SFL-V2 (sflv2_schedule=interleaved)"
    # centralized trains on the union of the clients' data: no non-IID ratio of its own
    assert [r["non_iid_ratio"] for r in agg if r["algorithm"] == "centralized"] == [""]
    assert {r["non_iid_ratio"] for r in agg if r["algorithm"] != "centralized"} == {"0.95"}


def test_the_report_says_where_the_algorithms_searched_unequal_rates(tmp_path):
    sweep = tmp_path / "sweep"
    for lr in (0.01, 0.1):
        algorithms = ("minibatch_sfl", "sfl_v2") if lr == 0.01 else ("minibatch_sfl",)
        records = [_record(a, r, 0.1 * r, val_accuracy=lr) for a in algorithms for r in range(1, 7)]
        _write_run(sweep / f"lr={lr}", lr, 0, records)
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert "searches of unequal reach: cut 2, p = 0.95: sfl_v2 0.01, minibatch_sfl 0.01/0.1." in md
    md = analysis.report(_fake_sweep(tmp_path), tmp_path / "out2", claims=None).read_text()
    assert "unequal reach" not in md  # every algorithm at 0.01 and 0.1


def test_a_sweep_at_one_n_has_no_section_against_n(tmp_path):
    md = analysis.report(_fake_sweep(tmp_path), tmp_path / "out", claims=None).read_text()
    assert "against the number of clients" not in md


def test_without_validation_accuracy_no_lr_is_chosen_and_the_report_says_so(tmp_path):
    sweep = _fake_sweep(tmp_path, with_val=False)
    (tmp_path / "claims.toml").write_text(CLAIMS)
    md = analysis.report(sweep, tmp_path / "out", claims=tmp_path / "claims.toml").read_text()
    assert "no run recorded `val_accuracy`" in md and "no learning rate is selected" in md
    assert "best lr" not in md and "### at lr 0.01" in md
    assert {r["chosen_on_val"] for r in _rows(tmp_path / "out" / "aggregate.csv")} == {"False"}
    assert all(s.chosen is None for s in select_lr(load_groups(sweep), 3).values())


def test_a_rate_that_diverged_in_any_seed_is_not_chosen_on_its_surviving_seeds(tmp_path):
    # lr 0.1 scores 0.9 on validation in seed 0 and diverged in seed 1 (a sweep's diverged run: its
    # diverged.txt, no summary): choosing it on seed 0 alone would hide the divergence; 0.01 is chosen
    sweep = tmp_path / "sweep"
    for lr, seed, val in ((0.01, 0, 0.5), (0.01, 1, 0.5), (0.1, 0, 0.9), (0.1, 1, 0.9)):
        records = [_record("minibatch_sfl", r, 0.5, val_accuracy=val) for r in range(1, 4)]
        _write_run(sweep / f"lr={lr}__seed={seed}", lr, seed, records)
    (sweep / "lr=0.1__seed=1" / "summary.csv").unlink()
    (sweep / "lr=0.1__seed=1" / "diverged.txt").write_text("diverged in round 3: the training loss is nan")
    groups = {g.lr[0]: g for g in load_groups(sweep)}
    assert (groups[0.1].seed_ids(), groups[0.1].diverged) == ([0], [1]) and groups[0.01].diverged == []
    (selection,) = select_lr(list(groups.values()), 3).values()
    assert selection.chosen is groups[0.01]
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert "| 0.01 | 0.01: 50.0, 0.1: 90.0 (1 of 2 seeds diverged) |" in md
    # every seed of 0.1 diverged: the cell is kept only where asked for (a search's reach), never chosen
    (sweep / "lr=0.1__seed=0" / "summary.csv").unlink()
    (sweep / "lr=0.1__seed=0" / "diverged.txt").write_text("diverged in round 2: the training loss is nan")
    assert [g.lr[0] for g in load_groups(sweep)] == [0.01]
    cells = load_groups(sweep, diverged_cells=True)
    assert {g.lr[0]: (g.histories, g.diverged) for g in cells}[0.1] == ([], [0, 1])
    assert next(iter(select_lr(cells, 3).values())).chosen.lr[0] == 0.01


def test_rates_are_compared_on_the_seeds_they_share(tmp_path):
    # lr 0.01 scores 0.6 in seeds 0 and 1, lr 0.1 0.5; 0.01 then gets seeds 2 and 3 (more seeds for its
    # margins) that score 0.2: over its own four seeds it would fall to 0.4 and lose to 0.1, a choice made
    # on a different sample than the one that chose it. On the seeds both ran it stays chosen.
    sweep = tmp_path / "sweep"
    for lr, seed, val in (
        (0.01, 0, 0.6),
        (0.01, 1, 0.6),
        (0.1, 0, 0.5),
        (0.1, 1, 0.5),
        (0.01, 2, 0.2),
        (0.01, 3, 0.2),
    ):
        records = [_record("minibatch_sfl", r, 0.5, val_accuracy=val) for r in range(1, 4)]
        _write_run(sweep / f"lr={lr}__seed={seed}", lr, seed, records)
    groups = {g.lr[0]: g for g in load_groups(sweep)}
    (selection,) = select_lr(list(groups.values()), 3).values()
    assert selection.chosen is groups[0.01] and selection.seeds == [0, 1]
    assert selection.scores == pytest.approx([0.6, 0.5])
    assert groups[0.01].only({1, 3}).seed_ids() == [1, 3]
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert (
        "| 0.01 | 0.01: 60.0, 0.1: 50.0; compared on seeds 0, 1 (a seed only one rate ran does not count) |"
        in md
    )
    # with one seed shared, the report says "seed", as everywhere else
    shutil.rmtree(sweep / "lr=0.1__seed=1")
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert "; compared on seed 0 (a seed only one rate ran does not count) |" in md


def test_a_rate_that_beats_the_choice_on_fewer_seeds_leaves_it_unsettled(tmp_path):
    # a staged search: every rate in seed 0, the two best (0.05, 0.1) in seeds 1 and 2 as well. 0.1 is
    # chosen on its three seeds (0.6 against 0.5), yet 0.2, run in seed 0 only, beats it there (0.58
    # against 0.55): the choice stands only once 0.2 has run in seeds 1 and 2, and the report says so
    sweep = tmp_path / "sweep"
    runs = [(0.05, 0, 0.5), (0.05, 1, 0.5), (0.05, 2, 0.5), (0.1, 0, 0.55), (0.1, 1, 0.625), (0.1, 2, 0.625)]
    for lr, seed, val in [*runs, (0.2, 0, 0.58)]:
        records = [_record("minibatch_sfl", r, 0.5, val_accuracy=val) for r in range(1, 4)]
        _write_run(sweep / f"lr={lr}__seed={seed}", lr, seed, records)
    groups = {g.lr[0]: g for g in load_groups(sweep)}
    (selection,) = select_lr(list(groups.values()), 3).values()
    assert selection.chosen is groups[0.1] and selection.unsettled == [groups[0.2]]
    assert selection.scores == pytest.approx([0.5, 0.6, 0.58])
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert (
        "| 0.1 | 0.05: 50.0, 0.1: 60.0, 0.2: 58.0; "
        "not settled: 0.2 beats it on seed 0 (run it in seeds 1, 2) |" in md
    )
    # 0.2 in seeds 1 and 2, below 0.1 there: the choice is settled
    for seed in (1, 2):
        records = [_record("minibatch_sfl", r, 0.5, val_accuracy=0.6) for r in range(1, 4)]
        _write_run(sweep / f"lr=0.2__seed={seed}", 0.2, seed, records)
    (selection,) = select_lr(load_groups(sweep), 3).values()
    assert selection.chosen.lr[0] == 0.1 and selection.unsettled == []
    assert "not settled" not in analysis.report(sweep, tmp_path / "out2", claims=None).read_text()


def test_in_a_diverged_run_of_several_algorithms_only_the_one_named_diverged(tmp_path):
    # the runner trains a run's algorithms one after another and stops at the first that diverges: the
    # ones before it finished (their records count), the one its note names diverged, later ones never ran
    sweep = tmp_path / "sweep"
    records = [_record(a, r, 0.5, val_accuracy=0.5) for a in ("minibatch_sfl", "sfl_v2") for r in (1, 2, 3)]
    _write_run(sweep / "seed=0", 0.01, 0, records)
    (sweep / "seed=0" / "summary.csv").unlink()
    (sweep / "seed=0" / "diverged.txt").write_text("sfl_v2 diverged in round 3: the training loss is nan")
    _write_run(sweep / "seed=1", 0.01, 1, [_record("fedavg", 1, 0.5)])  # a finished run beside it
    cells = {g.algorithm: g for g in load_groups(sweep, diverged_cells=True)}
    assert (cells["minibatch_sfl"].seed_ids(), cells["minibatch_sfl"].diverged) == ([0], [])
    assert (cells["sfl_v2"].histories, cells["sfl_v2"].diverged) == ([], [0])
    # a note that names none of its algorithms: every one of them is taken as diverged
    (sweep / "seed=0" / "diverged.txt").write_text("diverged")
    cells = {g.algorithm: g for g in load_groups(sweep, diverged_cells=True)}
    assert cells["minibatch_sfl"].diverged == cells["sfl_v2"].diverged == [0]


def test_a_report_without_claims_shows_the_generic_tables(tmp_path, monkeypatch):
    sweep = _fake_sweep(tmp_path)
    monkeypatch.chdir(tmp_path)  # no experiments/paper/claims.toml here
    md = analysis.report(sweep).read_text()
    assert "No claims file" in md and "last-5" in md
    assert not (sweep / "report" / "margins.csv").exists()
    # no reference lr: a view at each lr, and the best-lr view on validation accuracy
    assert "### at lr 0.01" in md and "### at lr 0.1" in md and "### each algorithm at its best lr" in md
    for view in ("lr0.01", "best-lr"):
        name = f"accuracy_vs_round_synthetic_digits_cnn_N2_{view}"
        assert (sweep / "report" / f"{name}.png").is_file() and (sweep / "report" / f"{name}.svg").is_file()


def test_the_paper_claims_file_is_read_by_the_report():
    claims = load_claims(REPO / "experiments" / "paper" / "claims.toml")
    assert claims.algorithm == "minibatch_sfl" and claims.baselines == ("sfl_v2", "fedavg")
    assert claims.last_k == 5 and claims.targets == (0.7, 0.8) and claims.reference_lr == 0.01
    assert {(f.baseline, f.margin, f.where["non_iid_ratio"]) for f in claims.paper} == {
        ("sfl_v2", 24.1, 0.95),
        ("fedavg", 17.1, 0.95),
    }
    assert Claims().algorithm is None


def test_a_claims_file_with_an_unknown_key_is_refused(tmp_path):
    from splitfed import SplitfedError

    (tmp_path / "c.toml").write_text('algorithm = "minibatch_sfl"\nlastk = 5\n')
    with pytest.raises(SplitfedError, match="unknown claims key 'lastk' in .*c.toml; valid keys: algorithm"):
        load_claims(tmp_path / "c.toml")


def test_the_legend_names_every_algorithm_even_one_missing_from_the_first_panel(tmp_path):
    # fedavg ran only at p = 1 (a grid still running): its name must still be in the legend
    groups = [
        Group(("synthetic", "cnn4", 2), "minibatch_sfl", 2, p, [_history(["minibatch_sfl"])], [0])
        for p in (0.0, 1.0)
    ] + [Group(("synthetic", "cnn4", 2), "fedavg", 2, 1.0, [_history(["fedavg"])], [0])]
    setting = Setting(groups, tmp_path)
    study_figures.accuracy_vs_round(setting, plt)
    fig = setting.figures["accuracy_vs_round"]
    names = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sorted(names) == ["FedAvg (FL)", "MiniBatch-SFL"]
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# figures a paper can use (issue 21): names not fingerprints, the loss used, n = 1, full accuracy range,
# accuracy against what the clients spent, a report of one run


def _bytes_history() -> list[dict]:
    """Evaluated at rounds 2 and 4 only (eval_every = 2): the cumulative cost counts rounds 1 and 3 too.
    FedAvg sends 1 + 2 MB per client and computes 5 GFLOP per round; centralized sends and computes nothing
    on a client."""
    history = []
    for a, up, flops in (("fedavg", 1e6, 5e9), ("centralized", 0.0, 0.0)):
        for r in range(1, 5):
            rec = _record(
                a, r, 0.2 * r, bytes_up_per_client=up, bytes_down_per_client=2 * up, client_flops=flops
            )
            if r % 2:
                del rec["test_accuracy"], rec["test_loss"]
            history.append(rec)
    return history


def test_accuracy_is_drawn_against_cumulative_bytes_per_client_and_client_flops():
    figures = run_figures(_bytes_history(), ["fedavg", "centralized"], "t")
    for stem, per_round in (("accuracy_vs_bytes", 3.0), ("accuracy_vs_client_flops", 5.0)):
        (ax,) = figures[stem].axes
        (line,) = _lines(ax).values()  # FedAvg only: centralized spent nothing, and the panel says so
        assert line.get_label() == "FedAvg (FL)"
        assert list(line.get_xdata()) == pytest.approx([2 * per_round, 4 * per_round])  # MB, GFLOP
        assert list(line.get_ydata()) == pytest.approx([40.0, 80.0])
        assert ax.get_xscale() == "log" and "cumulative" in ax.get_xlabel()
        assert "Centralized" in ax.get_title() and "not drawn" in ax.get_title()
    for fig in figures.values():
        plt.close(fig)


def test_a_sweep_draws_accuracy_against_cost_as_means_over_seeds(tmp_path):
    def seed(scale: float) -> list[dict]:
        return [
            r | {"bytes_up_per_client": scale * r["bytes_up_per_client"]}
            for r in _bytes_history()
            if r["algorithm"] == "fedavg"
        ]

    central = [r for r in _bytes_history() if r["algorithm"] == "centralized"]
    groups = [
        Group(("synthetic", "cnn4", 2), "fedavg", 2, 0.5, [seed(1.0), seed(2.0)], [0, 1]),
        Group(("synthetic", "cnn4", 2), "centralized", 2, None, [central], [0]),
    ]
    setting = Setting(groups, tmp_path)
    study_figures.accuracy_vs_cost(setting, plt)
    fig = setting.figures["accuracy_vs_cost"]
    # per round and client: seed 0 sends 1 + 2 MB, seed 1 2 + 2 MB; both compute 5 GFLOP
    for ax, per_round in zip(fig.axes, (3.5, 5.0), strict=True):
        (line,) = _lines(ax).values()
        assert list(line.get_xdata()) == pytest.approx([2 * per_round, 4 * per_round])
        assert list(line.get_ydata()) == pytest.approx([40.0, 80.0]) and ax.get_ylim() == (0.0, 100.0)
        assert "not drawn" in ax.get_title() and "Centralized" in ax.get_title()
    assert (tmp_path / "accuracy_vs_cost_synthetic_cnn4_N2.svg").is_file()
    plt.close(fig)


def test_accuracy_axes_span_0_to_100_percent_however_close_the_curves(tmp_path):
    # a 0.6-point gap at 92 %: auto-scaling made it fill the plot
    algorithms = ["fedavg", "sfl_v1"]
    history = [
        _record(a, r, acc) for a, acc in zip(algorithms, (0.920, 0.926), strict=True) for r in (1, 2, 3)
    ]
    figures = run_figures(history, algorithms, "t")
    for stem in ("accuracy", "accuracy_vs_bytes", "accuracy_vs_client_flops"):
        assert figures[stem].axes[0].get_ylim() == (0.0, 100.0), stem
    groups = [
        Group(("synthetic", "cnn4", 2), a, 2, 0.5, [[r for r in history if r["algorithm"] == a]], [0])
        for a in algorithms
    ]
    setting = Setting(groups, tmp_path)
    study_figures.accuracy_vs_round(setting, plt)
    study_figures.accuracy_vs_ratio(setting, plt)
    for name in ("accuracy_vs_round", "accuracy_vs_noniid"):
        assert setting.figures[name].axes[0].get_ylim() == (0.0, 100.0), name
    plt.close("all")


def test_titles_name_the_model_and_the_data_not_their_fingerprints(tmp_path):
    config = {
        "model": "python:MLP@2460dae0",
        "dataset": "python:a51e9c3c8cd3",
        "cut_layer": 2,
        "clients": 10,
        "partition": "dirichlet",
    }
    title = plotstyle.run_title(config)
    assert title == "MLP on user data, cut 2, N = 10 clients, Dirichlet α = 0.5"
    for recorded, name in (("mypkg.models:build_mlp", "build_mlp"), ("resnet18", "resnet18")):
        assert plotstyle.model_name(recorded) == name
    assert plotstyle.dataset_name("/data/speech/train.pt") == "train.pt"
    assert plotstyle.dataset_name("python:femnist@a51e9c3c8cd3") == "femnist"  # data given with a name
    # the sweep report's titles alike; its file names keep what config.toml records (two data sets stay apart)
    groups = [
        Group(
            ("python:a51e9c3c8cd3", "python:MLP@2460dae0", 2), "fedavg", 2, None, [_history(["fedavg"])], [0]
        )
    ]
    setting = Setting(groups, tmp_path)
    study_figures.accuracy_vs_round(setting, plt)
    fig = setting.figures["accuracy_vs_round"]
    assert fig._suptitle.get_text().startswith("user data MLP, N=2, cut 2: test accuracy")
    assert fig.axes[0].get_ylim() == (0.0, 100.0)
    plt.close(fig)


def test_the_loss_axis_names_the_loss_the_run_trained_on():
    import functools

    import torch.nn.functional as F
    from torch import nn

    def smoothed(output, target):
        return F.cross_entropy(output, target, label_smoothing=0.1)

    name = plotstyle.loss_name
    assert name(F.cross_entropy) == name(None) == "cross-entropy"
    assert (
        name(functools.partial(F.cross_entropy, label_smoothing=0.1)) == "cross-entropy, label_smoothing=0.1"
    )
    assert name(nn.CrossEntropyLoss(label_smoothing=0.1)) == "cross-entropy, label_smoothing=0.1"
    assert name(smoothed) == "smoothed" and name(lambda o, t: o.sum()) == "user loss"
    for loss, ylabel in (
        ("cross-entropy", "training loss (cross-entropy, nats)"),
        ("smoothed", "training loss (smoothed)"),
        (None, "training loss"),  # a run older than data.json's loss: no claim
    ):
        fig = run_figures(_history(["fedavg"]), ["fedavg"], "t", loss)["accuracy"]
        assert fig.axes[1].get_ylabel() == ylabel
        plt.close("all")


def test_one_seed_is_written_n_equals_1_not_plus_minus_zero(tmp_path):
    sweep = tmp_path / "sweep"
    records = [_record(a, r, 0.1 * r) for a in ("minibatch_sfl", "fedavg") for r in range(1, 7)]
    _write_run(sweep / "seed=0", 0.01, 0, records)
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert "| 60.0 (n = 1) | 40.0 (n = 1) | 60.0 (n = 1) |" in md  # final, last-5, best
    assert "± 0.0" not in md


def test_report_on_one_run_directory_writes_its_table_and_figures(tmp_path, capsys):
    from splitfed.cli import main

    run = tmp_path / "run"
    _write_run(run, 0.01, 0, _bytes_history())
    (run / "data.json").write_text(json.dumps({"in_shape": [4], "num_classes": 3, "loss": "smoothed"}))
    assert main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert md.startswith("# Run report: run")
    assert "## digits_cnn on synthetic, cut 2, N = 2 clients, non-IID ratio p = 0.95" in md
    assert "MB up/cl/rd" in md  # the run's own table
    for stem in ("accuracy", "accuracy_vs_bytes", "accuracy_vs_client_flops"):
        for fmt in ("png", "svg"):
            assert (run / "report" / f"{stem}.{fmt}").is_file(), (stem, fmt)
        assert f"({stem}.png)" in md
    assert (run / "report" / "aggregate.csv").is_file()
    # unfinished: one line that says what to do
    (run / "summary.csv").unlink()
    assert main(["report", str(run)]) == 2
    assert "unfinished (no summary.csv): continue it with --resume" in capsys.readouterr().err


def test_a_run_of_a_user_model_titles_its_figures_by_name_and_labels_its_own_loss(
    tmp_path, monkeypatch, one_thread
):
    import functools

    import torch
    import torch.nn.functional as F
    from torch import nn

    from splitfed import Config, run

    class MLP(nn.Sequential):
        def __init__(self) -> None:
            torch.manual_seed(0)
            super().__init__(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    drawn = {}

    def keep(fig, path_stem, dpi=120):  # the figure objects, not their files
        drawn[path_stem.name] = fig
        return []

    monkeypatch.setattr(run_report, "save_figure", keep)
    x, y = torch.randn(120, 6, generator=torch.Generator().manual_seed(0)), torch.arange(120) % 3
    config = Config(
        algorithm=("minibatch_sfl",),
        clients=2,
        rounds=2,
        local_iters=2,
        batch_size=8,
        cut_layer=1,
        divergence_every=0,
        device="cpu",
        out=str(tmp_path / "run"),
    )
    result = run(
        config, model=MLP(), data=(x, y), loss=functools.partial(F.cross_entropy, label_smoothing=0.1)
    )
    assert result.config.model.startswith("python:MLP@") and result.config.dataset.startswith("python:")
    title = drawn["accuracy"]._suptitle.get_text()
    assert title.startswith("MLP on user data, cut 1, N = 2 clients, ") and "python:" not in title, title
    assert drawn["accuracy"].axes[1].get_ylabel() == "training loss (cross-entropy, label_smoothing=0.1)"
    assert {"accuracy_vs_bytes", "accuracy_vs_client_flops"} <= set(drawn)
    assert (
        json.loads((tmp_path / "run" / "data.json").read_text())["loss"]
        == "cross-entropy, label_smoothing=0.1"
    )
    plt.close("all")


def test_a_sweep_over_cuts_named_by_module_and_by_number_is_reported(tmp_path):
    # a graph model is cut by a module's name (cut_layer = "layer1"): cells mix names and numbers
    cuts = {"minibatch_sfl": ["layer1", "layer2"], "fedavg": ["layer1"], "sfl_v2": [2]}
    groups = [
        Group(("synthetic", "resnet", 2), a, cut, 0.5, [_history([a])], [0])
        for a, at in cuts.items()
        for cut in at
    ]
    setting = Setting(groups, tmp_path)
    assert setting.cut == "layer1"  # where the most algorithms ran
    rows = study_figures.cut_layers(setting, plt)  # minibatch_sfl ran at two named cuts: its figure and table
    assert any("layer2" in line for line in rows)


def test_a_sweep_whose_metrics_line_is_cut_short_is_one_line_naming_the_file_and_line(tmp_path):
    sweep = _fake_sweep(tmp_path)
    metrics = sweep / "lr=0.1__seed=1" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([*lines[:4], lines[4][:20], *lines[5:]]) + "\n")  # a disk filled mid-line
    with pytest.raises(SplitfedError) as e:
        analysis.report(sweep, tmp_path / "out", claims=None)
    assert str(e.value).startswith(f"{metrics} line 5 is not a round record of this run")


def test_a_timed_sweep_reports_simulated_seconds_to_each_target(tmp_path):
    # two seeds of MiniBatch-SFL run on a device profile: 10 simulated seconds a round; the first reaches
    # 45 % in round 2 (20 s), the second in round 3 (30 s); 75 % never
    sweep = tmp_path / "sweep"
    for seed, accs in ((0, [0.3, 0.5, 0.6]), (1, [0.3, 0.4, 0.5])):
        records = [_record("minibatch_sfl", r, a, sim_time_s=10.0 * r) for r, a in enumerate(accs, start=1)]
        _write_run(sweep / f"seed={seed}", 0.01, seed, records, extra='profile = "phone-4g"\n')
    (tmp_path / "claims.toml").write_text(CLAIMS)
    md = analysis.report(sweep, tmp_path / "out", claims=tmp_path / "claims.toml").read_text()
    assert "| sim s to 45 % | sim s to 75 % |" in md and "| 25 ± 7 | never |" in md
    (row,) = _rows(tmp_path / "out" / "aggregate.csv")
    assert float(row["sim_s_to_0.45_mean"]) == 25.0


def test_a_report_says_where_it_pools_runs_of_several_devices(tmp_path):
    sweep = _fake_sweep(tmp_path)
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    for i, run_dir in enumerate(runs):  # the last run came from a GPU, the others from a CPU
        device = "NVIDIA H100" if i == len(runs) - 1 else "cpu"
        (run_dir / "provenance.json").write_text(json.dumps([{"device": "x", "device_name": device}]))
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert f"**Runs of 2 devices are pooled here**: NVIDIA H100 (1 run), cpu ({len(runs) - 1} runs)." in md
    for run_dir in runs[:-1]:
        (run_dir / "provenance.json").unlink()  # runs from before provenance count nowhere
    md = analysis.report(sweep, tmp_path / "out", claims=None).read_text()
    assert "Every run with a recorded provenance ran on one device: NVIDIA H100 (1 run)." in md


def test_the_95_percent_interval_of_paired_margins_uses_students_t():
    from splitfed.analysis import interval95
    from splitfed.analysis.text import interval_text

    # three seeds: mean 2, std 1, so the half-width is t(0.975, 2 dof) / sqrt(3) = 4.303 / 1.732 = 2.484
    low, high = interval95([0.01, 0.02, 0.03])
    assert low == pytest.approx(0.02 - 0.04303 / 3**0.5) and high == pytest.approx(0.02 + 0.04303 / 3**0.5)
    assert interval_text((low, high)) == "[−0.5, +4.5]"
    # 23 values: 22 dof is not tabled, the next smaller dof's (wider) quantile is taken
    values = [0.0, 1.0] * 11 + [0.5]
    half = (interval95(values)[1] - interval95(values)[0]) / 2
    assert half == pytest.approx(2.086 * statistics.stdev(values) / 23**0.5)
    assert interval95([0.05]) is None and interval_text(None) == "–"
