"""Run outputs a person reads: the comparison table, summary rows and plots.

The look of every figure (a run's and a sweep's) is defined here once: ``STYLES`` gives each algorithm a
colour, a line style and a marker, ``label`` its readable name, ``save_figure`` the files written.
"""

import csv
import functools
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PARTITION_OPTIONS
from .errors import SplitfedError

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


def read_metrics(path: Path, algorithms: Sequence[str]) -> list[dict[str, Any]]:
    """metrics.jsonl's records of ``algorithms``, in the run's order (algorithm by algorithm, in order of
    rounds: a resumed run that extended its rounds appended them out of order)."""
    order = {name: i for i, name in enumerate(algorithms)}
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            known = record["algorithm"] in order and isinstance(record["round"], int)
        except (ValueError, KeyError, TypeError):
            known = False
        if not known:
            raise SplitfedError(
                f"{path} line {n} is not a round record of this run (a JSON object with one of its "
                f"algorithms, {', '.join(algorithms)}, and an integer round)"
            )
        records.append(record)
    return sorted(records, key=lambda r: (order[r["algorithm"]], r["round"]))


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


# ---------------------------------------------------------------------------------------------------------
# names a reader understands: what config.toml records is made for resuming, not for reading

# config.model / config.dataset of an object given to run(): models.PYTHON_MODEL and data.PYTHON_DATA (not
# imported: both modules import torch, and the CLI's report must not)
_PYTHON = "python:"
DEFAULT_LOSS = "cross-entropy"  # what setup trains on when run() is given no loss


def model_name(recorded: str) -> str:
    """A model's readable name from config.model: a registered name as is; ``python:MLP@<fingerprint>``
    (an object given to run()) is ``MLP``; ``pkg.module:build_mlp`` (an importable builder) ``build_mlp``."""
    if recorded.startswith(_PYTHON):
        return recorded.removeprefix(_PYTHON).partition("@")[0] or "user model"
    return recorded.rpartition(":")[2].rpartition(".")[2] or recorded


def dataset_name(recorded: str) -> str:
    """A data set's readable name from config.dataset: a registered name as is; ``python:<fingerprint>``
    (tensors given to run()) is "user data", ``python:<name>@<fingerprint>`` (data given with a name) the
    name; a data file its file name."""
    if recorded.startswith(_PYTHON):
        name, at, _ = recorded.removeprefix(_PYTHON).partition("@")
        return name if at and name else "user data"
    return Path(recorded).name if "/" in recorded or "\\" in recorded else recorded


# a partition's option as a caption says it (PARTITION_OPTIONS: which config field holds it, its default)
_PARTITION_TEXT = {
    "non_iid_ratio": "non-IID ratio p = {}",
    "dirichlet": "Dirichlet α = {}",
    "shards": "{} label shards per client",
}


def partition_text(config: Mapping[str, Any]) -> str:
    """How the clients' data were dealt, from a run's config; an option left unset is its default."""
    partition = config.get("partition") or "non_iid_ratio"
    if partition not in PARTITION_OPTIONS:
        return "IID" if partition == "iid" else partition
    option, default = PARTITION_OPTIONS[partition]
    value = default if config.get(option) is None else config[option]
    return _PARTITION_TEXT.get(partition, partition + " {}").format(value)


def run_title(config: Mapping[str, Any]) -> str:
    """A run's figure title from its config (a Config's to_dict() or its config.toml): the model's and the
    data set's names, never their fingerprints."""
    return (
        f"{model_name(str(config.get('model')))} on {dataset_name(str(config.get('dataset')))}, "
        f"cut {config.get('cut_layer')}, N = {config.get('clients')} clients, {partition_text(config)}"
    )


def loss_name(loss: Callable[..., Any] | None) -> str:
    """The loss a run trains on, as an axis label names it: cross-entropy (the default), with the options a
    ``functools.partial`` or an ``nn.CrossEntropyLoss`` gives it (``label_smoothing=0.1``), or the user
    function's own name. Read by attribute only: no torch import."""
    if loss is None:
        return DEFAULT_LOSS
    if isinstance(loss, functools.partial):
        options = ", ".join(f"{k}={v}" for k, v in loss.keywords.items())
        return f"{loss_name(loss.func)}, {options}" if options else loss_name(loss.func)
    name = getattr(loss, "__name__", None) or type(loss).__name__
    if name == "cross_entropy" and getattr(loss, "__module__", "") == "torch.nn.functional":
        return DEFAULT_LOSS
    if name == "CrossEntropyLoss":  # an nn.Module loss: its smoothing changes what its values mean
        smoothing = getattr(loss, "label_smoothing", 0.0)
        return DEFAULT_LOSS + (f", label_smoothing={smoothing}" if smoothing else "")
    return "user loss" if name == "<lambda>" else name


def loss_label(loss: str | None) -> str:
    """The training-loss axis: in nats only for the default cross-entropy; a run that did not record its
    loss (older than the record) names none."""
    if loss is None:
        return "training loss"
    return "training loss (cross-entropy, nats)" if loss == DEFAULT_LOSS else f"training loss ({loss})"


# ---------------------------------------------------------------------------------------------------------
# axes

# Accuracy axes span the whole range: a range zoomed to the data makes a 0.6-point gap fill the plot.
ACCURACY_RANGE = (0.0, 100.0)  # percent


def accuracy_axis(ax: Any) -> None:
    """An accuracy axis in percent, from 0 to 100 whatever the data."""
    ax.set_ylim(*ACCURACY_RANGE)


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


def run_figures(
    history: list[dict[str, Any]], algorithms: list[str], title: str, loss: str | None = DEFAULT_LOSS
) -> dict[str, Any]:
    """The run's figures by file stem: ``accuracy`` (test accuracy and training loss vs round), the test
    accuracy against what the clients spent to reach it (``accuracy_vs_bytes``, ``accuracy_vs_client_flops``)
    and, when divergence was measured, ``divergence`` (client and server side). ``loss`` names the
    training loss on its axis (see loss_name)."""
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
            if key == "test_accuracy":
                accuracy_axis(ax)
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
                ("train_loss", 1.0, loss_label(loss), "Training loss", "log"),
            ]
        )
    }
    for stem, (cost, xlabel, what) in COSTS.items():
        figures[stem] = accuracy_against_cost(plt, history, algorithms, title, cost, xlabel, what)
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


def bytes_per_client(record: dict[str, Any]) -> float:
    """MB (10⁶ B) each client sent and received in the round (mean over the round's clients)."""
    return 1e-6 * ((record.get("bytes_up_per_client") or 0.0) + (record.get("bytes_down_per_client") or 0.0))


def client_gflop(record: dict[str, Any]) -> float:
    """10⁹ training FLOPs of the round's client sides, all clients together."""
    return 1e-9 * (record.get("client_flops") or 0.0)


# file stem -> (a round's cost, its cumulative axis' label, what a line without cost did not spend)
COSTS: dict[str, tuple[Callable[[dict[str, Any]], float], str, str]] = {
    "accuracy_vs_bytes": (
        bytes_per_client,
        "MB sent + received per client, cumulative (log scale)",
        "no bytes sent",
    ),
    "accuracy_vs_client_flops": (
        client_gflop,
        "client-side training GFLOP, all clients, cumulative (log scale)",
        "no client compute",
    ),
}


def cumulative_cost(
    history: list[dict[str, Any]], algorithm: str, cost: Callable[[dict[str, Any]], float]
) -> tuple[list[float], list[float]]:
    """At each evaluated round of ``algorithm``: ``cost`` summed over every round up to it (evaluated or
    not), and the test accuracy (%) there."""
    total, xs, ys = 0.0, [], []
    for r in sorted((r for r in history if r["algorithm"] == algorithm), key=lambda r: r["round"]):
        total += cost(r)
        if r.get("test_accuracy") is not None:
            xs.append(total)
            ys.append(100.0 * r["test_accuracy"])
    return xs, ys


def accuracy_against_cost(
    plt: Any,
    history: list[dict[str, Any]],
    algorithms: list[str],
    title: str,
    cost: Callable[[dict[str, Any]], float],
    xlabel: str,
    what: str,
) -> Any:
    """Test accuracy against a cumulative cost, a line per algorithm, on a log axis (algorithms differ by
    orders of magnitude in what they send). An algorithm that spent nothing has no place on a log axis:
    the panel says so instead of dropping it silently."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    spent_nothing = []
    for name in algorithms:
        xs, ys = cumulative_cost(history, name, cost)
        if xs and max(xs) > 0:
            ax.plot(xs, ys, **line_kwargs(name, len(xs)))
        elif xs:
            spent_nothing.append(label(name))
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", xscale="log")
    accuracy_axis(ax)
    if spent_nothing:
        ax.set_title(f"not drawn ({what}): {', '.join(spent_nothing)}", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_run(
    history: list[dict[str, Any]],
    algorithms: list[str],
    out_dir: Path,
    title: str,
    loss: str | None = DEFAULT_LOSS,
) -> list[Path]:
    """Write the run's figures into ``out_dir`` (see run_figures; .png and .svg); returns the paths."""
    paths = []
    for stem, fig in run_figures(history, algorithms, title, loss).items():
        paths += save_figure(fig, out_dir / stem)
    return paths
