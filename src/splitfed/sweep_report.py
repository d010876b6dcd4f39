"""``splitfed report SWEEP_DIR``: the figures and tables of a sweep, and how they bear on a claims file.

Reads every finished run of a sweep (config.toml + metrics.jsonl) and groups them into cells: runs whose
config differs only in the seed. The grouping keys are whatever config fields vary across the sweep
(besides the seeds and where/how a run executes). Per cell, over seeds: the final round's test accuracy,
the mean of the last k rounds, the best round, rounds to each target accuracy; per setting (data set,
model, N and any other varying field): accuracy vs round with seed bands, accuracy vs non-IID ratio,
accuracy and divergence vs cut layer, divergence vs ratio. Where the learning rate varies, everything is
shown at a reference lr and with each algorithm at its best lr, chosen on validation accuracy (never on
test accuracy). A claims file (``experiments/paper/claims.toml``) names the algorithm of interest, its
baselines, the targets and the paper's figures; the report then adds the margins, paired by seed.

Writes into SWEEP_DIR/report/ (or ``out``): report.md, aggregate.csv (a row per cell), margins.csv, and
each figure as PNG and SVG. Given one run's directory (``splitfed report RUN``), the same tables for that
run alone, with its own table and figures (as ``splitfed run`` writes them) at the top.
"""

import csv
import dataclasses
import json
import math
import re
import statistics
import tomllib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .errors import SplitfedError
from .report import (
    COSTS,
    VARIANT,
    accuracy_axis,
    dataset_name,
    format_table,
    integer_rounds,
    label,
    line_kwargs,
    model_name,
    plot_run,
    read_metrics,
    run_title,
    save_figure,
    split_variant,
    style,
    summarize,
)

DEFAULT_CLAIMS = Path("experiments/paper/claims.toml")  # relative to the current directory
DEFAULT_LAST_K = 5
COMPARED = ["fedavg", "sfl_v1", "sfl_v2", "sl", "minibatch_sfl"]  # plotted against the ratio, in this order
SEED_FIELDS = ("seed", "partition_seed", "init_seed", "sampling_seed")
LR_FIELDS = ("lr", "client_lr", "server_lr")
# fields that say where or how a run executes, not what it computes: never a grouping key
NOT_GROUPED = {*SEED_FIELDS, "algorithm", "out", "resume", "threads", "device", "data_dir", "figures"}
# fields with a place of their own in a cell (the setting, the cut and ratio axes, the learning rate)
OWN_PLACE = {"dataset", "model", "clients", "cut_layer", "non_iid_ratio", *LR_FIELDS}
# a varying field a run leaves unset names nothing in its setting: cnn4's empty model_args beside a
# resnet18's width = 16 (the resnet18 runs are "width=16", the cnn4 runs are not "model_args=()")
UNSET = (None, {}, "", [])
DIVERGENCE_FORMS = [("", "raw"), ("_relative", "relative (÷‖∇F‖)"), ("_per_param", "per parameter (÷√dim)")]
_CONFIG_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING
}


# ---------------------------------------------------------------------------------------------------------
# claims


@dataclass(frozen=True)
class PaperFigure:
    """One number the paper reports: ``algorithm``'s margin over ``baseline`` in the setting ``where``."""

    baseline: str
    margin: float  # as the paper prints it (percent; points or relative unspecified)
    where: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Claims:
    """What a report checks a sweep against; ``Claims()`` is none: the generic tables only."""

    algorithm: str | None = None  # the algorithm of interest
    baselines: tuple[str, ...] = ()  # margins of `algorithm` over each
    last_k: int = DEFAULT_LAST_K  # the last-k mean is over a run's last k rounds
    targets: tuple[float, ...] = ()  # rounds to reach these test accuracies
    reference_lr: float | None = None  # where lr varies: the "at lr X" view
    paper: tuple[PaperFigure, ...] = ()
    source: str | None = None  # the file read

    def figures(self, baseline: str, group: "Group") -> list[PaperFigure]:
        """The paper's figures about ``baseline`` whose setting matches ``group``."""
        return [
            f
            for f in self.paper
            if f.baseline == baseline and all(_same(group.value_of(k), v) for k, v in f.where.items())
        ]


def load_claims(path: str | Path) -> Claims:
    path = Path(path)
    if not path.is_file():
        raise SplitfedError(f"claims file {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SplitfedError(f"{path}: {e}") from None
    known = {f.name for f in dataclasses.fields(Claims)} - {"source"}
    if unknown := sorted(set(raw) - known):
        raise SplitfedError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    try:
        paper = tuple(PaperFigure(**entry) for entry in raw.pop("paper", []))
    except TypeError as e:
        raise SplitfedError(f"{path}: [[paper]]: {e}") from None
    claims = Claims(
        algorithm=raw.get("algorithm"),
        baselines=tuple(raw.get("baselines", ())),
        last_k=int(raw.get("last_k", DEFAULT_LAST_K)),
        targets=tuple(float(t) for t in raw.get("targets", ())),
        reference_lr=raw.get("reference_lr"),
        paper=paper,
        source=str(path),
    )
    if claims.last_k < 1:
        raise SplitfedError(f"{path}: last_k must be at least 1, got {claims.last_k}")
    return claims


def _resolve_claims(claims: "str | Path | Claims | None") -> Claims:
    if isinstance(claims, Claims):
        return claims
    if claims is not None:
        return load_claims(claims)
    return load_claims(DEFAULT_CLAIMS) if DEFAULT_CLAIMS.is_file() else Claims()


# ---------------------------------------------------------------------------------------------------------
# cells


@dataclass
class Group:
    """A cell: the runs of one configuration that differ only in their seed."""

    setting: tuple[str, str, int]  # (dataset, model, clients)
    algorithm: str
    cut_layer: int | str
    ratio: float | None
    histories: list[list[dict[str, Any]]] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)  # each history's seed: pairs runs across cells
    lr: tuple[float, float] | None = None  # effective (client-side, server-side) learning rate
    others: tuple[tuple[str, Any], ...] = ()  # the other config fields that vary across the sweep

    def seed_ids(self) -> list[Any]:
        return self.seeds if len(self.seeds) == len(self.histories) else list(range(len(self.histories)))

    def values(self, key: str, h: list[dict[str, Any]]) -> list[float]:
        return [r[key] for r in h if r.get(key) is not None]

    def final(self, key: str = "test_accuracy") -> list[float]:
        """Per seed, ``key`` at the last round that has it."""
        return [v[-1] for h in self.histories if (v := self.values(key, h))]

    def last_k(self, k: int, key: str = "test_accuracy") -> list[float]:
        """Per seed, the mean of ``key`` over the last k rounds that have it."""
        return [statistics.fmean(v[-k:]) for h in self.histories if (v := self.values(key, h))]

    def best(self, key: str = "test_accuracy") -> list[float]:
        return [max(v) for h in self.histories if (v := self.values(key, h))]

    def has(self, key: str) -> bool:
        """Every seed recorded ``key`` (e.g. val_accuracy, only with a validation split)."""
        return bool(self.histories) and all(self.values(key, h) for h in self.histories)

    def rounds_to(self, target: float) -> list[int | None]:
        """Per seed, the first round whose test accuracy reaches ``target``; None: never in the run."""
        return [
            next((r["round"] for r in h if r.get("test_accuracy", -math.inf) >= target), None)
            for h in self.histories
        ]

    def by_seed(self, values: list[float]) -> dict[Any, float]:
        return dict(zip(self.seed_ids(), values, strict=True))

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
        return [statistics.fmean(v) for h in self.histories if (v := self.values(key, h))]

    def value_of(self, name: str) -> Any:
        """The value of config field ``name`` in this cell (as far as the report knows it)."""
        known = {
            "dataset": self.setting[0],
            "model": self.setting[1],
            "clients": self.setting[2],
            "algorithm": self.algorithm,
            "cut_layer": self.cut_layer,
            "non_iid_ratio": self.ratio,
            "client_lr": self.lr[0] if self.lr else None,
            "server_lr": self.lr[1] if self.lr else None,
            "lr": self.lr[0] if self.lr and self.lr[0] == self.lr[1] else None,
        }
        return known[name] if name in known else dict(self.others).get(name)

    def slot(self) -> tuple:
        """The cell without its learning rate: cells of one slot differ only in lr."""
        return (self.setting, self.others, self.algorithm, self.cut_layer, self.ratio)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b)
    return a == b


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def legend_of_every_panel(ax: Any, panels: Any) -> None:
    """One legend on ``ax`` naming every algorithm drawn in any panel: the first panel may lack one
    (a grid still running, an algorithm not run at that p)."""
    seen: dict[str, Any] = {}
    for panel in panels:
        for handle, name in zip(*panel.get_legend_handles_labels(), strict=True):
            seen.setdefault(name, handle)
    if seen:
        ax.legend(list(seen.values()), list(seen), fontsize=8)


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1, sign: str = "") -> str:
    """Mean ± std of ``values`` × scale; sign="+" writes the mean's sign always (margins). One value has no
    spread to show: "92.4 (n = 1)", not "92.4 ± 0.0", which would claim seeds that agree."""
    if not values:
        return "–"
    mean = f"{scale * statistics.fmean(values):{sign}.{digits}f}"
    return f"{mean} (n = 1)" if len(values) == 1 else f"{mean} ± {scale * _std(values):.{digits}f}"


def _fmt_rounds(rounds: list[int | None]) -> str:
    reached = [r for r in rounds if r is not None]
    if not reached:
        return "never"
    text = _fmt([float(r) for r in reached], 1.0)
    return text if len(reached) == len(rounds) else f"{text}, never in {len(rounds) - len(reached)}"


def _fmt_lr(lr: tuple[float, float] | None) -> str:
    if lr is None:
        return "–"
    return f"{lr[0]:g}" if lr[0] == lr[1] else f"η_c {lr[0]:g}, η_s {lr[1]:g}"


def _freeze(value: Any) -> Any:
    """A TOML value as something hashable (lists and tables become tuples)."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _read_config(path: Path) -> dict[str, Any]:
    """A run's config.toml as written, with Config's defaults for fields it lacks. Read as TOML, not as a
    Config, so that runs written by an older or newer splitfed still report."""
    try:
        return _CONFIG_DEFAULTS | tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SplitfedError(f"{path}: {e}") from None


def is_run(path: Path) -> bool:
    """Whether ``path`` is one run's directory rather than a sweep's."""
    return (Path(path) / "config.toml").is_file()


def _read_history(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's round records (a line cut short, or not a record of its algorithms, is one line)."""
    algorithms = config.get("algorithm") or ()
    return read_metrics(
        run_dir / "metrics.jsonl", [algorithms] if isinstance(algorithms, str) else algorithms
    )


def load_groups(sweep_dir: Path) -> list[Group]:
    """The cells of a sweep's finished runs (of one run's, where ``sweep_dir`` is a run directory)."""
    sweep_dir = Path(sweep_dir)
    runs = [sweep_dir] if is_run(sweep_dir) else sorted(p.parent for p in sweep_dir.glob("*/config.toml"))
    if not runs:
        raise SplitfedError(
            f"no runs in {sweep_dir} (expected a run directory, or a sweep of them, with config.toml)"
        )
    finished = []
    for run_dir in runs:
        if not (run_dir / "summary.csv").is_file():
            continue  # unfinished: reported once the sweep completes it
        config = _read_config(run_dir / "config.toml")
        histories: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in _read_history(run_dir, config):
            histories[rec["algorithm"]].append(rec)
        finished.append((config, histories))
    if not finished:
        raise SplitfedError(
            f"{sweep_dir} is unfinished (no summary.csv): continue it with --resume"
            if runs == [sweep_dir]
            else f"no finished runs in {sweep_dir} yet"
        )
    fields = sorted({k for cfg, _ in finished for k in cfg} - NOT_GROUPED)
    varying = [f for f in fields if len({_freeze(cfg.get(f)) for cfg, _ in finished}) > 1]
    variants = _variant_fields(finished, [f for f in varying if f not in OWN_PLACE])
    groups: dict[tuple, Group] = {}
    for cfg, histories in finished:
        setting = (cfg.get("dataset"), cfg.get("model") or "", cfg.get("clients"))
        ratio = cfg.get("non_iid_ratio") if cfg.get("partition") == "non_iid_ratio" else None
        lr = (cfg.get("client_lr") or cfg.get("lr"), cfg.get("server_lr") or cfg.get("lr"))
        named = [f for f in varying if f not in OWN_PLACE and f not in variants and cfg.get(f) not in UNSET]
        others = tuple((f, _freeze(cfg[f])) for f in named)
        variant = [(f, _freeze(cfg.get(f))) for f, usual in variants.items() if _freeze(cfg.get(f)) != usual]
        seed = tuple(cfg.get(f) for f in SEED_FIELDS)
        seed = seed[0] if all(s is None for s in seed[1:]) else seed
        for name, history in histories.items():
            algorithm = name + (
                f"{VARIANT}{', '.join(f'{f}={_show(v)}' for f, v in variant)})" if variant else ""
            )
            cut = cfg.get("cut_layer") or 0
            # centralized training sees the union of the clients' data: its config's ratio means nothing
            at = None if name == "centralized" else ratio
            key = (setting, others, algorithm, cut, at, lr)
            group = groups.setdefault(key, Group(setting, algorithm, cut, at, lr=lr, others=others))
            group.histories.append(history)
            group.seeds.append(seed)
    return list(groups.values())


def _variant_fields(
    finished: list[tuple[dict[str, Any], dict[str, Any]]], fields: list[str]
) -> dict[str, Any]:
    """The fields that one algorithm alone varies (SFL-V2's schedule, say), each with the one value every
    other algorithm ran with. Such a field makes a variant of that algorithm, a row of its own beside the
    others (``sfl_v2 (sflv2_schedule=interleaved)``), rather than a setting where it has no one to be
    compared with."""
    variants = {}
    for f in fields:
        values: dict[str, set[Any]] = defaultdict(set)
        for cfg, histories in finished:
            for algorithm in histories:
                values[algorithm].add(_freeze(cfg.get(f)))
        several = [a for a, v in values.items() if len(v) > 1]
        rest = {v for a, vs in values.items() if a not in several for v in vs}
        if len(several) == 1 and len(rest) == 1 and rest <= values[several[0]]:
            variants[f] = next(iter(rest))
    return variants


# ---------------------------------------------------------------------------------------------------------
# learning-rate selection


@dataclass
class Selection:
    """For one slot (a cell without its lr): the lr candidates and the one chosen on validation accuracy."""

    candidates: list[Group]
    scores: list[float | None]  # mean over seeds of the last-k mean of val_accuracy; None: not recorded
    chosen: Group | None  # None: there was a choice to make but no validation accuracy to make it on


def select_lr(groups: list[Group], k: int) -> dict[tuple, Selection]:
    """Per slot, the cell whose lr gives the best validation accuracy (mean over seeds of its last-k
    mean). Test accuracy is never looked at: choosing on it would report the test set's best case.
    A slot tried at one lr only keeps it; a slot where some candidate lacks val_accuracy is not chosen."""
    slots: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups:
        slots[g.slot()].append(g)
    out = {}
    for key, candidates in slots.items():
        candidates.sort(key=lambda g: g.lr or (0.0, 0.0))
        scores = [
            statistics.fmean(g.last_k(k, "val_accuracy")) if g.has("val_accuracy") else None
            for g in candidates
        ]
        if len(candidates) == 1:
            chosen: Group | None = candidates[0]
        elif all(s is not None for s in scores):
            chosen = candidates[max(range(len(candidates)), key=lambda i: (scores[i], -i))]
        else:
            chosen = None
        out[key] = Selection(candidates, scores, chosen)
    return out


# ---------------------------------------------------------------------------------------------------------
# margins


@dataclass
class Margin:
    """``algorithm`` over ``baseline`` on the seeds both have, per seed: in points and relative."""

    seeds: list[Any]
    points: list[float]  # a − b (accuracy as a fraction; ×100 for points)
    relative: list[float]  # (a − b) / b


def paired_margin(a: Group, b: Group, stat: Callable[[Group], list[float]]) -> Margin:
    """The margin of ``a`` over ``b`` in ``stat`` (one value per seed), paired by seed."""
    va, vb = a.by_seed(stat(a)), b.by_seed(stat(b))
    seeds = [s for s in va if s in vb]
    return Margin(
        seeds,
        [va[s] - vb[s] for s in seeds],
        [(va[s] - vb[s]) / vb[s] if vb[s] else math.nan for s in seeds],
    )


# ---------------------------------------------------------------------------------------------------------
# one setting, one learning-rate view


def cut_order(cut: int | str) -> tuple[int, int, str]:
    """Numbered cuts in order, then cuts named by module (a graph model's), by name."""
    return (0, cut, "") if isinstance(cut, int) else (1, 0, str(cut))


def _main_cut(groups: list[Group]) -> int | str:
    """The cut at which the most algorithms ran (the earliest of a tie): algorithms are compared there."""
    algorithms_at: dict[int | str, set[str]] = defaultdict(set)
    for g in groups:
        algorithms_at[g.cut_layer].add(g.algorithm)
    count = [g.cut_layer for g in groups]
    return min(algorithms_at, key=lambda c: (-len(algorithms_at[c]), -count.count(c), cut_order(c)))


def _rank(algorithm: str) -> tuple[int, str]:
    """Compared algorithms first (in COMPARED's order, each variant after its algorithm), then others by
    name, then centralized."""
    base, tail = split_variant(algorithm)
    if base in COMPARED:
        return COMPARED.index(base), algorithm if tail else ""
    return (len(COMPARED) + 1 if algorithm == "centralized" else len(COMPARED)), algorithm


def _show(value: Any) -> str:
    """A frozen TOML value as a reader writes it: (('width', 16),) -> width=16."""
    if isinstance(value, tuple):
        if all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return ",".join(f"{k}={_show(v)}" for k, v in value)
        return ",".join(_show(v) for v in value)
    return str(value)


def _names(dataset: str, model: str) -> str:
    """A setting's data set and model as a title shows them: their names, not config.toml's fingerprints
    (file names keep what config.toml records: two data sets given as tensors stay apart)."""
    return f"{dataset_name(dataset)} {model_name(model)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")


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
        self.title = f"{_names(dataset, model)}, N={clients}" + "".join(
            f", {k}: {_show(v)}" for k, v in others
        )
        self.tag = _safe(f"{dataset}_{model}_N{clients}" + "".join(f"_{_show(v)}" for _, v in others))
        self.tag += self.view_tag
        self.k = self.claims.last_k
        self.cut = _main_cut(self.groups)
        self.ratios = sorted({g.ratio for g in self.groups if g.ratio is not None})
        present = {g.algorithm for g in self.groups}
        self.algorithms = sorted(present, key=_rank)
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

    def accuracy_vs_round(self, plt: Any) -> list[str]:
        panels = self.ratios or [None]
        cols = min(len(panels), 4)
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(
            rows, cols, figsize=(max(4.5 * cols, 9.0), 3.6 * rows + 0.6), squeeze=False, sharey=True
        )
        for ax, p in zip(axes.flat, panels, strict=False):
            for a in self.algorithms:
                g = self.group(a, p)
                if g is None:
                    continue
                rounds, mean, std = g.curve("test_accuracy")
                ax.plot(rounds, [100 * m for m in mean], **line_kwargs(a, len(rounds)))
                if len(g.histories) == 1:
                    continue  # one seed has no spread to shade
                low = [100 * (m - s) for m, s in zip(mean, std, strict=True)]
                high = [100 * (m + s) for m, s in zip(mean, std, strict=True)]
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
        seeds = {len(g.histories) for g in self.groups}
        over = "one seed (n = 1)" if seeds == {1} else "mean ± std over seeds"
        fig.suptitle(f"{self.title}, cut {self.cut}: test accuracy, {over}{self._view()}")
        return [self.save(fig, "accuracy_vs_round"), ""]

    def accuracy_vs_cost(self, plt: Any) -> list[str]:
        """Test accuracy (mean over seeds) against what the clients spent to reach it, cumulative: bytes
        per client and client-side GFLOP, a row of panels per non-IID ratio; log cost axes, as the run's."""
        panels = self.ratios or [None]
        fig, axes = plt.subplots(len(panels), len(COSTS), figsize=(13, 4.2 * len(panels)), squeeze=False)
        for row, p in zip(axes, panels, strict=True):
            for ax, (cost, xlabel, what) in zip(row, COSTS.values(), strict=True):
                spent_nothing = []
                for a in self.algorithms:
                    g = self.group(a, p)
                    if g is None:
                        continue
                    rounds, acc, _ = g.curve("test_accuracy")
                    spent = dict(zip(*_cumulative(g, cost), strict=True))
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
        fig.suptitle(f"{self.title}, cut {self.cut}: test accuracy against client cost{self._view()}")
        return [self.save(fig, "accuracy_vs_cost"), ""]

    def accuracy_vs_ratio(self, plt: Any) -> list[str]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for a in self.compared:
            pts = [(p, g.last_k(self.k)) for p in self.ratios if (g := self.group(a, p))]
            if not pts:
                continue
            ax.errorbar(
                [p for p, _ in pts],
                [100 * statistics.fmean(v) for _, v in pts],
                yerr=[100 * _std(v) for _, v in pts],
                capsize=3,
                **line_kwargs(a, len(pts)),
            )
        central = self.group("centralized", None)
        if central:
            ax.axhline(
                100 * statistics.fmean(central.last_k(self.k)),
                color=style("centralized").color,
                linestyle=style("centralized").linestyle,
                label=label("centralized"),
            )
        ax.set(xlabel="non-IID ratio p", ylabel=f"test accuracy (%), mean of the last {self.k} rounds")
        accuracy_axis(ax)
        ax.set_title(f"{self.title}, cut {self.cut}{self._view()}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        lines = [self.save(fig, "accuracy_vs_noniid"), "", f"Last-{self.k} mean test accuracy (%)", ""]
        lines += self._table(self.algorithms, lambda g: _fmt(g.last_k(self.k)))
        return [*lines, ""]

    def margins(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The algorithm of interest over each baseline (from the claims), paired by seed; the table and
        the rows of margins.csv."""
        c = self.claims
        if c.algorithm is None or not c.baselines:
            return [], []
        k = self.k
        lines = [
            f"{label(c.algorithm)}'s margin over each baseline, in points (pts) and relative to the baseline "
            f"(%), of the final round's test accuracy and of the last-{k} mean; mean ± std over the seeds "
            "both have (paired by seed)",
            "",
            f"| p | over | seeds | final: pts | final: relative | last-{k}: pts | last-{k}: relative "
            "| paper |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = []
        for p in self.ratios or [None]:
            a = self.group(c.algorithm, p)
            if a is None:
                continue
            for base in c.baselines:
                b = self.group(base, p)
                if b is None:
                    continue
                final = paired_margin(a, b, lambda g: g.final())
                last = paired_margin(a, b, lambda g: g.last_k(k))
                paper = "; ".join(f"up to +{f.margin:g} (pts or %)" for f in c.figures(base, a)) or "–"
                lines.append(
                    f"| {'–' if p is None else p} | {label(base)} | {len(final.seeds)} | "
                    f"{_fmt(final.points, sign='+')} | {_fmt(final.relative, sign='+')} | "
                    f"{_fmt(last.points, sign='+')} | {_fmt(last.relative, sign='+')} | {paper} |"
                )
                row = {"setting": self.title, "view": self.view or "all", "non_iid_ratio": p}
                row |= {"cut_layer": a.cut_layer, "algorithm": c.algorithm, "baseline": base}
                row |= {"algorithm_lr": _fmt_lr(a.lr), "baseline_lr": _fmt_lr(b.lr)}
                row |= {"seeds_paired": len(final.seeds), "last_k": k}
                for name, m in (("final", final), ("last_k", last)):
                    for unit, values in (("points", m.points), ("relative", m.relative)):
                        row[f"{name}_{unit}_mean"] = _mean(values)
                        row[f"{name}_{unit}_std"] = _std(values) if values else None
                rows.append(row)
        if not rows:
            return [], []
        return [*lines, ""], rows

    def cut_layers(self, plt: Any) -> list[str]:
        out: list[str] = []
        several = [
            a for a in self.algorithms if len({g.cut_layer for g in self.groups if g.algorithm == a}) > 1
        ]
        for algorithm in several:
            out += self._cut_layers(
                plt, algorithm, "cut_layer" if len(several) == 1 else f"cut_layer_{algorithm}"
            )
        return out

    def _cut_layers(self, plt: Any, algorithm: str, name: str) -> list[str]:
        cuts = sorted({g.cut_layer for g in self.groups if g.algorithm == algorithm}, key=cut_order)
        fig, axes = plt.subplots(2, 4, figsize=(19, 8.0))
        # (metric, scale, axis label): the first row is the client side, the second the server side and
        # what a cut costs the client in bytes
        panels = [("last_k", 100.0, f"test accuracy (%), last {self.k} rounds")]
        panels += [(f"divergence_client{s}", 1.0, f"δ_c {form}") for s, form in DIVERGENCE_FORMS]
        panels += [("bytes_up_per_client", 1e-6, "MB sent per client per round")]
        panels += [(f"divergence_server{s}", 1.0, f"δ_s {form}") for s, form in DIVERGENCE_FORMS]
        lines = [
            f"{label(algorithm)} against the cut layer: last-{self.k} mean test accuracy (%), client-side "
            "(δ_c) and server-side (δ_s) divergence in their three forms (raw, relative, per parameter; "
            "mean over the rounds measured), megabytes each client sends per round and the clients' "
            "training GFLOP per round (all clients)",
            "",
            "| p | cut | accuracy | δ_c raw | δ_c rel | δ_c /param | δ_s raw | δ_s rel | δ_s /param "
            "| MB up/cl/rd | client GFLOP/rd |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in self.ratios or [None]:
            series = sorted(
                (g for g in self.groups if g.algorithm == algorithm and g.ratio == p),
                key=lambda g: cut_order(g.cut_layer),
            )
            if len(series) < 2:
                continue
            for ax, (key, scale, ylabel) in zip(axes.flat, panels, strict=True):
                vals = [g.last_k(self.k) if key == "last_k" else g.mean_over_rounds(key) for g in series]
                ax.errorbar(
                    [g.cut_layer for g in series],
                    [scale * m if (m := _mean(v)) is not None else math.nan for v in vals],
                    yerr=[scale * _std(v) for v in vals],
                    marker="o",
                    capsize=3,
                    label=f"p = {p}",
                )
                ax.set(xlabel="cut layer", ylabel=ylabel, xticks=cuts)
                if key == "last_k":
                    accuracy_axis(ax)
            for g in series:
                divs = [
                    _fmt(g.mean_over_rounds(f"divergence_{side}{s}"), 1.0, 4)
                    for side in ("client", "server")
                    for s, _ in DIVERGENCE_FORMS
                ]
                cost = [
                    _fmt(g.mean_over_rounds("bytes_up_per_client"), 1e-6, 3),
                    _fmt(g.mean_over_rounds("client_flops"), 1e-9, 2),
                ]
                lines.append(
                    f"| {'–' if p is None else p} | {g.cut_layer} | {_fmt(g.last_k(self.k))} | "
                    + " | ".join(divs + cost)
                    + " |"
                )
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        fig.suptitle(
            f"{label(algorithm)} on {self.title}: accuracy, divergence and bytes vs cut layer" + self._view()
        )
        return [*lines, "", self.save(fig, name), ""]

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
                if not pts:
                    continue
                ax.errorbar(
                    [p for p, _ in pts],
                    [statistics.fmean(v) for _, v in pts],
                    yerr=[_std(v) for _, v in pts],
                    capsize=3,
                    **line_kwargs(a, len(pts)),
                )
            ax.set(xlabel="non-IID ratio p", ylabel=f"δ_{side[0]} / ‖∇F‖ (ratio, no unit)")
            ax.set_title(f"{side}-side divergence (relative), mean over rounds")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{self.title}, cut {self.cut}{self._view()}")

        def cell(g: Group) -> str:
            c = _mean(g.mean_over_rounds("divergence_client_relative"))
            s = _mean(g.mean_over_rounds("divergence_server_relative"))
            return f"{c:.3f} / {s:.3f}" if c is not None and s is not None else "–"

        lines = [
            "Gradient divergence vs non-IID ratio (relative form, mean over the rounds measured): "
            "client side / server side",
            "",
        ]
        lines += self._table(self.compared, cell)
        return [*lines, "", self.save(fig, "divergence_vs_noniid"), ""]

    def _view(self) -> str:
        """The learning-rate view, as a second line of a figure's title."""
        return f"\n{self.view}" if self.view else ""

    def _table(self, algorithms: list[str], cell: Any) -> list[str]:
        lines = [
            "| algorithm | " + " | ".join(f"p = {p}" for p in self.ratios) + " |",
            "|---|" + "---|" * len(self.ratios),
        ]
        for a in algorithms:
            cells = [cell(g) if (g := self.group(a, p)) else "–" for p in self.ratios]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        return lines

    def sections(self, plt: Any) -> tuple[list[str], list[dict[str, Any]]]:
        """This view's part of report.md, and its rows of margins.csv."""
        md = self.accuracy_vs_round(plt) + self.accuracy_vs_cost(plt)
        if self.ratios:
            md += self.accuracy_vs_ratio(plt)
        margin_lines, margin_rows = self.margins()
        md += margin_lines + self.cut_layers(plt)
        if self.ratios:
            md += self.divergence_vs_ratio(plt)
        return md, margin_rows


# ---------------------------------------------------------------------------------------------------------
# per-cell table, aggregate.csv, the report


def _cell_table(groups: list[Group], claims: Claims, lr_varies: bool) -> list[str]:
    k = claims.last_k
    with_val = any(g.has("val_accuracy") for g in groups)
    head = ["algorithm", "cut", "p", *(["lr"] if lr_varies else []), "seeds", "final", f"last-{k}", "best"]
    head += [f"val last-{k}"] if with_val else []
    head += [f"rounds to {100 * t:g} %" for t in claims.targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [g.algorithm, str(g.cut_layer), "–" if g.ratio is None else str(g.ratio)]
        cells += [_fmt_lr(g.lr)] if lr_varies else []
        cells += [str(len(g.histories)), _fmt(g.final()), _fmt(g.last_k(k)), _fmt(g.best())]
        cells += [_fmt(g.last_k(k, "val_accuracy"))] if with_val else []
        cells += [_fmt_rounds(g.rounds_to(t)) for t in claims.targets]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _aggregate_row(g: Group, claims: Claims, chosen: bool | None) -> dict[str, Any]:
    k = claims.last_k
    row: dict[str, Any] = {
        "dataset": g.setting[0],
        "model": g.setting[1],
        "clients": g.setting[2],
        **dict(g.others),
        "algorithm": g.algorithm,
        "cut_layer": g.cut_layer,
        "non_iid_ratio": g.ratio,
        "client_lr": g.lr[0] if g.lr else None,
        "server_lr": g.lr[1] if g.lr else None,
        "seeds": len(g.histories),
        "last_k": k,
    }
    for name, values in (
        ("final_accuracy", g.final()),
        ("last_k_accuracy", g.last_k(k)),
        ("best_accuracy", g.best()),
        ("val_last_k_accuracy", g.last_k(k, "val_accuracy")),
    ):
        row[f"{name}_mean"] = _mean(values)
        row[f"{name}_std"] = _std(values) if values else None
    row["chosen_on_val"] = chosen
    for t in claims.targets:
        rounds = g.rounds_to(t)
        reached = [r for r in rounds if r is not None]
        row[f"rounds_to_{t:g}_mean"] = _mean(reached)
        row[f"rounds_to_{t:g}_reached"] = f"{len(reached)}/{len(rounds)}"
    for side in ("client", "server"):
        for suffix, _ in DIVERGENCE_FORMS:
            row[f"divergence_{side}{suffix}_mean"] = _mean(g.mean_over_rounds(f"divergence_{side}{suffix}"))
    return row


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _order(g: Group) -> tuple:
    """Cells in table order: by ratio, cut, algorithm, learning rate."""
    return (
        -1.0 if g.ratio is None else g.ratio,
        cut_order(g.cut_layer),
        _rank(g.algorithm),
        g.lr or (0.0, 0.0),
    )


def _claims_lines(claims: Claims) -> list[str]:
    if claims.source is None and claims.algorithm is None:
        return [
            "No claims file: the generic tables only (no margins, no rounds to a target, no reference "
            "learning rate). `splitfed report SWEEP --claims FILE` adds them.",
        ]
    lines = [f"Claims from `{claims.source or 'the caller'}`:"]
    if claims.algorithm:
        bases = ", ".join(label(b) for b in claims.baselines) or "none"
        lines.append(f"{label(claims.algorithm)} against {bases}.")
    for f in claims.paper:
        where = ", ".join(f"{k} = {v}" for k, v in f.where.items()) or "any setting"
        lines.append(f"The paper: {f.text or f'+{f.margin:g} over {label(f.baseline)}'} ({where}).")
    return [" ".join(lines)]


def _report_setting(
    cells: list[Group], out: Path, claims: Claims, plt: Any
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """One setting's section of report.md, its rows of aggregate.csv and of margins.csv. Where the
    learning rate varies, the figures and tables are drawn once per view: at the reference lr (at each lr
    without one) and, when validation accuracy allows, with each algorithm at its best lr."""
    k = claims.last_k
    lrs = sorted({g.lr for g in cells if g.lr is not None})
    lr_varies = len(lrs) > 1
    selection = select_lr(cells, k) if lr_varies else {}
    chosen = {id(s.chosen) for s in selection.values() if s.chosen is not None}
    aggregate = [_aggregate_row(g, claims, (id(g) in chosen) if lr_varies else None) for g in cells]
    first = Setting(cells, out, claims)
    md = ["", f"## {first.title} (algorithms compared at cut layer {first.cut})", ""]
    md += ["**Every cell**", "", *_cell_table(cells, claims, lr_varies), ""]
    if not lr_varies:
        lines, margins = first.sections(plt)
        return md + lines, aggregate, margins
    ref = claims.reference_lr
    views: list[tuple[str, str, list[Group]]] = []
    for lr in [(ref, ref)] if ref is not None else lrs:  # no reference lr: none is preferred, a view at each
        at = [g for g in cells if g.lr is not None and all(map(_same, g.lr, lr))]
        if at:
            views.append((f"at lr {_fmt_lr(lr)}", _safe(f"_lr{_fmt_lr(lr)}"), at))
        else:
            md += [f"No run of this setting used the reference lr {_fmt_lr(lr)}.", ""]
    md += _selection_lines(selection, k)
    if all(s.chosen is not None for s in selection.values()):  # a partial view would mix tuned and untuned
        best = [s.chosen for s in selection.values() if s.chosen is not None]
        views.append(("each algorithm at its best lr (on validation accuracy)", "_best-lr", best))
    margins = []
    for view, tag, view_groups in views:
        lines, rows = Setting(view_groups, out, claims, view, tag).sections(plt)
        md += ["", f"### {view}", "", *lines]
        margins += rows
    return md, aggregate, margins


def _selection_lines(selection: dict[tuple, Selection], k: int) -> list[str]:
    """The learning rate chosen per cell, on validation accuracy, with every candidate's score."""
    multi = {key: s for key, s in selection.items() if len(s.candidates) > 1}
    if not multi:
        return []
    if all(s.chosen is None for s in multi.values()):
        return [
            "The learning rate varies, but no run recorded `val_accuracy` (configure a validation split): "
            "no learning rate is selected. Selecting on test accuracy would overstate every algorithm, so "
            "the report does not.",
            "",
        ]
    lines = [
        f"Learning rate chosen per cell on validation accuracy (mean over seeds of the last-{k} mean of "
        "`val_accuracy`; test accuracy is never used); each candidate's score in %",
        "",
        "| algorithm | cut | p | chosen lr | candidates |",
        "|---|---|---|---|---|",
    ]
    for s in multi.values():
        g = s.candidates[0]
        cands = ", ".join(
            f"{_fmt_lr(c.lr)}: {'–' if v is None else f'{100 * v:.1f}'}"
            for c, v in zip(s.candidates, s.scores, strict=True)
        )
        chosen = _fmt_lr(s.chosen.lr) if s.chosen else "none (no val_accuracy)"
        lines.append(
            f"| {g.algorithm} | {g.cut_layer} | {'–' if g.ratio is None else g.ratio} | {chosen} | {cands} |"
        )
    if any(s.chosen is None for s in multi.values()):
        lines += [
            "",
            "Some cells lack `val_accuracy`, so there is no best-lr view "
            "(it would mix tuned and untuned cells).",
        ]
    if uneven := _uneven_searches(selection):
        lines += [
            "",
            "Not every algorithm tried the same rates, so where they differ the best-lr view compares "
            "searches of unequal reach: " + "; ".join(uneven) + ".",
        ]
    return [*lines, ""]


def _uneven_searches(selection: dict[tuple, Selection]) -> list[str]:
    """Each place (cut, p) where the algorithms' candidate rates differ, with every algorithm's rates."""
    tried: dict[tuple, dict[str, str]] = defaultdict(dict)
    for (_, _, algorithm, cut, ratio), s in selection.items():
        if algorithm != "centralized":  # one run at its own rate, not a comparison at a p
            tried[cut, ratio][algorithm] = "/".join(_fmt_lr(c.lr) for c in s.candidates)
    return [
        f"cut {cut}, p = {'–' if ratio is None else ratio}: "
        + ", ".join(f"{a} {by_algorithm[a]}" for a in sorted(by_algorithm, key=_rank))
        for (cut, ratio), by_algorithm in tried.items()
        if len(set(by_algorithm.values())) > 1
    ]


def _cumulative(g: Group, of: Callable[[dict[str, Any]], float]) -> tuple[list[int], list[float]]:
    """Rounds every seed has, and the mean over seeds of ``of(record)`` summed up to each round."""
    totals: dict[int, list[float]] = defaultdict(list)
    for h in g.histories:
        total = 0.0
        for r in h:
            total += of(r)
            totals[r["round"]].append(total)
    rounds = sorted(k for k, v in totals.items() if len(v) == len(g.histories))
    return rounds, [statistics.fmean(totals[k]) for k in rounds]


def _totals(g: Group, of: Callable[[dict[str, Any]], float]) -> list[float]:
    """Per seed, ``of(record)`` summed over the run."""
    return [sum(of(r) for r in h) for h in g.histories]


def _client_flops(record: dict[str, Any]) -> float:
    return float(record.get("client_flops") or 0.0)


def _wire_bytes(record: dict[str, Any]) -> float:
    """Bytes every client sent and received in the round, together (the record's tally by kind)."""
    return float(sum((record.get("bytes") or {}).values()))


def _clients_sections(groups: list[Group], out: Path, claims: Claims, plt: Any) -> list[str]:
    """Where runs of one data set and model differ in the number of clients N: accuracy against rounds,
    against the clients' cumulative training compute and against the bytes on the wire, a line per
    (algorithm, N, lr), and a table of what each cell cost."""
    families: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        families[g.setting[:2]].append(g)
    md: list[str] = []
    for (dataset, model), cells in sorted(families.items(), key=str):
        ns = sorted({g.setting[2] for g in cells})
        if len(ns) < 2:
            continue
        ratios = sorted({g.ratio for g in cells}, key=lambda r: -1.0 if r is None else r)
        lr_varies = len({g.lr for g in cells}) > 1
        cells = sorted(cells, key=lambda g: (_rank(g.algorithm), g.setting[2], g.lr or (0.0, 0.0)))
        fig, axes = plt.subplots(len(ratios), 3, figsize=(18, 4.4 * len(ratios)), squeeze=False)
        dashes = ["-", "--", ":", "-."]
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
                name = f"{label(g.algorithm)}, N={n}" + (f", lr {_fmt_lr(g.lr)}" if lr_varies else "")
                look = style(g.algorithm).kwargs() | {"linestyle": dashes[ns.index(n) % len(dashes)]}
                look |= {"marker": None, "label": name}
                rounds, acc, _ = g.curve("test_accuracy")
                flops, wire = (
                    dict(zip(*_cumulative(g, of), strict=True)) for of in (_client_flops, _wire_bytes)
                )
                ys = [100 * a for a in acc]
                for ax, xs, xlabel in (
                    (axes[row, 0], rounds, "round"),
                    (axes[row, 1], [1e-9 * flops[r] for r in rounds], "client GFLOP, cumulative"),
                    (axes[row, 2], [1e-6 * wire[r] for r in rounds], "wire MB, cumulative"),
                ):
                    ax.plot(xs, ys, **look)
                    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=f"p = {p}")
                    accuracy_axis(ax)
                    if xlabel != "round":
                        ax.set_xscale("log")
                table.append(
                    f"| {g.algorithm} | {'–' if p is None else p} | {n} | "
                    f"{_fmt(g.mean_over_rounds('participants'), 1.0, 0)} | {_fmt_lr(g.lr)} | "
                    f"{_fmt(g.last_k(claims.last_k))} | {_fmt(g.mean_over_rounds('round_time_s'), 1.0, 2)} | "
                    f"{_fmt(_totals(g, _client_flops), 1e-9, 0)} | {_fmt(_totals(g, _wire_bytes), 1e-6, 0)} |"
                )
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        legend_of_every_panel(axes[0, 0], axes.flat)
        fig.suptitle(f"{_names(dataset, model)}: accuracy against rounds, client compute and bytes, N = {ns}")
        fig.tight_layout()
        stem = _safe(f"clients_{dataset}_{model}")
        save_figure(fig, out / stem, dpi=110)
        md += ["", f"## {_names(dataset, model)}: against the number of clients", "", *table, ""]
        md += [f"![accuracy against the number of clients]({stem}.png) ([SVG]({stem}.svg))", ""]
    return md


def _run_lines(run_dir: Path, out: Path) -> list[str]:
    """One run's table and figures, as ``splitfed run`` wrote them (drawn again into ``out``)."""
    config = _read_config(run_dir / "config.toml")
    history = _read_history(run_dir, config)
    present = dict.fromkeys(r["algorithm"] for r in history)
    algorithms = [a for a in config.get("algorithm") or () if a in present]
    algorithms += [a for a in present if a not in algorithms]
    loss = None  # a run older than the loss's record: its axis names no loss
    if (run_dir / "data.json").is_file():
        loss = json.loads((run_dir / "data.json").read_text()).get("loss")
    paths = plot_run(history, algorithms, out, run_title(config), loss)
    stems = list(dict.fromkeys(p.stem for p in paths))
    md = ["", f"## {run_title(config)}", "", "```", format_table(summarize(history, algorithms)), "```", ""]
    return md + [f"![{stem.replace('_', ' ')}]({stem}.png) ([SVG]({stem}.svg))" for stem in stems] + [""]


def report(
    sweep_dir: str | Path, out: str | Path | None = None, claims: "str | Path | Claims | None" = None
) -> Path:
    """Write report.md, aggregate.csv, margins.csv and the figures to ``out`` (default SWEEP_DIR/report/);
    returns the path of report.md. ``sweep_dir`` may be one run's directory. ``claims``: a claims file or
    Claims; None reads experiments/paper/claims.toml when the current directory has it, else reports
    without claims."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SplitfedError(f"{sweep_dir} is not a directory")
    claims = _resolve_claims(claims)
    k = claims.last_k
    groups = load_groups(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    varying = sorted({name for g in groups for name, _ in g.others})
    single = is_run(sweep_dir)
    md = [
        f"# {'Run' if single else 'Sweep'} report: {sweep_dir.name}",
        "",
        f"Per cell (runs that differ only in their seed), over seeds: **final** = test accuracy at the last "
        f"round, **last-{k}** = mean test accuracy of the last {k} rounds (all of a shorter run), "
        "**best** = the best round"
        + (
            ", **rounds to X %** = the first round whose test accuracy reaches X % "
            "(never: not within the run)"
            if claims.targets
            else ""
        )
        + ". Every number is the mean ± std over seeds (one seed's is marked n = 1); accuracies in %, "
        "divergences averaged over the rounds where they were measured. Algorithms are compared at one cut "
        "layer per setting (the one most of them ran at); curves are shaded ± 1 std over seeds. Accuracy "
        "axes span 0–100 %; cost axes (bytes, client GFLOP) are cumulative and logarithmic.",
        "",
        *_claims_lines(claims),
    ]
    if varying:
        md += [
            "",
            "Other config fields that vary across the sweep (each value its own setting): "
            + ", ".join(varying)
            + ".",
        ]
    if single:
        md += _run_lines(sweep_dir, out)
    aggregate: list[dict[str, Any]] = []
    margin_rows: list[dict[str, Any]] = []
    for key in sorted({(g.setting, g.others) for g in groups}, key=str):
        cells = sorted((g for g in groups if (g.setting, g.others) == key), key=_order)
        lines, rows, margins = _report_setting(cells, out, claims, plt)
        md += lines
        aggregate += rows
        margin_rows += margins
    md += _clients_sections(groups, out, claims, plt)
    _write_csv(aggregate, out / "aggregate.csv")
    if margin_rows:
        _write_csv(margin_rows, out / "margins.csv")
    else:
        (out / "margins.csv").unlink(missing_ok=True)  # not left over from a report with claims
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"
