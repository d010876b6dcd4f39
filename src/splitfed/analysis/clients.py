"""Where runs of one data set and model differ in the number of clients N: accuracy against rounds, a panel
per non-IID ratio and N, and what each cell cost."""

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..plotstyle import integer_rounds, label, save_figure, style
from .aggregate import client_flops, totals, wire_bytes
from .cells import Group, rank
from .claims import Claims
from .text import fmt, fmt_lr, names, safe


def clients_sections(groups: list[Group], out: Path, claims: Claims, plt: Any) -> list[str]:
    """Where runs of one data set and model differ in the number of clients N: accuracy against rounds, a
    panel per (p, N) and a line per (algorithm, lr), and a table of what each cell cost."""
    families: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        families[g.setting[:2]].append(g)
    md: list[str] = []
    for (dataset, model), cells in sorted(families.items(), key=str):
        if len({g.setting[2] for g in cells}) > 1:
            md += _family(dataset, model, cells, out, claims, plt)
    return md


def _family(dataset: str, model: str, cells: list[Group], out: Path, claims: Claims, plt: Any) -> list[str]:
    """One data set and model's figure against N (a row of panels per non-IID ratio, a column per N) and
    its table."""
    ns = sorted({g.setting[2] for g in cells})
    ratios = sorted({g.ratio for g in cells}, key=lambda r: -1.0 if r is None else r)
    cells = sorted(cells, key=lambda g: (rank(g.algorithm), g.setting[2], g.lr or (0.0, 0.0)))
    table = [
        f"Against the number of clients N: last-{claims.last_k} mean test accuracy (%), clients per "
        "round, seconds per round, and what the whole run cost the clients: training compute (all "
        "clients, GFLOP) and bytes on the wire (sent and received, all clients, MB)",
        "",
        "| algorithm | p | N | per round | lr | accuracy | round s | client GFLOP | wire MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in ratios:
        for g in (c for c in cells if c.ratio == p):
            table.append(
                f"| {g.algorithm} | {'–' if p is None else p} | {g.setting[2]} | "
                f"{fmt(g.mean_over_rounds('participants'), 1.0, 0)} | {fmt_lr(g.lr)} | "
                f"{fmt(g.last_k(claims.last_k))} | {fmt(g.mean_over_rounds('round_time_s'), 1.0, 2)} | "
                f"{fmt(totals(g, client_flops), 1e-9, 0)} | {fmt(totals(g, wire_bytes), 1e-6, 0)} |"
            )
    stem = safe(f"clients_{dataset}_{model}")
    save_figure(_figure(dataset, model, cells, ns, ratios, claims.last_k, plt), out / stem, dpi=110)
    md = ["", f"## {names(dataset, model)}: against the number of clients", "", *table, ""]
    return [*md, f"![accuracy against the number of clients]({stem}.png) ([SVG]({stem}.svg))", ""]


def _lr_text(lr: tuple[float, float] | None) -> str:
    if lr is None:
        return ""
    return f"lr {lr[0]:g}" if lr[0] == lr[1] else f"client lr {lr[0]:g}, server lr {lr[1]:g}"


def _figure(
    dataset: str, model: str, cells: list[Group], ns: list[int], ratios: list[Any], k: int, plt: Any
) -> Any:
    """Test accuracy against rounds, a panel per (p, N): a line per algorithm and learning rate, coloured
    by algorithm (a second rate of one algorithm dashed, hollow markers), with a thick bar over the last k
    rounds at their mean, the number the table gives. One y range for every panel, fitted to the data.
    Every cell's cost per round is in the table; against cumulative cost a curve is stretched by it."""
    from matplotlib.lines import Line2D

    rates: dict[str, list[Any]] = defaultdict(list)  # each algorithm's rates, the first drawn plain
    for g in cells:
        if g.lr not in rates[g.algorithm]:
            rates[g.algorithm].append(g.lr)
    lr_varies = len({g.lr for g in cells}) > 1

    def look(g: Group) -> dict[str, Any]:
        base = style(g.algorithm).kwargs()
        if rates[g.algorithm].index(g.lr):
            base |= {"linestyle": (0, (4, 2)), "markerfacecolor": "white"}
        return base

    def name(g: Group) -> str:
        return label(g.algorithm) + (f", {_lr_text(g.lr)}" if lr_varies else "")

    fig, axes = plt.subplots(
        len(ratios), len(ns), figsize=(5.2 * len(ns), 3.9 * len(ratios) + 1.4), squeeze=False, sharex=True
    )
    handles: dict[str, Any] = {}
    low, high = 100.0, 0.0
    for row, p in zip(axes, ratios, strict=True):
        for ax, n in zip(row, ns, strict=True):
            here = [g for g in cells if g.ratio == p and g.setting[2] == n]
            if not here:  # a (p, N) the study did not run
                ax.set_axis_off()
                continue
            for g in here:
                rounds, acc, _ = g.curve("test_accuracy")
                ys = [100 * a for a in acc]
                if not ys:
                    continue
                (line,) = ax.plot(rounds, ys, linewidth=1.4, markersize=5, markevery=5, **look(g))
                handles.setdefault(name(g), line)
                last = g.last_k(k)
                if last and len(rounds) >= k:
                    level = 100 * sum(last) / len(last)
                    ax.plot(rounds[-k:], [level] * k, color=line.get_color(), linewidth=5, alpha=0.45)
                low, high = min(low, *ys), max(high, *ys)
            per_round = {round(v) for g in here for v in g.mean_over_rounds("participants")}
            every = "all" if per_round == {n} else ", ".join(map(str, sorted(per_round)))
            ax.set_title(f"p = {'–' if p is None else p}, N = {n:,} ({every} clients per round)")
            ax.grid(alpha=0.3)
            integer_rounds(ax)
    for ax in axes.flat:
        ax.set_ylim(max(0.0, 10 * (low // 10)), min(100.0, 10 * -(-high // 10)))
    for ax in axes[-1]:
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    bar = Line2D([], [], color="0.4", linewidth=5, alpha=0.45)
    seeds = {len(g.histories) for g in cells}
    fig.legend(
        [*handles.values(), bar],
        [*handles, f"thick bar: mean of the last {k} rounds"],
        loc="lower center",
        ncol=min(len(handles) + 1, 5),
        frameon=False,
    )
    one = "one seed" if seeds == {1} else "mean over seeds"
    fig.suptitle(f"{names(dataset, model)}: test accuracy against rounds ({one}), a panel per p and N")
    rows = -(-(len(handles) + 1) // 5)
    fig.tight_layout(rect=(0, 0.035 * rows + 0.02, 1, 1))
    return fig
