"""The tables of docs/results.md §1b (one-epoch rounds, tuned learning rates), from the study's tables:

    python experiments/paper/epoch_tables.py [--out docs/results/fmnist-epoch]

writes tables.md, whose tables §1b carries verbatim (tests/test_results_doc.py checks it). Everything is
read from experiments/paper/results/fmnist-epoch through ``splitfed.analysis``: cells over seeds, each
algorithm's rate chosen on validation accuracy (the mean of the last 5 rounds' val_accuracy, averaged over
the seeds the rate has; the test set is never looked at), margins paired by seed. "Final" is the last
round's test accuracy, "last-5" the mean of the last 5 rounds'. A run diverged where its training loss
turned non-finite (these ran under a splitfed that trained on and recorded the NaN rounds).
"""

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from splitfed.analysis import Group, Margin, interval95, load_groups, paired_margin, select_lr
from splitfed.analysis.script import write_tables
from splitfed.analysis.text import interval_text, percent, percent_pm, table_row, table_rule
from splitfed.plotstyle import save_figure, style

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments/paper/results/fmnist-epoch"
K = 5
# rates whose validation scores are this close (0.1 points) are ones validation cannot tell apart
PLATEAU = 0.001
CNN, RESNET = "cnn4", "resnet18 width=16"
MB, V2, FL = "minibatch_sfl", "sfl_v2", "fedavg"
IL = "sfl_v2 (sflv2_schedule=interleaved)"
LABEL = {MB: "MiniBatch-SFL", V2: "SFL-V2", IL: "SFL-V2 interleaved", FL: "FedAvg"}
OVER = {V2: "SFL-V2", IL: "SFL-V2 interleaved", FL: "FedAvg (FL)"}
RATIOS = (0.0, 0.5, 0.8, 0.95, 1.0)
CHOSEN_AT = (0.8, 0.95, 1.0)  # where the algorithms' rates were searched
SHOWN = (0.01, 0.05, 0.1, 0.2)  # the rates of the last-5 table (the report has the 0.02 runs)
SEEDS = 3  # a cell of the last-5 table has them all (seeds 0-2; a cell given more shows these three)
PAPER = {V2: "up to +24.1 (pts or %)", IL: "up to +24.1 (pts or %)", FL: "up to +17.1 (pts or %)"}
# the margin table's rows, in the doc's order: (p, baseline, the rate of both, or "best" for each at its own)
MARGINS = [
    (0.0, V2, 0.01),
    (0.0, FL, 0.01),
    (0.5, V2, 0.01),
    (0.5, FL, 0.01),
    (0.8, V2, 0.01),
    (0.8, V2, "best"),
    (0.8, FL, 0.01),
    (0.8, FL, "best"),
    (0.95, V2, 0.01),
    (0.95, V2, 0.05),
    (0.95, V2, "best"),
    (0.8, IL, "best"),
    (0.95, IL, 0.01),
    (0.95, IL, "best"),
    (1.0, IL, "best"),
    (0.0, IL, 0.01),
    (0.5, IL, 0.01),
    (0.8, IL, 0.01),
    (1.0, IL, 0.01),
    (0.95, FL, 0.01),
    (0.95, FL, 0.05),
    (0.95, FL, "best"),
    (1.0, V2, 0.01),
    (1.0, V2, "best"),
    (1.0, FL, 0.01),
    (1.0, FL, "best"),
]
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
# the decisive table's models, in its order: the paper's and the normalisation control's variants of them
NAMES = {
    CNN: "cnn4",
    "cnn4 norm=batch": "cnn4, BatchNorm",
    "cnn4 norm=group": "cnn4, GroupNorm",
    RESNET: "ResNet-18, width 16",
    "resnet18 norm=group width=16": "ResNet-18, width 16, GroupNorm",
}
# the normalisation control's families, by the name its table gives them: (model, how its hidden layers
# are normalised)
NORM_CONTROL = {
    "cnn4": [(CNN, "none"), ("cnn4 norm=batch", "BatchNorm"), ("cnn4 norm=group", "GroupNorm")],
    "ResNet-18": [(RESNET, "BatchNorm"), ("resnet18 norm=group width=16", "GroupNorm")],
}


def model_label(g: Group) -> str:
    """The model and its arguments, as the tables name it: "cnn4", "cnn4 norm=batch", "resnet18 width=16"."""
    args = dict(g.others).get("model_args", ())
    return " ".join([g.setting[1], *(f"{k}={v}" for k, v in args)])


# where a chosen rate sits in the rates tried: what the tables and the figure say of it
INSIDE, TOP, BOTTOM, ONLY = "", "top of its grid", "bottom of its grid", "the only rate run"


class Study:
    """The study's cells by (model, algorithm, p, lr), and the rate chosen for each (model, algorithm, p).
    ``get`` gives cells with a history; ``tried`` also those where every seed diverged (a search's reach)."""

    def __init__(self, groups: list[Group]) -> None:
        self.tried_cells = {(model_label(g), g.algorithm, g.ratio, g.lr[0]): g for g in groups if g.lr}
        self.cells = {key: g for key, g in self.tried_cells.items() if g.histories}
        selections = {
            (model_label(s.candidates[0]), s.candidates[0].algorithm, s.candidates[0].ratio): s
            for s in select_lr(groups, K).values()
        }
        self.chosen = {key: s.chosen for key, s in selections.items() if s.chosen}
        # each rate's validation score as the choice saw it (on the seeds the slot's rates were compared on)
        self.scores = {
            (*key, g.lr[0]): score
            for key, s in selections.items()
            for g, score in zip(s.candidates, s.scores, strict=True)
            if g.lr
        }
        # the seeds each slot's rates were compared on (None: all of them)
        self.compared = {key: s.seeds for key, s in selections.items()}

    @classmethod
    def load(cls, study: Path) -> "Study":
        return cls(load_groups(study, diverged_cells=True))

    def get(self, algorithm: str, p: float, lr: float, model: str = CNN) -> Group | None:
        return self.cells.get((model, algorithm, p, lr))

    def tried(self, algorithm: str, p: float, lr: float, model: str = CNN) -> Group | None:
        return self.tried_cells.get((model, algorithm, p, lr))

    def score(self, algorithm: str, p: float, lr: float, model: str = CNN) -> float | None:
        return self.scores.get((model, algorithm, p, lr))

    def rates(self, algorithm: str, p: float, model: str = CNN) -> list[float]:
        return sorted(lr for m, a, q, lr in self.tried_cells if (m, a, q) == (model, algorithm, p))

    def best(self, algorithm: str, p: float, model: str = CNN) -> Group | None:
        """The cell at the rate chosen on validation (the one rate run, where only one ran); None where
        none was chosen (every rate diverged in some seed)."""
        return self.chosen.get((model, algorithm, p))

    def bracket(self, algorithm: str, p: float, model: str = CNN) -> str:
        """Where the chosen rate sits among the rates tried: INSIDE (a rate tried on each side), TOP,
        BOTTOM or ONLY."""
        rates, lr = self.rates(algorithm, p, model), self.best(algorithm, p, model).lr[0]
        if len(rates) == 1:
            return ONLY
        return INSIDE if rates[0] < lr < rates[-1] else (TOP if lr == rates[-1] else BOTTOM)


def trained_through_nan(h: list[dict]) -> bool:
    """A run of the study's first grid that diverged: it trained on and recorded its non-finite rounds."""
    return any(not math.isfinite(r["train_loss"]) for r in h if r.get("train_loss") is not None)


def runs_of(g: Group) -> int:
    """How many runs the cell has: those with a history and those that stopped where they diverged."""
    return len(g.histories) + len(g.diverged)


def diverged_runs(g: Group) -> int:
    """How many of the cell's runs diverged: trained on through NaN (the study's first runs) or stopped
    there (their seeds are in g.diverged)."""
    return sum(map(trained_through_nan, g.histories)) + len(g.diverged)


def ratio(p: float) -> str:
    return f"{p:.1f}" if p in (0, 1) else f"{p:g}"


def plural(n: int, word: str) -> str:
    return word + "s" * (n != 1)


def seeds_text(n: int) -> str:
    return f"{WORDS.get(n, n)} {plural(n, 'seed')}"


def score_cell(g: Group | None, score: float | None, chosen: bool, compared: list | None = None) -> str:
    """A rate's validation score as select_lr scored it (bold where it was chosen), with its seeds where
    it has fewer than the study's three and how many of them diverged. ``compared``: the seeds the slot's
    rates were compared on (select_lr's: a seed only one rate ran does not count); a cell run in more
    seeds says it was scored on those."""
    if g is None:
        return ""
    text = "" if score is None else f"**{percent(score)}**" if chosen else percent(score)
    # a run that diverged either trained on and recorded chance-level rounds (the study's first runs) or
    # stopped there (its seed is in g.diverged, its score is its surviving seeds')
    n, bad = runs_of(g), diverged_runs(g)
    if not g.histories:
        return f"diverged ({seeds_text(n)})"
    notes = (
        ["diverged" if bad == n else f"{WORDS.get(bad, bad)} of {WORDS.get(n, n)} seeds diverged"]
        if bad
        else []
    )
    notes += [seeds_text(n)] if n < SEEDS and not (bad and bad < n) else []
    if compared and set(g.seed_ids()) - set(compared):
        on = WORDS.get(len(compared), len(compared))
        notes += [] if bad else [seeds_text(n)]
        notes += [f"scored on the {on} {plural(len(compared), 'seed')} the other rates ran"]
    return text + (f" ({', '.join(notes)})" if notes else "")


def selection_cells(s: Study, algorithm: str, p: float, model: str, search: list[float]) -> list[str]:
    """A row of a selection table: the validation score at each rate of ``search`` (the chosen in bold),
    and the rate chosen with where it sits in its grid."""
    chosen_cell = s.best(algorithm, p, model)
    best = chosen_cell.lr[0] if chosen_cell else None
    on = s.compared.get((model, algorithm, p))
    cells = [
        score_cell(s.tried(algorithm, p, lr, model), s.score(algorithm, p, lr, model), lr == best, on)
        for lr in search
    ]
    return [
        *cells,
        rate_text(s, algorithm, p, model) if chosen_cell else "none: every rate diverged in some seed",
    ]


def selection_table(s: Study, model: str = CNN) -> list[str]:
    """Validation accuracy by rate at each p where the rates were searched, the chosen one in bold, and
    whether it is bracketed (a rate tried on each side of it)."""
    search = sorted({lr for m, _, p, lr in s.tried_cells if m == model and p in CHOSEN_AT})  # its columns
    lines = [
        table_row(["p", "algorithm", *(f"{lr:g}" for lr in search), "chosen"]),
        table_rule(len(search) + 3),
    ]
    for p in CHOSEN_AT:
        for algorithm in (MB, V2, IL, FL):
            if s.rates(algorithm, p, model):
                lines.append(
                    table_row([ratio(p), LABEL[algorithm], *selection_cells(s, algorithm, p, model, search)])
                )
    return lines


def norm_selection_table(s: Study) -> list[str]:
    """The normalisation control's rate search (p = 0.95): as selection_table, by model variant."""
    variants = [(name, m, norm) for name, family in NORM_CONTROL.items() for m, norm in family[1:]]
    variants = [v for v in variants if any(s.rates(a, 0.95, v[1]) for a in (MB, V2, IL, FL))]
    models = {m for _, m, _ in variants}
    search = sorted({lr for m, _, p, lr in s.tried_cells if p == 0.95 and m in models})
    head = ["model", "normalisation", "algorithm", *(f"{lr:g}" for lr in search), "chosen"]
    lines = [table_row(head), table_rule(len(head))]
    for name, model, norm in variants:
        for algorithm in (MB, V2, IL, FL):
            if s.rates(algorithm, 0.95, model):
                row = [name, norm, LABEL[algorithm], *selection_cells(s, algorithm, 0.95, model, search)]
                lines.append(table_row(row))
    return lines if variants else []


def complete(g: Group | None) -> bool:
    return g is not None and len(g.histories) == SEEDS and not diverged_runs(g)


def seeds_note(g: Group) -> str:
    """ " (seed 0)" for a cell with fewer seeds than the study's three; "" for a full one."""
    ids = sorted(g.seed_ids())
    return "" if len(ids) >= SEEDS else f" ({plural(len(ids), 'seed')} {', '.join(map(str, ids))})"


def last5_cell(g: Group) -> str:
    """A cell of the last-5 table: mean ± std over its three seeds, or where its seeds diverged; nothing
    where it has fewer seeds."""
    n, bad = runs_of(g), diverged_runs(g)
    if bad:
        return "diverged" if bad == n else f"diverged in {WORDS.get(bad, bad)} of {seeds_text(n)}"
    return percent_pm(g.last_k(K)) if complete(g) else ""


def last5_table(s: Study) -> list[str]:
    """Last-5 test accuracy by p: every algorithm at 0.01, and at each larger rate of SHOWN where the three
    of the paper ran it (three seeds; where some diverged, it says so); interleaved SFL-V2 at each rate but
    0.01 it chose."""
    lines = [
        table_row(["algorithm", *(f"p = {ratio(p)}" for p in RATIOS)]),
        table_rule(6),
    ]
    for lr in SHOWN:
        for algorithm in (FL, V2, IL, MB) if lr == 0.01 else (FL, V2, MB):
            cells = []
            for p in RATIOS:
                ran = all(s.tried(a, p, lr) for a in (MB, V2, FL)) or lr == 0.01
                g = s.tried(algorithm, p, lr)
                cells.append(last5_cell(g.only(range(SEEDS))) if ran and g else "")
            if any(cells):
                lines.append(table_row([f"{LABEL[algorithm]}, lr {lr:g}", *cells]))
    chosen = {p: g for p in CHOSEN_AT if (g := s.best(IL, p)) and g.lr[0] != 0.01}
    for lr in sorted({g.lr[0] for g in chosen.values()}):
        at = {p: g for p, g in chosen.items() if g.lr[0] == lr}
        cells = [percent_pm(at[p].last_k(K)) if p in at else "" for p in RATIOS]
        note = next((n for g in at.values() if (n := seeds_note(g))), "")
        lines.append(table_row([f"{LABEL[IL]}, lr {lr:g}{note}", *cells]))
    return lines


def points_and_interval(m: Margin) -> list[str]:
    """A margin's two cells: its points (mean ± std over the seeds) and their 95 % interval."""
    return [percent_pm(m.points, True, 1), interval_text(interval95(m.points), 1)]


def margin_cell(m: Margin) -> str:
    """A margin in one cell: its points, and over several seeds their 95 % interval:
    "+6.5 ± 1.0 [+4.0, +9.0]"."""
    text = percent_pm(m.points, True, 1)
    return text if len(m.points) < 2 else f"{text} {interval_text(interval95(m.points), 1)}"


def rate_text(s: Study, algorithm: str, p: float, model: str = CNN) -> str:
    """The rate chosen, where it sits in its grid where that is not inside it, and the seeds it was chosen
    on where they are fewer than the study's three (a grid searched in one seed so far)."""
    notes = [where] if (where := s.bracket(algorithm, p, model)) else []
    on = s.compared.get((model, algorithm, p))
    if on and len(on) < SEEDS:
        notes.append(f"chosen on {plural(len(on), 'seed')} {', '.join(map(str, on))}")
    return f"{s.best(algorithm, p, model).lr[0]:g}" + (f" ({'; '.join(notes)})" if notes else "")


def margins(a: Group, b: Group) -> tuple[Margin, Margin]:
    """``a`` over ``b`` paired by seed, final and last-5, in points (× 100 before the difference, as the
    doc's numbers were first computed: FedAvg's last-5 margin at p = 0.95 is −1.55, a tie at one decimal
    that the float rounding then settles alike)."""
    final = paired_margin(a, b, lambda g: [100 * v for v in g.final()])
    return final, paired_margin(a, b, lambda g: [100 * v for v in g.last_k(K)])


def margin_row(s: Study, p: float, over: str, lr: float | str) -> str:
    if lr == "best":
        a, b = s.best(MB, p), s.best(over, p)
        rates = f"best: {a.lr[0]:g} / {b.lr[0]:g}"
    else:
        a, b = s.get(MB, p, lr), s.get(over, p, lr)
        rates = f"{lr:g}" if lr == 0.01 else f"{lr:g} / {lr:g}"
    final, last5 = margins(a, b)
    n = len(final.seeds)
    seeds = f"{n}" if n > 1 else f"1 (seed {final.seeds[0]})"
    cells = [
        percent_pm(final.points, True, 1),
        percent_pm(final.relative, True),
        *points_and_interval(last5),
        percent_pm(last5.relative, True),
    ]
    return table_row([ratio(p), OVER[over], rates, seeds, *cells, PAPER.get(over, "–") if p == 0.95 else "–"])


def margins_table(s: Study) -> list[str]:
    head = ["p", "over", "lr (MiniBatch-SFL / baseline)", "seeds", "final: pts", "final: relative"]
    head += ["last-5: pts", "last-5: 95 % interval", "last-5: relative", "paper"]
    return [table_row(head), table_rule(len(head)), *(margin_row(s, *m) for m in MARGINS)]


def tuned_table(
    s: Study, models: tuple[str, ...] = (CNN, RESNET), ratios: tuple[float, ...] = (0.95, 1.0)
) -> list[str]:
    """The decisive comparison: at p = 0.95 and 1, each algorithm at the rate chosen for it on validation,
    and MiniBatch-SFL's margin over it paired by seed, last-5 with its 95 % interval, and final. With the
    normalisation control's models (NAMES) at p = 0.95, the control's tuned table."""
    head = ["model", "p", "algorithm", "lr (chosen on validation)", "seeds", "last-5", "final"]
    head += ["MiniBatch-SFL over it: last-5, pts", "95 % interval", "final, pts", "95 % interval"]
    lines = [table_row(head), table_rule(len(head))]
    for model in models:
        for p in ratios:
            mb = s.best(MB, p, model)
            for algorithm in (MB, V2, IL, FL):
                g = s.best(algorithm, p, model)
                if g is None:
                    continue
                row = [NAMES[model], ratio(p), LABEL[algorithm], rate_text(s, algorithm, p, model)]
                row += [str(len(g.histories)), percent_pm(g.last_k(K)), percent_pm(g.final())]
                if algorithm == MB or mb is None:
                    row += ["", "", "", ""]
                else:
                    final, last5 = margins(mb, g)
                    row += [*points_and_interval(last5), *points_and_interval(final)]
                lines.append(table_row(row))
    return lines


def near_rates(s: Study, algorithm: str, p: float, model: str) -> list[float]:
    """The chosen rate and those whose validation score is within PLATEAU of its, run in all its seeds:
    rates that validation cannot tell apart from the choice."""
    best = s.best(algorithm, p, model)
    top, seeds = s.score(algorithm, p, best.lr[0], model), set(best.seed_ids())

    def near(lr: float) -> bool:
        g, score = s.get(algorithm, p, lr, model), s.score(algorithm, p, lr, model)
        if g is None or g.diverged or not seeds <= set(g.seed_ids()) or score is None:
            return False
        return top - score <= PLATEAU

    return [lr for lr in s.rates(algorithm, p, model) if lr == best.lr[0] or near(lr)]


def plateau_table(s: Study, slots: tuple[tuple[str, float], ...]) -> list[str]:
    """How much MiniBatch-SFL's last-5 margin depends on which of the rates validation cannot tell apart
    was chosen: the margin at the chosen rates, and its mean at every pair of near rates (near_rates)."""
    head = ["model", "p", "over", "MiniBatch-SFL's near rates", "its near rates", "at the chosen rates"]
    lines = [table_row([*head, "at every pair of near rates"]), table_rule(len(head) + 1)]
    for model, p in slots:
        if (mb := s.best(MB, p, model)) is None:
            continue
        near_mb = near_rates(s, MB, p, model)
        for algorithm in (V2, IL, FL):
            if (g := s.best(algorithm, p, model)) is None:
                continue
            near = near_rates(s, algorithm, p, model)
            means = {  # each pair's margin once; the chosen pair is one of them
                (x, y): statistics.fmean(
                    margins(s.get(MB, p, x, model), s.get(algorithm, p, y, model))[1].points
                )
                for x in near_mb
                for y in near
            }
            span = (
                f"{percent(min(means.values()), True, 1)} to {percent(max(means.values()), True, 1)}"
                if len(means) > 1
                else "(no near rate)"
            )
            row = [NAMES[model], ratio(p), LABEL[algorithm], rates_text(near_mb), rates_text(near)]
            lines.append(table_row([*row, percent(means[mb.lr[0], g.lr[0]], True, 1), span]))
    return lines


def rates_text(rates: list[float]) -> str:
    return ", ".join(f"{lr:g}" for lr in rates)


def norm_table(s: Study) -> list[str]:
    """The normalisation control at p = 0.95: last-5 test accuracy of each algorithm on each model variant,
    at each rate a variant ran (the model without normalisation beside it), on the seeds every variant of
    its family ran at that rate, and MiniBatch-SFL's margins paired by seed (with their 95 % interval over
    several seeds)."""
    head = ["model", "normalisation", "lr", "seeds", *(LABEL[a] for a in (MB, V2, IL, FL))]
    head += [f"MiniBatch-SFL over {LABEL[a]}" for a in (V2, IL, FL)]
    lines = [table_row(head), table_rule(len(head))]
    for name, family in NORM_CONTROL.items():
        variants = {m for m, _ in family[1:]}
        for lr in sorted({lr for m, a, p, lr in s.cells if m in variants and a == MB and p == 0.95}):
            ran = [(m, n) for m, n in family if s.get(MB, 0.95, lr, m)]
            if len(ran) < 2:
                continue
            cells = {(m, a): s.tried(a, 0.95, lr, m) for m, _ in ran for a in (MB, V2, IL, FL)}
            common = set.intersection(*(set(g.seed_ids()) for g in cells.values() if g and g.histories))
            for m, norm in ran:
                # a cell that diverged in one of these seeds is said so, never averaged or compared
                got, gone = {}, set()
                for a in (MB, V2, IL, FL):
                    if not (g := cells[m, a]):
                        continue
                    kept = g.only(common)
                    if diverged_runs(kept):
                        gone.add(a)
                    else:
                        got[a] = kept
                row = [name, norm, f"{lr:g}", ", ".join(map(str, sorted(common)))]
                row += [
                    percent_pm(got[a].last_k(K)) if a in got else "diverged" if a in gone else ""
                    for a in (MB, V2, IL, FL)
                ]
                row += [
                    margin_cell(margins(got[MB], got[a])[1]) if a in got and MB in got else ""
                    for a in (V2, IL, FL)
                ]
                lines.append(table_row(row))
    return lines


def recalibration_table(study: Path) -> list[str]:
    """bn_recalibration.py's probe of the BatchNorm control (its csv beside the study's tables): the final
    model's test accuracy as trained and with BatchNorm statistics recomputed over the clients' data, by
    algorithm (mean ± std over seeds); nothing where the probe has not run."""
    path = study / "bn_recalibration.csv"
    if not path.exists():
        return []
    cells: dict[tuple, list[dict]] = defaultdict(list)
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            algorithm = IL if r["schedule"] == "interleaved" else r["algorithm"]
            cells[float(r["non_iid_ratio"]), float(r["lr"]), (MB, V2, IL, FL).index(algorithm)].append(r)
    head = ["algorithm", "p", "lr", "seeds", "as trained", "server-side BatchNorm recomputed"]
    head += ["every BatchNorm recomputed", "change (server side), pts"]
    lines = [table_row(head), table_rule(len(head))]
    for (p, lr, i), runs in sorted(cells.items()):
        got = {k: [float(r[k]) for r in runs] for k in ("as_trained", "server_bn", "all_bn")}
        change = [b - a for a, b in zip(got["as_trained"], got["server_bn"], strict=True)]
        row = [LABEL[(MB, V2, IL, FL)[i]], ratio(p), f"{lr:g}", ", ".join(sorted(r["seed"] for r in runs))]
        row += [percent_pm(got[k]) for k in ("as_trained", "server_bn", "all_bn")]
        lines.append(table_row([*row, percent_pm(change, True)]))
    return lines


def resnet_table(s: Study) -> list[str]:
    """ResNet-18 at the paper's lr 0.01: each algorithm's final, last-5 and best test accuracy, with its
    seeds (interleaved SFL-V2 came later, on the CPU, a seed at a time)."""
    lines = [table_row(["p", "algorithm", "seeds", "final", "last-5", "best"]), table_rule(6)]
    for p in (0.95, 1.0):
        for algorithm in (MB, V2, IL, FL):
            if g := s.get(algorithm, p, 0.01, model=RESNET):
                row = [
                    ratio(p),
                    OVER.get(algorithm, LABEL[algorithm]),
                    ", ".join(map(str, sorted(g.seed_ids()))),
                ]
                lines.append(table_row(row + [percent_pm(v) for v in (g.final(), g.last_k(K), g.best())]))
    return lines


def look(algorithm: str) -> dict:
    """An algorithm's line in the figures: plotstyle's, and interleaved SFL-V2 (a schedule plotstyle does
    not know apart from SFL-V2) dotted in olive."""
    return {"color": "C8", "linestyle": ":", "marker": "s"} if algorithm == IL else style(algorithm).kwargs()


def tuned_figure(s: Study, out: Path) -> None:
    """tuned.{png,svg}: at p = 0.8, 0.95 and 1, each algorithm at the rate chosen for it on validation:
    test accuracy by round (mean over seeds, band min-max) and each seed's last-5 mean (dots, bar the mean),
    on axes that show margins of a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = (MB, V2, IL, FL)
    fig, axes = plt.subplots(2, len(CHOSEN_AT), figsize=(11.5, 7.6), gridspec_kw={"height_ratios": [3, 2]})
    for j, p in enumerate(CHOSEN_AT):
        top, bottom = axes[0][j], axes[1][j]
        lows = []
        for i, algorithm in enumerate(order):
            g = s.best(algorithm, p)
            if g is None:
                continue
            rounds, mean, _ = g.curve("test_accuracy")
            per_round = defaultdict(list)  # the seeds' values by round, on the rounds curve() averages
            for h in g.histories:
                for r in h:
                    if r.get("test_accuracy") is not None:
                        per_round[r["round"]].append(100 * r["test_accuracy"])
            top.plot(rounds, [100 * v for v in mean], **look(algorithm), markersize=3, label=LABEL[algorithm])
            band = [min(per_round[r]) for r in rounds], [max(per_round[r]) for r in rounds]
            top.fill_between(rounds, *band, color=look(algorithm)["color"], alpha=0.12, linewidth=0)
            lows += [100 * v for v in mean[len(mean) // 4 :]]
            last5 = [100 * v for v in g.last_k(K)]
            centre, colour = statistics.fmean(last5), look(algorithm)["color"]
            marker = look(algorithm)["marker"]
            bottom.plot([i] * len(last5), last5, linestyle="none", marker=marker, color=colour, alpha=0.7)
            bottom.hlines(centre, i - 0.3, i + 0.3, color=colour, linewidth=2)
            bottom.annotate(f"{centre:.1f}", (i + 0.32, centre), fontsize=7, va="center")
        top.set(title=f"p = {p:g}", ylim=(math.floor(min(lows)) - 2, math.ceil(max(lows)) + 2))
        top.set_xlabel("round")
        top.grid(True, alpha=0.3)
        bottom.set_xticks(range(len(order)), [tick(s, a, p) for a in order])
        bottom.tick_params(axis="x", labelsize=6.5)
        bottom.set_xlim(-0.5, len(order) - 0.3)
        bottom.grid(True, axis="y", alpha=0.3)
        if j == 0:
            top.set_ylabel("test accuracy, %")
            bottom.set_ylabel("last-5 mean per seed, %")
    fig.suptitle(
        "FMNIST, cnn4, N = 10, one-epoch rounds: each algorithm at the rate chosen for it on validation "
        "(bands and dots: seeds)",
        fontsize=9.5,
    )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(order), fontsize=8, bbox_to_anchor=(0.5, 0.955))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    save_figure(fig, out / "tuned", dpi=130)


def resnet_rates_figure(s: Study, out: Path) -> bool:
    """resnet_rates.{png,svg}: ResNet-18 at p = 0.95, test accuracy by round in seed 0 of client-sequential
    SFL-V2 and of MiniBatch-SFL at each rate each ran (a shade per rate, darker for larger), beside
    interleaved SFL-V2 at its rates: whether SFL-V2's late dips move with its rate, and what a rate does to
    each. False (nothing drawn) where SFL-V2 ran one rate only."""
    if len(s.rates(V2, 0.95, RESNET)) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    lines = []
    for algorithm, cmap, marker in ((V2, "Greens", "^"), (MB, "Reds", "o")):
        rates = s.rates(algorithm, 0.95, RESNET)
        shades = plt.get_cmap(cmap)([0.45 + 0.5 * i / max(1, len(rates) - 1) for i in range(len(rates))])
        looks = [{"color": c, "marker": marker} for c in shades]
        lines += [(algorithm, lr, line) for lr, line in zip(rates, looks, strict=True)]
    lines += [(IL, lr, look(IL)) for lr in s.rates(IL, 0.95, RESNET)]
    for algorithm, lr, line in lines:
        g = s.get(algorithm, 0.95, lr, RESNET)
        if g is None or 0 not in g.seed_ids():
            continue
        seed0 = [r for r in g.only([0]).histories[0] if r.get("test_accuracy") is not None]
        rounds, acc = [r["round"] for r in seed0], [100 * r["test_accuracy"] for r in seed0]
        ax.plot(rounds, acc, markersize=3, label=f"{LABEL[algorithm]}, lr {lr:g}", **line)
    ax.set(xlabel="round", ylabel="test accuracy, %", ylim=(50, 90), xticks=range(0, 21, 2))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right", ncol=2)
    ax.set_title(
        "FMNIST, ResNet-18 (width 16), p = 0.95, seed 0: each algorithm at each rate it ran",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, out / "resnet_rates", dpi=130)
    return True


def tick(s: Study, algorithm: str, p: float) -> str:
    """The bottom panels' label of an algorithm: its name, chosen rate (and where it sits in its grid)
    and seeds."""
    g = s.best(algorithm, p)
    if g is None:
        return LABEL[algorithm]
    where = {INSIDE: "", TOP: "\ngrid's top", BOTTOM: "\ngrid's bottom", ONLY: "\nonly rate"}
    name = LABEL[algorithm].replace(" interleaved", "\ninterleaved")
    return f"{name}\nlr {g.lr[0]:g}{where[s.bracket(algorithm, p)]}\n{seeds_text(len(g.histories))}"


def tables(study: Path = STUDY) -> str:
    """tables.md: §1b's tables, in the doc's order."""
    s = Study.load(study)
    blocks = [
        selection_table(s),
        last5_table(s),
        margins_table(s),
        tuned_table(s),
        selection_table(s, RESNET),
        norm_selection_table(s),
        tuned_table(s, tuple(NAMES), (0.95,)),
        plateau_table(s, tuple((m, 0.95) for m in NAMES if m.startswith(CNN))),
        norm_table(s),
        recalibration_table(study),
        resnet_table(s),
    ]
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"


def main() -> None:
    out, study = write_tables(__doc__.splitlines()[0], tables, ROOT / "docs/results/fmnist-epoch", STUDY)
    s = Study.load(study)
    tuned_figure(s, out)
    print(f"wrote {out / 'tuned'}.{{png,svg}}")
    if resnet_rates_figure(s, out):
        print(f"wrote {out / 'resnet_rates'}.{{png,svg}}")


if __name__ == "__main__":
    main()
