"""Cells: the runs of one configuration that differ only in their seed, and the statistics over them."""

import math
import statistics
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..plotstyle import VARIANT, split_variant
from .text import freeze, show, std

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
    # seeds of this cell whose run diverged (stopped on a non-finite loss): not in ``histories``, but a
    # rate that diverged in any seed is not one to choose
    diverged: list[Any] = field(default_factory=list)

    def seed_ids(self) -> list[Any]:
        return self.seeds if len(self.seeds) == len(self.histories) else list(range(len(self.histories)))

    def only(self, seeds: Collection[Any]) -> "Group":
        """The cell restricted to ``seeds`` (its runs of other seeds, finished or diverged, left out)."""
        ids = self.seed_ids()
        keep = [i for i, seed in enumerate(ids) if seed in seeds]
        return replace(
            self,
            histories=[self.histories[i] for i in keep],
            seeds=[ids[i] for i in keep],
            diverged=[seed for seed in self.diverged if seed in seeds],
        )

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

    def sim_time_to(self, target: float) -> list[float | None]:
        """Per seed, the simulated seconds (``profile``) until the end of the first round whose test
        accuracy reaches ``target``; None: never in the run."""
        return [
            next((r["sim_time_s"] for r in h if r.get("test_accuracy", -math.inf) >= target), None)
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
        return rounds, [statistics.fmean(by_round[k]) for k in rounds], [std(by_round[k]) for k in rounds]

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


def cut_order(cut: int | str) -> tuple[int, int, str]:
    """Numbered cuts in order, then cuts named by module (a graph model's), by name."""
    return (0, cut, "") if isinstance(cut, int) else (1, 0, str(cut))


def main_cut(groups: list[Group]) -> int | str:
    """The cut at which the most algorithms ran (the earliest of a tie): algorithms are compared there."""
    algorithms_at: dict[int | str, set[str]] = defaultdict(set)
    for g in groups:
        algorithms_at[g.cut_layer].add(g.algorithm)
    count = [g.cut_layer for g in groups]
    return min(algorithms_at, key=lambda c: (-len(algorithms_at[c]), -count.count(c), cut_order(c)))


def rank(algorithm: str) -> tuple[int, str]:
    """Compared algorithms first (in COMPARED's order, each variant after its algorithm), then others by
    name, then centralized."""
    base, tail = split_variant(algorithm)
    if base in COMPARED:
        return COMPARED.index(base), algorithm if tail else ""
    return (len(COMPARED) + 1 if algorithm == "centralized" else len(COMPARED)), algorithm


def group_runs(
    finished: list[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]],
    diverged: Sequence[tuple[dict[str, Any], str]] = (),
) -> list[Group]:
    """The cells of a study's finished runs, each given as (its config, its records by algorithm): runs
    that differ only in their seed share a cell; the fields that vary across the study (finished or
    diverged) name the rest. ``diverged``: (config, the algorithm that diverged) of each run that stopped
    on a non-finite loss; its seed joins that cell's ``diverged`` (a cell where every seed diverged has no
    history)."""
    lost = [(cfg, {name: []}) for cfg, name in diverged]
    every = [*finished, *lost]
    fields = sorted({k for cfg, _ in every for k in cfg} - NOT_GROUPED)
    varying = [f for f in fields if len({freeze(cfg.get(f)) for cfg, _ in every}) > 1]
    variants = variant_fields(every, [f for f in varying if f not in OWN_PLACE])
    groups: dict[tuple, Group] = {}
    for (cfg, histories), failed in [*((run, False) for run in finished), *((run, True) for run in lost)]:
        setting = (cfg.get("dataset"), cfg.get("model") or "", cfg.get("clients"))
        ratio = cfg.get("non_iid_ratio") if cfg.get("partition") == "non_iid_ratio" else None
        lr = (cfg.get("client_lr") or cfg.get("lr"), cfg.get("server_lr") or cfg.get("lr"))
        named = [f for f in varying if f not in OWN_PLACE and f not in variants and cfg.get(f) not in UNSET]
        others = tuple((f, freeze(cfg[f])) for f in named)
        variant = [(f, freeze(cfg.get(f))) for f, usual in variants.items() if freeze(cfg.get(f)) != usual]
        seed = tuple(cfg.get(f) for f in SEED_FIELDS)
        seed = seed[0] if all(s is None for s in seed[1:]) else seed
        for name, history in histories.items():
            algorithm = name + (
                f"{VARIANT}{', '.join(f'{f}={show(v)}' for f, v in variant)})" if variant else ""
            )
            cut = cfg.get("cut_layer") or 0
            # centralized training sees the union of the clients' data: its config's ratio means nothing
            at = None if name == "centralized" else ratio
            key = (setting, others, algorithm, cut, at, lr)
            group = groups.setdefault(key, Group(setting, algorithm, cut, at, lr=lr, others=others))
            if failed:
                group.diverged.append(seed)
                continue
            group.histories.append(history)
            group.seeds.append(seed)
    return list(groups.values())


def variant_fields(
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
                values[algorithm].add(freeze(cfg.get(f)))
        several = [a for a, v in values.items() if len(v) > 1]
        rest = {v for a, vs in values.items() if a not in several for v in vs}
        if len(several) == 1 and len(rest) == 1 and rest <= values[several[0]]:
            variants[f] = next(iter(rest))
    return variants
