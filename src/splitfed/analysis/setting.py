"""One setting (data set, model, N, other varying fields) at one learning-rate view: its cells, and the
margins table of the algorithm of interest."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plotstyle import label, save_figure
from .aggregate import paired_margin
from .cells import Group, main_cut, rank
from .claims import Claims
from .text import fmt, fmt_lr, mean, names, safe, show, std


@dataclass
class Setting:
    """The cells of one (data set, model, N, other varying fields) at one learning-rate view, and what its
    figures and tables are drawn from."""

    groups: list[Group]
    out: Path
    claims: Claims = field(default_factory=Claims)
    view: str = ""  # e.g. "at lr 0.01"; empty where lr does not vary
    view_tag: str = ""  # appended to figure file names

    def __post_init__(self) -> None:
        dataset, model, clients = self.groups[0].setting
        others = self.groups[0].others
        self.title = f"{names(dataset, model)}, N={clients}" + "".join(f", {k}: {show(v)}" for k, v in others)
        self.tag = safe(f"{dataset}_{model}_N{clients}" + "".join(f"_{show(v)}" for _, v in others))
        self.tag += self.view_tag
        self.k = self.claims.last_k
        self.cut = main_cut(self.groups)
        self.ratios = sorted({g.ratio for g in self.groups if g.ratio is not None})
        present = {g.algorithm for g in self.groups}
        self.algorithms = sorted(present, key=rank)
        self.compared = [a for a in self.algorithms if a != "centralized"]
        # the cross-algorithm comparisons are made at the main cut; centralized has no cut
        self.at_cut = {
            (g.algorithm, g.ratio): g
            for g in self.groups
            if g.cut_layer == self.cut or g.algorithm == "centralized"
        }
        self.figures: dict[str, Any] = {}  # name -> the matplotlib figure written (closed)

    def group(self, algorithm: str, ratio: float | None) -> Group | None:
        if algorithm == "centralized":  # trained on the union of the clients' data: one line at any ratio
            return next((g for g in self.groups if g.algorithm == "centralized"), None)
        return self.at_cut.get((algorithm, ratio))

    def save(self, fig: Any, name: str) -> str:
        fig.tight_layout()
        save_figure(fig, self.out / f"{name}_{self.tag}", dpi=110)
        self.figures[name] = fig
        return f"![{name.replace('_', ' ')}]({name}_{self.tag}.png) ([SVG]({name}_{self.tag}.svg))"

    def view_line(self) -> str:
        """The learning-rate view, as a second line of a figure's title."""
        return f"\n{self.view}" if self.view else ""

    def table(self, algorithms: list[str], cell: Any) -> list[str]:
        lines = [
            "| algorithm | " + " | ".join(f"p = {p}" for p in self.ratios) + " |",
            "|---|" + "---|" * len(self.ratios),
        ]
        for a in algorithms:
            cells = [cell(g) if (g := self.group(a, p)) else "–" for p in self.ratios]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        return lines


def margins(s: Setting) -> tuple[list[str], list[dict[str, Any]]]:
    """The algorithm of interest over each baseline (from the claims), paired by seed; the table and
    the rows of margins.csv."""
    c = s.claims
    if c.algorithm is None or not c.baselines:
        return [], []
    k = s.k
    lines = [
        f"{label(c.algorithm)}'s margin over each baseline, in points (pts) and relative to the baseline "
        f"(%), of the final round's test accuracy and of the last-{k} mean; mean ± std over the seeds "
        "both have (paired by seed)",
        "",
        f"| p | over | seeds | final: pts | final: relative | last-{k}: pts | last-{k}: relative | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for p in s.ratios or [None]:
        a = s.group(c.algorithm, p)
        if a is None:
            continue
        for base in c.baselines:
            b = s.group(base, p)
            if b is None:
                continue
            final = paired_margin(a, b, lambda g: g.final())
            last = paired_margin(a, b, lambda g: g.last_k(k))
            paper = "; ".join(f"up to +{f.margin:g} (pts or %)" for f in c.figures(base, a)) or "–"
            lines.append(
                f"| {'–' if p is None else p} | {label(base)} | {len(final.seeds)} | "
                f"{fmt(final.points, sign='+')} | {fmt(final.relative, sign='+')} | "
                f"{fmt(last.points, sign='+')} | {fmt(last.relative, sign='+')} | {paper} |"
            )
            row = {"setting": s.title, "view": s.view or "all", "non_iid_ratio": p}
            row |= {"cut_layer": a.cut_layer, "algorithm": c.algorithm, "baseline": base}
            row |= {"algorithm_lr": fmt_lr(a.lr), "baseline_lr": fmt_lr(b.lr)}
            row |= {"seeds_paired": len(final.seeds), "last_k": k}
            for name, m in (("final", final), ("last_k", last)):
                for unit, values in (("points", m.points), ("relative", m.relative)):
                    row[f"{name}_{unit}_mean"] = mean(values)
                    row[f"{name}_{unit}_std"] = std(values) if values else None
            rows.append(row)
    if not rows:
        return [], []
    return [*lines, ""], rows
