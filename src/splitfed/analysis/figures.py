"""A setting's figures, each with the table that goes with it in report.md."""

import math
import statistics
from typing import Any

from ..plotstyle import COSTS, accuracy_axis, integer_rounds, label, line_kwargs, style
from .aggregate import cumulative
from .cells import DIVERGENCE_FORMS, Group, cut_order
from .setting import Setting, margins
from .text import fmt, mean, std


def legend_of_every_panel(ax: Any, panels: Any) -> None:
    """One legend on ``ax`` naming every algorithm drawn in any panel: the first panel may lack one
    (a grid still running, an algorithm not run at that p)."""
    seen: dict[str, Any] = {}
    for panel in panels:
        for handle, name in zip(*panel.get_legend_handles_labels(), strict=True):
            seen.setdefault(name, handle)
    if seen:
        ax.legend(list(seen.values()), list(seen), fontsize=8)


def accuracy_vs_round(s: Setting, plt: Any) -> list[str]:
    panels = s.ratios or [None]
    cols = min(len(panels), 4)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(4.5 * cols, 9.0), 3.6 * rows + 0.6), squeeze=False, sharey=True
    )
    for ax, p in zip(axes.flat, panels, strict=False):
        for a in s.algorithms:
            g = s.group(a, p)
            if g is None:
                continue
            rounds, avg, spread = g.curve("test_accuracy")
            ax.plot(rounds, [100 * m for m in avg], **line_kwargs(a, len(rounds)))
            if len(g.histories) == 1:
                continue  # one seed has no spread to shade
            low = [100 * (m - d) for m, d in zip(avg, spread, strict=True)]
            high = [100 * (m + d) for m, d in zip(avg, spread, strict=True)]
            ax.fill_between(rounds, low, high, color=style(a).color, alpha=0.15, linewidth=0)
        ax.set(xlabel="round", ylabel="test accuracy (%)")
        accuracy_axis(ax)
        if p is not None:
            ax.set_title(f"non-IID ratio p = {p}")
        integer_rounds(ax)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    legend_of_every_panel(axes.flat[0], axes.flat)
    seeds = {len(g.histories) for g in s.groups}
    over = "one seed (n = 1)" if seeds == {1} else "mean ± std over seeds"
    fig.suptitle(f"{s.title}, cut {s.cut}: test accuracy, {over}{s.view_line()}")
    return [s.save(fig, "accuracy_vs_round"), ""]


def accuracy_vs_cost(s: Setting, plt: Any) -> list[str]:
    """Test accuracy (mean over seeds) against what the clients spent to reach it, cumulative: bytes
    per client and client-side GFLOP, a row of panels per non-IID ratio; log cost axes, as the run's."""
    panels = s.ratios or [None]
    fig, axes = plt.subplots(len(panels), len(COSTS), figsize=(13, 4.2 * len(panels)), squeeze=False)
    for row, p in zip(axes, panels, strict=True):
        for ax, (cost, xlabel, what) in zip(row, COSTS.values(), strict=True):
            spent_nothing = []
            for a in s.algorithms:
                g = s.group(a, p)
                if g is None:
                    continue
                rounds, acc, _ = g.curve("test_accuracy")
                spent = dict(zip(*cumulative(g, cost), strict=True))
                xs = [spent[r] for r in rounds]
                if xs and max(xs) > 0:
                    ax.plot(xs, [100 * m for m in acc], **line_kwargs(a, len(xs)))
                elif xs:
                    spent_nothing.append(label(a))
            ax.set(xlabel=xlabel, ylabel="test accuracy (%)", xscale="log")
            accuracy_axis(ax)
            title = "" if p is None else f"non-IID ratio p = {p}"
            if spent_nothing:
                title += f"{'; ' if title else ''}not drawn ({what}): {', '.join(spent_nothing)}"
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
    legend_of_every_panel(axes.flat[0], axes.flat)
    fig.suptitle(f"{s.title}, cut {s.cut}: test accuracy against client cost{s.view_line()}")
    return [s.save(fig, "accuracy_vs_cost"), ""]


def accuracy_vs_ratio(s: Setting, plt: Any) -> list[str]:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for a in s.compared:
        pts = [(p, g.last_k(s.k)) for p in s.ratios if (g := s.group(a, p))]
        if not pts:
            continue
        ax.errorbar(
            [p for p, _ in pts],
            [100 * statistics.fmean(v) for _, v in pts],
            yerr=[100 * std(v) for _, v in pts],
            capsize=3,
            **line_kwargs(a, len(pts)),
        )
    central = s.group("centralized", None)
    if central:
        ax.axhline(
            100 * statistics.fmean(central.last_k(s.k)),
            color=style("centralized").color,
            linestyle=style("centralized").linestyle,
            label=label("centralized"),
        )
    ax.set(xlabel="non-IID ratio p", ylabel=f"test accuracy (%), mean of the last {s.k} rounds")
    accuracy_axis(ax)
    ax.set_title(f"{s.title}, cut {s.cut}{s.view_line()}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lines = [s.save(fig, "accuracy_vs_noniid"), "", f"Last-{s.k} mean test accuracy (%)", ""]
    lines += s.table(s.algorithms, lambda g: fmt(g.last_k(s.k)))
    return [*lines, ""]


def cut_layers(s: Setting, plt: Any) -> list[str]:
    out: list[str] = []
    several = [a for a in s.algorithms if len({g.cut_layer for g in s.groups if g.algorithm == a}) > 1]
    for algorithm in several:
        out += _cut_layers(s, plt, algorithm, "cut_layer" if len(several) == 1 else f"cut_layer_{algorithm}")
    return out


def _cut_layers(s: Setting, plt: Any, algorithm: str, name: str) -> list[str]:
    cuts = sorted({g.cut_layer for g in s.groups if g.algorithm == algorithm}, key=cut_order)
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.0))
    # (metric, scale, axis label): the first row is the client side, the second the server side and
    # what a cut costs the client in bytes
    panels = [("last_k", 100.0, f"test accuracy (%), last {s.k} rounds")]
    panels += [(f"divergence_client{x}", 1.0, f"δ_c {form}") for x, form in DIVERGENCE_FORMS]
    panels += [("bytes_up_per_client", 1e-6, "MB sent per client per round")]
    panels += [(f"divergence_server{x}", 1.0, f"δ_s {form}") for x, form in DIVERGENCE_FORMS]
    lines = [
        f"{label(algorithm)} against the cut layer: last-{s.k} mean test accuracy (%), client-side "
        "(δ_c) and server-side (δ_s) divergence in their three forms (raw, relative, per parameter; "
        "mean over the rounds measured), megabytes each client sends per round and the clients' "
        "training GFLOP per round (all clients)",
        "",
        "| p | cut | accuracy | δ_c raw | δ_c rel | δ_c /param | δ_s raw | δ_s rel | δ_s /param "
        "| MB up/cl/rd | client GFLOP/rd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in s.ratios or [None]:
        series = sorted(
            (g for g in s.groups if g.algorithm == algorithm and g.ratio == p),
            key=lambda g: cut_order(g.cut_layer),
        )
        if len(series) < 2:
            continue
        for ax, (key, scale, ylabel) in zip(axes.flat, panels, strict=True):
            vals = [g.last_k(s.k) if key == "last_k" else g.mean_over_rounds(key) for g in series]
            ax.errorbar(
                [g.cut_layer for g in series],
                [scale * m if (m := mean(v)) is not None else math.nan for v in vals],
                yerr=[scale * std(v) for v in vals],
                marker="o",
                capsize=3,
                label=f"p = {p}",
            )
            ax.set(xlabel="cut layer", ylabel=ylabel, xticks=cuts)
            if key == "last_k":
                accuracy_axis(ax)
        lines += [_cut_row(s, g, p) for g in series]
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        f"{label(algorithm)} on {s.title}: accuracy, divergence and bytes vs cut layer" + s.view_line()
    )
    return [*lines, "", s.save(fig, name), ""]


def _cut_row(s: Setting, g: Group, p: float | None) -> str:
    """One cell's row of the cut-layer table: accuracy, the six divergences, bytes and compute."""
    divs = [
        fmt(g.mean_over_rounds(f"divergence_{side}{suffix}"), 1.0, 4)
        for side in ("client", "server")
        for suffix, _ in DIVERGENCE_FORMS
    ]
    cost = [
        fmt(g.mean_over_rounds("bytes_up_per_client"), 1e-6, 3),
        fmt(g.mean_over_rounds("client_flops"), 1e-9, 2),
    ]
    head = f"| {'–' if p is None else p} | {g.cut_layer} | {fmt(g.last_k(s.k))} | "
    return head + " | ".join(divs + cost) + " |"


def divergence_vs_ratio(s: Setting, plt: Any) -> list[str]:
    groups = [g for a in s.compared for p in s.ratios if (g := s.group(a, p))]
    if not any(g.mean_over_rounds("divergence_client_relative") for g in groups):
        return []  # divergence_every = 0: nothing was measured, no empty figure
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, side in zip(axes, ("client", "server"), strict=True):
        for a in s.compared:
            pts = [
                (p, g.mean_over_rounds(f"divergence_{side}_relative"))
                for p in s.ratios
                if (g := s.group(a, p))
            ]
            pts = [(p, v) for p, v in pts if v]
            if not pts:
                continue
            ax.errorbar(
                [p for p, _ in pts],
                [statistics.fmean(v) for _, v in pts],
                yerr=[std(v) for _, v in pts],
                capsize=3,
                **line_kwargs(a, len(pts)),
            )
        ax.set(xlabel="non-IID ratio p", ylabel=f"δ_{side[0]} / ‖∇F‖ (ratio, no unit)")
        ax.set_title(f"{side}-side divergence (relative), mean over rounds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{s.title}, cut {s.cut}{s.view_line()}")

    def cell(g: Group) -> str:
        c = mean(g.mean_over_rounds("divergence_client_relative"))
        v = mean(g.mean_over_rounds("divergence_server_relative"))
        return f"{c:.3f} / {v:.3f}" if c is not None and v is not None else "–"

    lines = [
        "Gradient divergence vs non-IID ratio (relative form, mean over the rounds measured): "
        "client side / server side",
        "",
    ]
    lines += s.table(s.compared, cell)
    return [*lines, "", s.save(fig, "divergence_vs_noniid"), ""]


def sections(s: Setting, plt: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """This view's part of report.md, and its rows of margins.csv."""
    md = accuracy_vs_round(s, plt) + accuracy_vs_cost(s, plt)
    if s.ratios:
        md += accuracy_vs_ratio(s, plt)
    margin_lines, margin_rows = margins(s)
    md += margin_lines + cut_layers(s, plt)
    if s.ratios:
        md += divergence_vs_ratio(s, plt)
    return md, margin_rows
