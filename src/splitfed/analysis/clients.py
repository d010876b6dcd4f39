"""Where runs of one data set and model differ in the number of clients N: accuracy against rounds, client
compute and wire bytes, and what each cell cost."""

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..plotstyle import accuracy_axis, label, save_figure, style
from .aggregate import client_flops, cumulative, totals, wire_bytes
from .cells import Group, rank
from .claims import Claims
from .figures import legend_of_every_panel
from .text import fmt, fmt_lr, names, safe

DASHES = ["-", "--", ":", "-."]  # a line style per N


def clients_sections(groups: list[Group], out: Path, claims: Claims, plt: Any) -> list[str]:
    """Where runs of one data set and model differ in the number of clients N: accuracy against rounds,
    against the clients' cumulative training compute and against the bytes on the wire, a line per
    (algorithm, N, lr), and a table of what each cell cost."""
    families: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        families[g.setting[:2]].append(g)
    md: list[str] = []
    for (dataset, model), cells in sorted(families.items(), key=str):
        if len({g.setting[2] for g in cells}) > 1:
            md += _family(dataset, model, cells, out, claims, plt)
    return md


def _family(dataset: str, model: str, cells: list[Group], out: Path, claims: Claims, plt: Any) -> list[str]:
    """One data set and model's figure against N (a row of panels per non-IID ratio) and its table."""
    ns = sorted({g.setting[2] for g in cells})
    ratios = sorted({g.ratio for g in cells}, key=lambda r: -1.0 if r is None else r)
    lr_varies = len({g.lr for g in cells}) > 1
    cells = sorted(cells, key=lambda g: (rank(g.algorithm), g.setting[2], g.lr or (0.0, 0.0)))
    fig, axes = plt.subplots(len(ratios), 3, figsize=(18, 4.4 * len(ratios)), squeeze=False)
    table = [
        f"Against the number of clients N: last-{claims.last_k} mean test accuracy (%), clients per "
        "round, seconds per round, and what the whole run cost the clients: training compute (all "
        "clients, GFLOP) and bytes on the wire (sent and received, all clients, MB)",
        "",
        "| algorithm | p | N | per round | lr | accuracy | round s | client GFLOP | wire MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, p in enumerate(ratios):
        for g in (c for c in cells if c.ratio == p):
            n = g.setting[2]
            name = f"{label(g.algorithm)}, N={n}" + (f", lr {fmt_lr(g.lr)}" if lr_varies else "")
            look = style(g.algorithm).kwargs() | {"linestyle": DASHES[ns.index(n) % len(DASHES)]}
            _draw(g, axes[row], p, look | {"marker": None, "label": name})
            table.append(
                f"| {g.algorithm} | {'–' if p is None else p} | {n} | "
                f"{fmt(g.mean_over_rounds('participants'), 1.0, 0)} | {fmt_lr(g.lr)} | "
                f"{fmt(g.last_k(claims.last_k))} | {fmt(g.mean_over_rounds('round_time_s'), 1.0, 2)} | "
                f"{fmt(totals(g, client_flops), 1e-9, 0)} | {fmt(totals(g, wire_bytes), 1e-6, 0)} |"
            )
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    legend_of_every_panel(axes[0, 0], axes.flat)
    fig.suptitle(f"{names(dataset, model)}: accuracy against rounds, client compute and bytes, N = {ns}")
    fig.tight_layout()
    stem = safe(f"clients_{dataset}_{model}")
    save_figure(fig, out / stem, dpi=110)
    md = ["", f"## {names(dataset, model)}: against the number of clients", "", *table, ""]
    return [*md, f"![accuracy against the number of clients]({stem}.png) ([SVG]({stem}.svg))", ""]


def _draw(g: Group, row: Any, p: float | None, look: dict[str, Any]) -> None:
    """A cell's accuracy against rounds, cumulative client GFLOP and cumulative wire MB (log axes)."""
    rounds, acc, _ = g.curve("test_accuracy")
    flops, wire = (dict(zip(*cumulative(g, of), strict=True)) for of in (client_flops, wire_bytes))
    ys = [100 * a for a in acc]
    for ax, xs, xlabel in (
        (row[0], rounds, "round"),
        (row[1], [1e-9 * flops[r] for r in rounds], "client GFLOP, cumulative"),
        (row[2], [1e-6 * wire[r] for r in rounds], "wire MB, cumulative"),
    ):
        ax.plot(xs, ys, **look)
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=f"p = {p}")
        accuracy_axis(ax)
        if xlabel != "round":
            ax.set_xscale("log")
