"""``splitfed report SWEEP_DIR``: the figures and tables that check the paper's claims (spec §8).

Reads every run of a sweep (config.toml + metrics.jsonl), groups runs that differ only in their seed, and
writes into SWEEP_DIR/report/: report.md (tables, including MiniBatch-SFL's improvement over SFL-V2 and
FL at each non-IID ratio in points and relative), aggregate.csv, and per setting (data set, model, N):
accuracy vs round at each ratio, final accuracy vs ratio (centralized as a line), accuracy and client-side
divergence vs cut layer, server- and client-side divergence vs ratio. Mean ± std over seeds throughout.
"""

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .errors import SplitfedError

FINAL_ROUNDS = 3  # final accuracy = mean test accuracy of the last rounds (damps round-to-round noise)
COMPARED = ["fedavg", "sfl_v1", "sfl_v2", "sl", "minibatch_sfl"]  # plotted against the ratio, in this order
# one colour per algorithm in every figure of every report
COLORS = {
    "fedavg": "C0",
    "sfl_v1": "C1",
    "sfl_v2": "C2",
    "sl": "C3",
    "minibatch_sfl": "C4",
    "centralized": "k",
}
DIVERGENCE_FORMS = [("", "raw"), ("_relative", "relative (÷‖∇F‖)"), ("_per_param", "per parameter (÷√dim)")]


@dataclass
class Group:
    """The runs of one configuration that differ only in their seed."""

    setting: tuple[str, str, int]  # (dataset, model, clients)
    algorithm: str
    cut_layer: int
    ratio: float | None
    histories: list[list[dict[str, Any]]] = field(default_factory=list)

    def final_accuracy(self) -> list[float]:
        return [statistics.fmean(r["test_accuracy"] for r in h[-FINAL_ROUNDS:]) for h in self.histories]

    def curve(self, key: str) -> tuple[list[int], list[float], list[float]]:
        """Rounds, mean and std over seeds of ``key`` (rounds every seed has)."""
        by_round: dict[int, list[float]] = defaultdict(list)
        for h in self.histories:
            for r in h:
                if r.get(key) is not None:
                    by_round[r["round"]].append(r[key])
        rounds = sorted(k for k, v in by_round.items() if len(v) == len(self.histories))
        return rounds, [statistics.fmean(by_round[k]) for k in rounds], [_std(by_round[k]) for k in rounds]

    def mean_over_rounds(self, key: str) -> list[float]:
        """Per seed, the mean of ``key`` over the rounds where it was measured (training dynamics)."""
        out = []
        for h in self.histories:
            values = [r[key] for r in h if r.get(key) is not None]
            if values:
                out.append(statistics.fmean(values))
        return out


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "–"
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * _std(values):.{digits}f}"


def load_groups(sweep_dir: Path) -> list[Group]:
    groups: dict[tuple, Group] = {}
    runs = sorted(p.parent for p in sweep_dir.glob("*/config.toml"))
    if not runs:
        raise SplitfedError(f"no runs in {sweep_dir} (expected run directories with config.toml)")
    for run_dir in runs:
        if not (run_dir / "summary.csv").is_file():
            continue  # unfinished: reported once the sweep completes it
        cfg = Config.from_toml(run_dir / "config.toml")
        ratio = cfg.non_iid_ratio if cfg.partition == "non_iid_ratio" else None
        histories: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            histories[rec["algorithm"]].append(rec)
        for algorithm, history in histories.items():
            setting = (cfg.dataset, cfg.model or "", cfg.clients)
            key = (setting, algorithm, cfg.cut_layer, ratio)
            group = groups.setdefault(key, Group(setting, algorithm, cfg.cut_layer or 0, ratio))
            group.histories.append(history)
    if not groups:
        raise SplitfedError(f"no finished runs in {sweep_dir} yet")
    return list(groups.values())


def _main_cut(groups: list[Group]) -> int:
    """The cut the baselines use: the comparison across algorithms is made there."""
    cuts = [g.cut_layer for g in groups if g.algorithm not in ("minibatch_sfl", "fedavg", "centralized")]
    cuts = cuts or [g.cut_layer for g in groups]
    return max(set(cuts), key=cuts.count)


@dataclass
class Setting:
    """The groups of one (data set, model, N), and what its figures and tables are drawn from."""

    groups: list[Group]
    out: Path

    def __post_init__(self) -> None:
        dataset, model, clients = self.groups[0].setting
        self.title = f"{dataset} {model}, N={clients}"
        self.tag = f"{dataset}_{model}_N{clients}"
        self.cut = _main_cut(self.groups)
        self.ratios = sorted({g.ratio for g in self.groups if g.ratio is not None})
        present = {g.algorithm for g in self.groups}
        self.algorithms = [a for a in [*COMPARED, "centralized"] if a in present]
        self.compared = [a for a in COMPARED if a in present]
        # the cross-algorithm comparisons are made at the baselines' cut; centralized has no cut
        self.at_cut = {
            (g.algorithm, g.ratio): g
            for g in self.groups
            if g.cut_layer == self.cut or g.algorithm == "centralized"
        }

    def group(self, algorithm: str, ratio: float | None) -> Group | None:
        if algorithm == "centralized":  # trained on the union of the clients' data: one line at any ratio
            return next((g for g in self.groups if g.algorithm == "centralized"), None)
        return self.at_cut.get((algorithm, ratio))

    def save(self, fig: Any, name: str) -> str:
        fig.tight_layout()
        fig.savefig(self.out / f"{name}_{self.tag}.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return f"![{name.replace('_', ' ')}]({name}_{self.tag}.png)"

    def accuracy_vs_round(self, plt: Any) -> list[str]:
        cols = min(len(self.ratios), 4)
        rows = (len(self.ratios) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False, sharey=True)
        for ax, p in zip(axes.flat, self.ratios, strict=False):
            for a in self.algorithms:
                g = self.group(a, p)
                if g is None:
                    continue
                rounds, mean, std = g.curve("test_accuracy")
                ax.plot(rounds, mean, label=a, color=COLORS[a], linestyle="--" if a == "centralized" else "-")
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(rounds, low, high, color=COLORS[a], alpha=0.2)
            ax.set(title=f"non-IID ratio p = {p}", xlabel="round", ylabel="test accuracy")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(self.ratios) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"{self.title}, cut {self.cut}: test accuracy (mean ± std over seeds)")
        return [self.save(fig, "accuracy_vs_round"), ""]

    def accuracy_vs_ratio(self, plt: Any) -> list[str]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for a in self.compared:
            pts = [(p, g.final_accuracy()) for p in self.ratios if (g := self.group(a, p))]
            means, stds = [statistics.fmean(v) for _, v in pts], [_std(v) for _, v in pts]
            ax.errorbar(
                [p for p, _ in pts], means, yerr=stds, marker="o", capsize=3, label=a, color=COLORS[a]
            )
        central = self.group("centralized", None)
        if central:
            ax.axhline(
                statistics.fmean(central.final_accuracy()), color="k", linestyle="--", label="centralized"
            )
        ax.set(xlabel="non-IID ratio p", ylabel=f"final test accuracy (last {FINAL_ROUNDS} rounds)")
        ax.set_title(f"{self.title}, cut {self.cut}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        lines = [self.save(fig, "accuracy_vs_noniid"), "", "Final test accuracy (%)", ""]
        lines += self._table(self.algorithms, lambda g: _fmt(g.final_accuracy()))
        return [*lines, ""]

    def improvement(self) -> list[str]:
        lines = [
            "MiniBatch-SFL's improvement in final accuracy (means over seeds), in points and relative to "
            "the baseline",
            "",
            "| p | MiniBatch-SFL | SFL-V2 | FL | over SFL-V2 | over FL |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.ratios:
            mb = self.group("minibatch_sfl", p)
            if mb is None:
                continue
            m = statistics.fmean(mb.final_accuracy())
            bases = [self.group(a, p) for a in ("sfl_v2", "fedavg")]
            base_acc = [statistics.fmean(b.final_accuracy()) if b else None for b in bases]
            cells = [f"{100 * m:.1f}"] + [f"{100 * b:.1f}" if b is not None else "–" for b in base_acc]
            cells += [f"{100 * (m - b):+.1f} pts ({100 * (m - b) / b:+.1f}%)" if b else "–" for b in base_acc]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        return [*lines, ""]

    def cut_layers(self, plt: Any) -> list[str]:
        cuts = sorted({g.cut_layer for g in self.groups if g.algorithm == "minibatch_sfl"})
        if len(cuts) < 2:
            return []
        fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
        panels = [("final", "final test accuracy")] + [(s, f"δ_c {name}") for s, name in DIVERGENCE_FORMS]
        lines = [
            "MiniBatch-SFL against the cut layer: final accuracy (%) and client-side divergence (mean over "
            "the "
            "rounds measured) in its three forms",
            "",
            "| p | cut | accuracy | δ_c raw | δ_c relative | δ_c per parameter |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.ratios or [None]:
            series = sorted(
                (g for g in self.groups if g.algorithm == "minibatch_sfl" and g.ratio == p),
                key=lambda g: g.cut_layer,
            )
            if len(series) < 2:
                continue
            for ax, (key, label) in zip(axes, panels, strict=True):
                vals = [
                    g.final_accuracy() if key == "final" else g.mean_over_rounds(f"divergence_client{key}")
                    for g in series
                ]
                ax.errorbar(
                    [g.cut_layer for g in series],
                    [_mean(v) for v in vals],
                    yerr=[_std(v) for v in vals],
                    marker="o",
                    capsize=3,
                    label=f"p = {p}",
                )
                ax.set(xlabel="cut layer", ylabel=label, xticks=cuts)
            for g in series:
                divs = [
                    _fmt(g.mean_over_rounds(f"divergence_client{s}"), 1.0, 4) for s, _ in DIVERGENCE_FORMS
                ]
                lines.append(
                    f"| {p} | {g.cut_layer} | {_fmt(g.final_accuracy())} | " + " | ".join(divs) + " |"
                )
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"MiniBatch-SFL on {self.title}: accuracy and client-side divergence vs cut layer")
        return [*lines, "", self.save(fig, "cut_layer"), ""]

    def divergence_vs_ratio(self, plt: Any) -> list[str]:
        groups = [g for a in self.compared for p in self.ratios if (g := self.group(a, p))]
        if not any(g.mean_over_rounds("divergence_client_relative") for g in groups):
            return []  # divergence_every = 0: nothing was measured, no empty figure
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, side in zip(axes, ("client", "server"), strict=True):
            for a in self.compared:
                pts = [
                    (p, g.mean_over_rounds(f"divergence_{side}_relative"))
                    for p in self.ratios
                    if (g := self.group(a, p))
                ]
                pts = [(p, v) for p, v in pts if v]
                ax.errorbar(
                    [p for p, _ in pts],
                    [_mean(v) for _, v in pts],
                    yerr=[_std(v) for _, v in pts],
                    marker="o",
                    capsize=3,
                    label=a,
                    color=COLORS[a],
                )
            ax.set(xlabel="non-IID ratio p", ylabel=f"δ_{side[0]} / ‖∇F‖")
            ax.set_title(f"{side}-side divergence (relative), mean over rounds")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{self.title}, cut {self.cut}")

        def cell(g: Group) -> str:
            c = _mean(g.mean_over_rounds("divergence_client_relative"))
            s = _mean(g.mean_over_rounds("divergence_server_relative"))
            return f"{c:.3f} / {s:.3f}" if c is not None and s is not None else "–"

        lines = [
            "Gradient divergence vs non-IID ratio (relative form, mean over the rounds measured): "
            "client side / "
            "server side",
            "",
        ]
        lines += self._table(self.compared, cell)
        return [*lines, "", self.save(fig, "divergence_vs_noniid"), ""]

    def _table(self, algorithms: list[str], cell: Any) -> list[str]:
        lines = [
            "| algorithm | " + " | ".join(f"p = {p}" for p in self.ratios) + " |",
            "|---|" + "---|" * len(self.ratios),
        ]
        for a in algorithms:
            cells = [cell(g) if (g := self.group(a, p)) else "–" for p in self.ratios]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        return lines

    def aggregate_rows(self) -> list[dict[str, Any]]:
        rows = []
        for g in self.groups:
            finals = g.final_accuracy()
            row = {
                "dataset": g.setting[0],
                "model": g.setting[1],
                "clients": g.setting[2],
                "algorithm": g.algorithm,
                "cut_layer": g.cut_layer,
                "non_iid_ratio": g.ratio,
                "seeds": len(finals),
                "final_accuracy_mean": statistics.fmean(finals),
                "final_accuracy_std": _std(finals),
            }
            for side in ("client", "server"):
                for suffix, _ in DIVERGENCE_FORMS:
                    row[f"divergence_{side}{suffix}_mean"] = _mean(
                        g.mean_over_rounds(f"divergence_{side}{suffix}")
                    )
            rows.append(row)
        return rows


def report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write report.md, aggregate.csv and the figures to ``out`` (default SWEEP_DIR/report/); returns
    the path of report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SplitfedError(f"{sweep_dir} is not a directory")
    groups = load_groups(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    md = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"Final accuracy is the mean test accuracy of the last {FINAL_ROUNDS} rounds. "
        "Every number is the mean ± "
        "std over seeds; accuracies in %, divergences averaged over the rounds where they were measured.",
    ]
    aggregate: list[dict[str, Any]] = []
    for key in sorted({g.setting for g in groups}):
        setting = Setting([g for g in groups if g.setting == key], out)
        md += ["", f"## {setting.title} (algorithms compared at cut layer {setting.cut})", ""]
        if setting.ratios:
            md += setting.accuracy_vs_round(plt) + setting.accuracy_vs_ratio(plt) + setting.improvement()
        md += setting.cut_layers(plt)
        if setting.ratios:
            md += setting.divergence_vs_ratio(plt)
        aggregate += setting.aggregate_rows()
    with (out / "aggregate.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(aggregate[0]))
        writer.writeheader()
        writer.writerows(aggregate)
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None
