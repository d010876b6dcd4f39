"""Run outputs a person reads: the comparison table, summary rows and the run's figures (their look is
``plotstyle``'s)."""

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import SplitfedError
from .plotstyle import (
    COSTS,
    DEFAULT_LOSS,
    accuracy_axis,
    integer_rounds,
    label,
    line_kwargs,
    loss_label,
    loss_name,  # noqa: F401 (the runner and roles read a run's names here)
    run_title,  # noqa: F401
    save_figure,
)

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
    ("sim_s_per_round", "sim s/rd", "{:.2f}"),  # with a device profile only (engine/timeline.py)
]
# columns a run has only with some settings: left out of its table and summary.csv when no row has them
OPTIONAL_COLUMNS = {"sim_s_per_round"}
# printed under the table and quoted in README's "What a run prints": what each abbreviated column means
TABLE_LEGEND = (
    "acc: test accuracy (fraction) at the last round / the best round; loss: last round's; "
    "div c (rel): client-side gradient divergence ÷ ‖∇F‖ at the last round it was measured; "
    "train s/rd: seconds of training per round; round s/rd: seconds per whole round (training + evaluation "
    "+ divergence); MB up|dn/cl/rd: megabytes (10⁶ B) each client sent|received per round; "
    "GFLOP/rd: 10⁹ training FLOPs per round, all clients together | main server"
)
SIM_LEGEND = "; sim s/rd: simulated seconds per round on the profile's devices and links"


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
        if any("sim_round_s" in r for r in recs):  # a device profile (a column only such runs have)
            rows[-1]["sim_s_per_round"] = mean("sim_round_s")
    return rows


def columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The summary's columns for these rows: an optional one only where some row has it."""
    return [
        c
        for c in SUMMARY_COLUMNS
        if c[0] not in OPTIONAL_COLUMNS or any(not _missing(r.get(c[0])) for r in rows)
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The run's comparison table, one row per algorithm, with the legend of its columns under it."""
    shown = columns(rows)
    cells = [[title for _, title, _ in shown]]
    for row in rows:
        cells.append(["–" if _missing(row.get(key)) else fmt.format(row[key]) for key, _, fmt in shown])
    widths = [max(len(r[i]) for r in cells) for i in range(len(shown))]
    lines = [  # first column left-aligned, numbers right-aligned
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    legend = TABLE_LEGEND + (SIM_LEGEND if any(key == "sim_s_per_round" for key, _, _ in shown) else "")
    return "\n".join([*lines, legend])


def _missing(value: Any) -> bool:
    # e.g. divergence, never measured in a deployment; a time an older record lacks
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_summary_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        keys = [key for key, _, _ in columns(rows)]
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
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

    accuracy = (
        "test_accuracy",
        100.0,
        "test accuracy (%)",
        "Test accuracy of the aggregated model",
        "linear",
    )
    train_loss = ("train_loss", 1.0, loss_label(loss), "Training loss", "log")
    figures = {"accuracy": _rounds_figure(plt, history, algorithms, title, [accuracy, train_loss])}
    for stem, (cost, xlabel, what) in COSTS.items():
        figures[stem] = accuracy_against_cost(plt, history, algorithms, title, cost, xlabel, what)
    if any("sim_round_s" in r for r in history):  # a device profile: accuracy against simulated time
        figures["accuracy_vs_sim_time"] = accuracy_against_cost(
            plt,
            history,
            algorithms,
            title,
            _sim_seconds,
            "simulated seconds, cumulative (log scale)",
            "no time",
        )
    if any("divergence_client" in r for r in history):
        panels = [
            (
                f"divergence_{side}_relative",
                1.0,
                f"δ_{side[0]} / ‖∇F‖ (ratio, no unit)",
                f"{side.title()}-side gradient divergence (relative), at round start",
                "linear",
            )
            for side in ("client", "server")
        ]
        figures["divergence"] = _rounds_figure(plt, history, algorithms, title, panels)
    return figures


def _rounds_figure(
    plt: Any,
    history: list[dict[str, Any]],
    algorithms: list[str],
    title: str,
    panels: list[tuple[str, float, str, str, str]],
) -> Any:
    """Metrics against the round: a panel per (metric key, scale, y label, panel title, y scale), a line
    per algorithm."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    for ax, (key, scale, ylabel, panel_title, yscale) in zip(axes, panels, strict=True):
        for name in algorithms:
            recs = [r for r in history if r["algorithm"] == name and r.get(key) is not None]
            ax.plot(
                [r["round"] for r in recs], [scale * r[key] for r in recs], **line_kwargs(name, len(recs))
            )
        ax.set(xlabel="round", ylabel=ylabel, title=panel_title, yscale=yscale)
        if key == "test_accuracy":
            accuracy_axis(ax)
        integer_rounds(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _sim_seconds(record: dict[str, Any]) -> float:
    return record.get("sim_round_s", 0.0)


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
