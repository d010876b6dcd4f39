"""The table of docs/results.md §2b (the cut layer in a vision transformer), from the study's tables:

    python experiments/beyond/vit_tables.py [--out docs/results/vit-cuts]

writes tables.md, whose table §2b carries verbatim (tests/test_results_doc.py checks it), and §2b's figure,
cut_layer_all_fmnist_vit_N10.png and .svg (``figure``: the three algorithms' accuracy per p, MiniBatch-SFL's
δ_c and what a round costs the clients, all against the cut). Read from
experiments/beyond/results/vit-cuts through ``splitfed.analysis``: per p and cut, each algorithm's last-5
mean test accuracy (mean ± std over the seeds), and MiniBatch-SFL's client-side divergence δ_c in the spec's
three forms, each the mean over the rounds measured, then over the seeds. FedAvg trains the whole model on
the clients, so its accuracy does not depend on the cut: it is printed at the first cut and marked 〃
(the same) at the others, which the script checks rather than assumes.
"""

import math
import statistics
from pathlib import Path
from typing import Any

from splitfed.analysis import Group, load_groups
from splitfed.analysis.script import write_tables
from splitfed.analysis.text import percent_pm, table_row, table_rule
from splitfed.plotstyle import label, save_figure, style

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments/beyond/results/vit-cuts"
K = 5
ALGORITHMS = ("minibatch_sfl", "sfl_v2", "fedavg")
CUT_FREE = "fedavg"  # its whole model trains on the clients: the same runs' numbers at every cut
SAME = "〃"
HEAD = ["p", "cut", "MiniBatch-SFL", "SFL-V2", "FedAvg", "δ_c raw", "δ_c relative", "δ_c per parameter"]


def divergence(g: Group, form: str) -> float:
    return statistics.fmean(g.mean_over_rounds(f"divergence_client{form}"))


def raw(x: float) -> str:
    """Three significant digits below 1, two decimals above (0.371, 4.91, 12.96)."""
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def table(groups: list[Group]) -> list[str]:
    cells = {(g.algorithm, g.ratio, g.cut_layer): g for g in groups}
    lines = [table_row(HEAD), table_rule(len(HEAD))]
    for p in sorted({g.ratio for g in groups}):
        cuts = sorted({g.cut_layer for g in groups if g.ratio == p})
        for cut in cuts:
            accuracy = []
            for algorithm in ALGORITHMS:
                text = percent_pm(cells[algorithm, p, cut].last_k(K))
                first = percent_pm(cells[algorithm, p, cuts[0]].last_k(K))
                if algorithm == CUT_FREE and cut != cuts[0]:
                    if text != first:
                        raise ValueError(f"{algorithm} at p = {p:g} differs between cuts {cuts[0]} and {cut}")
                    text = SAME
                accuracy.append(text)
            mb = cells["minibatch_sfl", p, cut]
            forms = [
                raw(divergence(mb, "")),
                f"{divergence(mb, '_relative'):.2f}",
                f"{divergence(mb, '_per_param'):.4f}",
            ]
            lines.append(table_row([f"{p:.1f}", str(cut), *accuracy, *forms]))
    return lines


def tables(study: Path = STUDY) -> str:
    """tables.md: §2b's table."""
    return "\n".join(table(load_groups(study))) + "\n"


# ---------------------------------------------------------------------------------------------------------
# the figure

FIGURE = "cut_layer_all_fmnist_vit_N10"
SPLIT = ALGORITHMS[:2]  # the algorithms that have a cut
FORMS = (  # δ_c's forms: the metric's suffix, the panel's name, how the axis says it
    ("", "raw", "δ_c"),
    ("_relative", "relative", "δ_c / ‖∇F‖"),
    ("_per_param", "per parameter", "δ_c / √dim(w_c)"),
)
RATIO_LOOK = {0.0: ("0.6", "s"), 0.8: ("0.35", "^"), 1.0: ("0.0", "o")}  # the δ_c row's grey and marker per p
LINE = {"markersize": 6, "linewidth": 1.8}


def spread(values: list[float], scale: float = 1.0) -> tuple[float, float, float]:
    """(mean, lowest, highest) of ``values`` × scale: a marker at the mean, a bar from min to max."""
    return scale * statistics.fmean(values), scale * min(values), scale * max(values)


def bars(ax: Any, xs: list[float], points: list[tuple[float, float, float]], **look: Any) -> None:
    """A line through the means, a bar from min to max at each."""
    ax.errorbar(
        xs,
        [c for c, _, _ in points],
        yerr=[[c - lo for c, lo, _ in points], [hi - c for c, _, hi in points]],
        capsize=4,
        **LINE,
        **look,
    )


def same_everywhere(cells: list[Group], key: str) -> float:
    """The one per-round value of ``key`` that every seed of every cell has (a cost that depends neither on
    p nor on the seed); raises otherwise, rather than drawing one line for several values."""
    if not identical(cells, key):
        raise ValueError(f"{key} differs across {len(cells)} cells")
    return cells[0].mean_over_rounds(key)[0]


def identical(cells: list[Group], key: str) -> bool:
    """Whether every seed of every cell has the same per-round value of ``key``."""
    return len({round(v, 3) for g in cells for v in g.mean_over_rounds(key)}) == 1


def draw_figure(groups: list[Group], plt: Any) -> Any:
    """§2b's figure, against the cut: per non-IID ratio p, the last-K mean test accuracy of the three
    algorithms (FedAvg, which has no cut, a flat line and band); MiniBatch-SFL's client-side divergence δ_c
    in its three forms, a line per p; what a round costs each client in bytes sent and all clients in
    training GFLOP, which depend on the cut but not on p (checked). Markers and lines are means over the
    seeds, bars and the band span min to max."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator

    cells = {(g.algorithm, g.ratio, g.cut_layer): g for g in groups}
    ratios = sorted({g.ratio for g in groups})
    cuts = sorted({g.cut_layer for g in groups})
    seeds = sorted({s for g in groups for s in g.seed_ids()})
    if any(sorted(g.seed_ids()) != seeds for g in groups):
        raise ValueError("the cells were not all run at the same seeds")
    if len(ratios) != len(FORMS):  # the second row holds a divergence form under each ratio's panel
        raise ValueError(f"the figure lays out {len(FORMS)} ratios, the study has {len(ratios)}")
    over = f"min–max over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
    fig, axes = plt.subplots(2, len(ratios) + 1, figsize=(4.6 * (len(ratios) + 1), 9.4))
    xs = list(range(len(cuts)))
    nudge = {a: 0.05 * (2 * i - 1) for i, a in enumerate(SPLIT)}  # the split pair's bars side by side

    # first row: accuracy, a panel per p, every panel spanning the same number of points
    extents = []
    for ax, p in zip(axes[0], ratios, strict=False):
        drawn = []
        for algorithm in SPLIT:
            points = [spread(cells[algorithm, p, cut].last_k(K), 100.0) for cut in cuts]
            bars(ax, [x + nudge[algorithm] for x in xs], points, **style(algorithm).kwargs())
            drawn += points
        runs = [sorted(cells[CUT_FREE, p, cut].last_k(K)) for cut in cuts]
        if any(r != runs[0] for r in runs):
            raise ValueError(f"{CUT_FREE} at p = {p:g} differs between cuts")
        centre, low, high = spread(runs[0], 100.0)
        look = style(CUT_FREE)
        ax.axhspan(low, high, color=look.color, alpha=0.15, linewidth=0)
        ax.axhline(centre, color=look.color, linestyle=look.linestyle, linewidth=LINE["linewidth"])
        extents.append((min(low, *(lo for _, lo, _ in drawn)), max(high, *(hi for _, _, hi in drawn))))
        ax.set_title(f"test accuracy at non-IID ratio p = {p:g}")
        ax.set_ylabel(f"test accuracy (%), last-{K} mean")
    span = 5 * math.ceil((max(hi - lo for lo, hi in extents) + 4) / 5)
    for ax, (low, high) in zip(axes[0], extents, strict=False):
        bottom = min(max(0.0, (low + high - span) / 2), 100.0 - span)
        ax.set_ylim(bottom, bottom + span)

    # second row: MiniBatch-SFL's client-side divergence, a line per p
    for ax, (suffix, name, symbol) in zip(axes[1], FORMS, strict=False):
        for p in ratios:
            grey, marker = RATIO_LOOK.get(p, ("0.5", "D"))
            runs = [
                cells["minibatch_sfl", p, cut].mean_over_rounds(f"divergence_client{suffix}") for cut in cuts
            ]
            bars(ax, xs, [spread(r) for r in runs], color=grey, marker=marker, label=f"p = {p:g}")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_title(f"MiniBatch-SFL: δ_c {name}")
        ax.set_ylabel(f"{symbol}, mean over rounds (log scale)")

    # the last column: what a round costs the clients
    costs = (
        ("bytes_up_per_client", 1e-6, "MB sent per client per round", "bytes sent (same at every p)"),
        (
            "client_flops",
            1e-9,
            "client training GFLOP per round, all clients",
            "client compute (same at every p)",
        ),
    )
    for ax, (key, scale, ylabel, title) in zip(axes[:, -1], costs, strict=True):
        for algorithm in ALGORITHMS:
            ys = [scale * same_everywhere([cells[algorithm, p, cut] for p in ratios], key) for cut in cuts]
            ax.plot(xs, ys, **LINE, **style(algorithm).kwargs())
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        if all(identical([cells[a, p, cut] for a in SPLIT for p in ratios], key) for cut in cuts):
            note = f"{' and '.join(map(label, SPLIT))}:\nidentical, their lines coincide"
            ax.text(0.03, 0.6, note, transform=ax.transAxes, fontsize=9, va="center")

    for ax in axes.flat:
        ax.set_xticks(xs, [str(c) for c in cuts])
        ax.set_xlim(-0.3, len(cuts) - 0.7)
        ax.set_xlabel("cut layer")
        ax.grid(alpha=0.3)

    # legends outside the data: the algorithms above the first row, the ratios below the second
    fed = style(CUT_FREE)
    handles = [Line2D([], [], **LINE, **style(a).kwargs()) for a in SPLIT]
    handles += [
        Line2D([], [], color=fed.color, linestyle=fed.linestyle, linewidth=LINE["linewidth"]),
        Patch(color=fed.color, alpha=0.15),
        Line2D([], [], color="k", marker="|", markersize=14, linestyle="none"),
    ]
    names = [label(a) for a in SPLIT]
    names += [f"{label(CUT_FREE)}: no cut, whole model on the clients (flat)", f"{label(CUT_FREE)}: {over}"]
    names += [f"bars: {over}; markers: mean"]
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=5, frameon=False)
    fig.legend(
        *axes[1, 0].get_legend_handles_labels(),
        loc="lower center",
        ncol=len(ratios),
        frameon=False,
        title="second row: MiniBatch-SFL at non-IID ratio p",
    )
    fig.suptitle(
        "ViT on FMNIST, N = 10, against the cut layer (cut c: the patch embedding and c − 1 blocks on the "
        f"client); every accuracy panel spans {span} points",
        y=0.99,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.925))
    return fig


def figure(study: Path, out: Path) -> list[Path]:
    """Draw §2b's figure from the study's tables into ``out``; returns the PNG and SVG written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return save_figure(draw_figure(load_groups(study), plt), out / FIGURE, dpi=110)


def main() -> None:
    out, study = write_tables(__doc__.splitlines()[0], tables, ROOT / "docs/results/vit-cuts", STUDY)
    for path in figure(study, out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
