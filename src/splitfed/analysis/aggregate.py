"""Over cells: the learning rate chosen on validation, margins paired by seed, costs summed over rounds,
and a cell's row of aggregate.csv."""

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cells import DIVERGENCE_FORMS, Group
from .claims import Claims
from .text import mean, std


@dataclass
class Selection:
    """For one slot (a cell without its lr): the lr candidates and the one chosen on validation accuracy."""

    candidates: list[Group]
    scores: list[float | None]  # mean over ``seeds`` of the last-k mean of val_accuracy; None: not recorded
    chosen: Group | None  # None: there was a choice to make but no validation accuracy to make it on
    # where some candidate ran seeds no other candidate did (the chosen rate given more seeds for its
    # margins), the seeds the rates are compared on: those two or more candidates ran. A rate must not be
    # chosen again on seeds only it has. None: every seed counts.
    seeds: list[Any] | None = None
    # rates run in fewer seeds than the chosen one that beat it on the seeds both ran: a staged search
    # (every rate in one seed, the close ones in more) must run them in the chosen rate's other seeds
    # before its choice stands. Empty: the choice is settled.
    unsettled: list[Group] = field(default_factory=list)


def select_lr(groups: list[Group], k: int) -> dict[tuple, Selection]:
    """Per slot, the cell whose lr gives the best validation accuracy (mean over seeds of each seed's
    last-k mean; a seed only one rate ran does not count). Test accuracy is never looked at: choosing on
    it would report the test set's best case. A slot tried at one lr only keeps it (there is no choice to
    make, diverged seeds or not); otherwise a rate that diverged in any seed is never chosen (its
    surviving seeds' score would hide the others), and a slot where some other candidate lacks
    val_accuracy, or where every rate diverged somewhere, is not chosen."""
    slots: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups:
        slots[g.slot()].append(g)
    out = {}
    for key, candidates in slots.items():
        candidates.sort(key=lambda g: g.lr or (0.0, 0.0))
        stable = [i for i, g in enumerate(candidates) if not g.diverged]
        # a seed only one rate ran (the chosen rate given more seeds for its margins) is left out
        ran = Counter(seed for g in candidates for seed in {*g.seed_ids(), *g.diverged})
        shared = (
            sorted(s for s, n in ran.items() if n > 1) if len(candidates) > 1 and 1 in ran.values() else []
        )
        scores = [_val_score(g.only(shared) if set(shared) & set(g.seed_ids()) else g, k) for g in candidates]
        if len(candidates) == 1:
            chosen: Group | None = candidates[0] if candidates[0].histories else None
        elif stable and all(scores[i] is not None for i in stable):
            chosen = candidates[max(stable, key=lambda i: (scores[i], -i))]
        else:
            chosen = None
        out[key] = Selection(candidates, scores, chosen, shared or None, _unsettled(chosen, candidates, k))
    return out


def _unsettled(chosen: Group | None, candidates: list[Group], k: int) -> list[Group]:
    """The stable rates lacking some of ``chosen``'s seeds that score above it on the seeds both ran."""
    if chosen is None:
        return []
    mine = set(chosen.seed_ids())
    out = []
    for g in candidates:
        theirs = set(g.seed_ids())
        if g is chosen or g.diverged or mine <= theirs or not mine & theirs:
            continue
        ours, its = _val_score(chosen.only(theirs), k), _val_score(g.only(mine), k)
        if ours is not None and its is not None and its > ours:
            out.append(g)
    return out


def _val_score(g: Group, k: int) -> float | None:
    return statistics.fmean(g.last_k(k, "val_accuracy")) if g.has("val_accuracy") else None


# ---------------------------------------------------------------------------------------------------------
# margins


@dataclass
class Margin:
    """``algorithm`` over ``baseline`` on the seeds both have, per seed: in points and relative."""

    seeds: list[Any]
    points: list[float]  # a − b (accuracy as a fraction; ×100 for points)
    relative: list[float]  # (a − b) / b


# Student's t, two-sided 95 %: the 0.975 quantile by degrees of freedom (a few seeds: the normal's 1.96
# would claim intervals two to six times too narrow)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
T975 |= {11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093}
T975 |= {20: 2.086, 25: 2.060, 30: 2.042}


def interval95(values: list[float]) -> tuple[float, float] | None:
    """The 95 % confidence interval of the mean of ``values`` (paired differences, one per seed), by
    Student's t with n − 1 degrees of freedom; None for fewer than two values. Between tabled degrees of
    freedom, and beyond 30, it takes the quantile of the next smaller tabled one (a wider interval; at
    most 4 % wider than the normal's 1.96 for very many seeds)."""
    n = len(values)
    if n < 2:
        return None
    dof = min(n - 1, 30)
    t = T975.get(dof) or T975[max(d for d in T975 if d <= dof)]  # between tabled dofs: the wider one
    half = t * statistics.stdev(values) / math.sqrt(n)
    centre = statistics.fmean(values)
    return centre - half, centre + half


def paired_margin(a: Group, b: Group, stat: Callable[[Group], list[float]]) -> Margin:
    """The margin of ``a`` over ``b`` in ``stat`` (one value per seed), paired by seed."""
    va, vb = a.by_seed(stat(a)), b.by_seed(stat(b))
    seeds = [s for s in va if s in vb]
    return Margin(
        seeds,
        [va[s] - vb[s] for s in seeds],
        [(va[s] - vb[s]) / vb[s] if vb[s] else math.nan for s in seeds],
    )


def cumulative(g: Group, of: Callable[[dict[str, Any]], float]) -> tuple[list[int], list[float]]:
    """Rounds every seed has, and the mean over seeds of ``of(record)`` summed up to each round."""
    totals: dict[int, list[float]] = defaultdict(list)
    for h in g.histories:
        total = 0.0
        for r in h:
            total += of(r)
            totals[r["round"]].append(total)
    rounds = sorted(k for k, v in totals.items() if len(v) == len(g.histories))
    return rounds, [statistics.fmean(totals[k]) for k in rounds]


def totals(g: Group, of: Callable[[dict[str, Any]], float]) -> list[float]:
    """Per seed, ``of(record)`` summed over the run."""
    return [sum(of(r) for r in h) for h in g.histories]


def client_flops(record: dict[str, Any]) -> float:
    return float(record.get("client_flops") or 0.0)


def wire_bytes(record: dict[str, Any]) -> float:
    """Bytes every client sent and received in the round, together (the record's tally by kind)."""
    return float(sum((record.get("bytes") or {}).values()))


def aggregate_row(g: Group, claims: Claims, chosen: bool | None) -> dict[str, Any]:
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
        row[f"{name}_mean"] = mean(values)
        row[f"{name}_std"] = std(values) if values else None
    row["chosen_on_val"] = chosen
    for t in claims.targets:
        rounds = g.rounds_to(t)
        reached = [r for r in rounds if r is not None]
        row[f"rounds_to_{t:g}_mean"] = mean(reached)
        row[f"rounds_to_{t:g}_reached"] = f"{len(reached)}/{len(rounds)}"
        if g.has("sim_time_s"):  # a device profile: simulated seconds to the target
            row[f"sim_s_to_{t:g}_mean"] = mean([s for s in g.sim_time_to(t) if s is not None])
    for side in ("client", "server"):
        for suffix, _ in DIVERGENCE_FORMS:
            row[f"divergence_{side}{suffix}_mean"] = mean(g.mean_over_rounds(f"divergence_{side}{suffix}"))
    return row
