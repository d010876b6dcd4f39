"""Run outputs a person reads: the comparison table, summary rows and plots.

The look of every figure (a run's and a sweep's) is defined here once: ``STYLES`` gives each algorithm a
colour, a line style and a marker, ``label`` its readable name, ``save_figure`` the files written.
"""

import csv
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY_COLUMNS = [
    ("algorithm", "algorithm", "{}"),
    ("rounds", "rounds", "{}"),
    ("final_accuracy", "final acc", "{:.4f}"),
    ("best_accuracy", "best acc", "{:.4f}"),
    ("final_test_loss", "test loss", "{:.4f}"),
    ("final_train_loss", "train loss", "{:.4f}"),
    ("divergence_client_relative", "div c (rel)", "{:.3f}"),
    ("train_s_per_round", "train s/rd", "{:.3f}"),
    ("round_s_per_round", "round s/rd", "{:.3f}"),  # added after train_s_per_round: older readers ignore it
    ("mb_up_per_client_round", "MB up/cl/rd", "{:.3f}"),
    ("mb_down_per_client_round", "MB dn/cl/rd", "{:.3f}"),
    ("client_gflop_per_round", "client GFLOP/rd", "{:.3f}"),
    ("server_gflop_per_round", "server GFLOP/rd", "{:.3f}"),
]
# printed under the table and quoted in README's "What a run prints": what each abbreviated column means
TABLE_LEGEND = (
    "acc: test accuracy (fraction) at the last round / the best round; loss: last round's; "
    "div c (rel): client-side gradient divergence ÷ ‖∇F‖ at the last round it was measured; "
    "train s/rd: seconds of training per round; round s/rd: seconds per whole round (training + evaluation "
    "+ divergence); MB up|dn/cl/rd: megabytes (10⁶ B) each client sent|received per round; "
    "GFLOP/rd: 10⁹ training FLOPs per round, all clients together | main server"
)

# Readable names in legends; a name not listed here is shown as given.
ALGORITHM_LABELS = {
    "minibatch_sfl": "MiniBatch-SFL",
    "sfl_v1": "SFL-V1",
    "sfl_v2": "SFL-V2",
    "sl": "SL",
    "fedavg": "FedAvg (FL)",
    "centralized": "Centralized",
}


@dataclass(frozen=True)
class LineStyle:
    """How one algorithm is drawn in every figure: colour, line style and marker all differ per algorithm,
    so two algorithms with identical numbers (SFL-V1 and FedAvg under plain SGD) both stay visible."""

    color: str
    linestyle: str | tuple[int, tuple[int, ...]]  # a name or matplotlib's (offset, on-off sequence)
    marker: str

    def kwargs(self) -> dict[str, Any]:
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker}


# The one mapping of algorithm to look, used by the run's figures and the sweep report's alike.
STYLES: dict[str, LineStyle] = {
    "minibatch_sfl": LineStyle("C3", "-", "o"),
    "sfl_v1": LineStyle("C1", "--", "s"),
    "sfl_v2": LineStyle("C2", "-.", "^"),
    "sl": LineStyle("C4", (0, (1, 1)), "D"),  # densely dotted
    "fedavg": LineStyle("C0", (0, (5, 1, 1, 1, 1, 1)), "v"),  # dash-dot-dot
    "centralized": LineStyle("k", ":", "x"),
}
_SPARE = [
    LineStyle("C5", "-", "P"),
    LineStyle("C6", "--", "*"),
    LineStyle("C7", "-.", "h"),
    LineStyle("C8", ":", "<"),
    LineStyle("C9", "-", ">"),
]


def style(algorithm: str) -> LineStyle:
    """The look of ``algorithm``; one not in STYLES (a registered extra) gets a fixed spare look."""
    if algorithm in STYLES:
        return STYLES[algorithm]
    return _SPARE[zlib.crc32(algorithm.encode()) % len(_SPARE)]  # stable across processes, unlike hash()


# opens the tail of a variant's name: ``sfl_v2 (sflv2_schedule=interleaved)`` is SFL-V2 run at a setting that
# no other algorithm of its sweep varies (the sweep report makes it a row of its own)
VARIANT = " ("


def split_variant(algorithm: str) -> tuple[str, str]:
    """The algorithm's own name and its variant's tail ('' for none)."""
    base, opening, tail = algorithm.partition(VARIANT)
    return base, opening + tail


def label(algorithm: str) -> str:
    """The readable name; a variant keeps its tail."""
    base, tail = split_variant(algorithm)
    return ALGORITHM_LABELS.get(base, base) + tail


def line_kwargs(algorithm: str, points: int) -> dict[str, Any]:
    """plot() arguments for one algorithm's line of ``points`` points: its style, its readable name, and
    about a dozen markers, placed at different rounds for different algorithms so that markers of
    identical curves do not cover each other."""
    every = max(1, math.ceil(points / 12))
    order = [*STYLES, algorithm].index(algorithm)
    return {
        **style(algorithm).kwargs(),
        "markersize": 5,
        "markevery": (order % every, every),
        "label": label(algorithm),
    }


# PNG for a quick look and for README/report.md; SVG beside it because it scales without blur, opens in
# any browser, and is text (a regenerated figure diffs); PDF would need a viewer and suits LaTeX only.
FIGURE_FORMATS = ("png", "svg")


def save_figure(fig: Any, path_stem: Path, dpi: int = 120) -> list[Path]:
    """Write ``fig`` as PNG and SVG (path_stem + .png/.svg), close it; returns the paths written.

    The SVG carries no date and fixed element ids, so the same figure gives the same file."""
    import matplotlib.pyplot as plt

    paths = []
    with plt.rc_context({"svg.hashsalt": "splitfed"}):
        for fmt in FIGURE_FORMATS:
            path = path_stem.with_name(f"{path_stem.name}.{fmt}")
            metadata = {"Date": None} if fmt == "svg" else None
            fig.savefig(path, dpi=dpi, metadata=metadata)
            paths.append(path)
    plt.close(fig)
    return paths


def integer_rounds(ax: Any) -> None:
    """Round axes show whole rounds only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def summarize(history: list[dict[str, Any]], algorithms: list[str]) -> list[dict[str, Any]]:
    """One row per algorithm: final and best accuracy, costs per round averaged over the run."""
    rows = []
    for name in algorithms:
        recs = [r for r in history if r["algorithm"] == name]
        if not recs:
            continue
        last = recs[-1]
        evaluated = [r for r in recs if r.get("test_accuracy") is not None] or [last]  # see eval_every
        divs = [r["divergence_client_relative"] for r in recs if "divergence_client_relative" in r]

        def mean(key: str, scale: float = 1.0, recs: list = recs) -> float:
            values = [r[key] for r in recs if r.get(key) is not None]
            return sum(values) / len(values) / scale if values else math.nan

        rows.append(
            {
                "algorithm": name,
                "rounds": last["round"],
                "final_accuracy": evaluated[-1].get("test_accuracy", math.nan),
                "best_accuracy": max(r.get("test_accuracy", math.nan) for r in evaluated),
                "final_test_loss": evaluated[-1].get("test_loss", math.nan),
                "final_train_loss": last["train_loss"],
                "divergence_client_relative": divs[-1] if divs else math.nan,
                "train_s_per_round": mean("train_time_s"),
                "round_s_per_round": mean("round_time_s"),
                "mb_up_per_client_round": mean("bytes_up_per_client", 1e6),
                "mb_down_per_client_round": mean("bytes_down_per_client", 1e6),
                "client_gflop_per_round": mean("client_flops", 1e9),
                "server_gflop_per_round": mean("server_flops", 1e9),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The run's comparison table, one row per algorithm, with the legend of its columns under it."""
    cells = [[title for _, title, _ in SUMMARY_COLUMNS]]
    for row in rows:
        cells.append(
            ["–" if _missing(row.get(key)) else fmt.format(row[key]) for key, _, fmt in SUMMARY_COLUMNS]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(SUMMARY_COLUMNS))]
    lines = [  # first column left-aligned, numbers right-aligned
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, TABLE_LEGEND])


def _missing(value: Any) -> bool:
    # e.g. divergence, never measured in a deployment; a time an older record lacks
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_summary_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key, _, _ in SUMMARY_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)


def run_figures(history: list[dict[str, Any]], algorithms: list[str], title: str) -> dict[str, Any]:
    """The run's figures by file stem: ``accuracy`` (test accuracy and training loss vs round) and, when
    divergence was measured, ``divergence`` (client and server side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(name: str, key: str, scale: float) -> tuple[list[int], list[float]]:
        recs = [r for r in history if r["algorithm"] == name and r.get(key) is not None]
        return [r["round"] for r in recs], [scale * r[key] for r in recs]

    def figure(panels: list[tuple[str, float, str, str, str]]) -> Any:
        """A panel per (metric key, scale, y label, panel title, y scale), a line per algorithm."""
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
        for ax, (key, scale, ylabel, panel_title, yscale) in zip(axes, panels, strict=True):
            for name in algorithms:
                rounds, values = series(name, key, scale)
                ax.plot(rounds, values, **line_kwargs(name, len(rounds)))
            ax.set(xlabel="round", ylabel=ylabel, title=panel_title, yscale=yscale)
            integer_rounds(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        return fig

    figures = {
        "accuracy": figure(
            [
                (
                    "test_accuracy",
                    100.0,
                    "test accuracy (%)",
                    "Test accuracy of the aggregated model",
                    "linear",
                ),
                ("train_loss", 1.0, "training loss (cross-entropy, nats)", "Training loss", "log"),
            ]
        )
    }
    if any("divergence_client" in r for r in history):
        figures["divergence"] = figure(
            [
                (
                    f"divergence_{side}_relative",
                    1.0,
                    f"δ_{side[0]} / ‖∇F‖ (ratio, no unit)",
                    f"{side.title()}-side gradient divergence (relative), at round start",
                    "linear",
                )
                for side in ("client", "server")
            ]
        )
    return figures


def plot_run(history: list[dict[str, Any]], algorithms: list[str], out_dir: Path, title: str) -> list[Path]:
    """Write the run's figures into ``out_dir`` (accuracy, divergence; .png and .svg); returns the paths."""
    paths = []
    for stem, fig in run_figures(history, algorithms, title).items():
        paths += save_figure(fig, out_dir / stem)
    return paths
