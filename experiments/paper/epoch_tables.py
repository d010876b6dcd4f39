"""The tables of docs/results.md §1b (one-epoch rounds, tuned learning rates), from the study's tables:

    python experiments/paper/epoch_tables.py [--out docs/results/fmnist-epoch]

writes tables.md, whose tables §1b carries verbatim (tests/test_results_doc.py checks it). Everything is
read from experiments/paper/results/fmnist-epoch through ``splitfed.analysis``: cells over seeds, each
algorithm's rate chosen on validation accuracy (the mean of the last 5 rounds' val_accuracy, averaged over
the seeds the rate has; the test set is never looked at), margins paired by seed. "Final" is the last
round's test accuracy, "last-5" the mean of the last 5 rounds'. A run diverged where its training loss
turned non-finite (these ran under a splitfed that trained on and recorded the NaN rounds).
"""

import math
import statistics
from dataclasses import replace
from pathlib import Path

from splitfed.analysis import Group, load_groups, paired_margin, select_lr
from splitfed.analysis.script import write_tables
from splitfed.analysis.text import percent, percent_pm, table_row, table_rule

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments/paper/results/fmnist-epoch"
K = 5
MB, V2, FL = "minibatch_sfl", "sfl_v2", "fedavg"
IL = "sfl_v2 (sflv2_schedule=interleaved)"
LABEL = {MB: "MiniBatch-SFL", V2: "SFL-V2", IL: "SFL-V2 interleaved", FL: "FedAvg"}
OVER = {V2: "SFL-V2", IL: "SFL-V2 interleaved", FL: "FedAvg (FL)"}
RATIOS = (0.0, 0.5, 0.8, 0.95, 1.0)
SEARCHED_AT = 0.95  # the rate grid ran in full at the paper's "highly non-IID"
SEARCH = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # its columns; a larger rate tried is named in the last one
CHOSEN_AT = (0.8, 0.95, 1.0)  # where every algorithm had a rate to choose
SHOWN = (0.01, 0.05, 0.1, 0.2)  # the rates of the last-5 table (the report has the 0.02 runs)
SEEDS = 3  # a cell of the last-5 table has them all
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
    (0.95, IL, 0.01),
    (0.95, IL, "best"),
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
WORDS = {1: "one", 2: "two", 3: "three"}


class Study:
    """The cnn4 and ResNet-18 cells of the study, by (model, algorithm, p, lr), and the rates chosen."""

    def __init__(self, study: Path) -> None:
        groups = load_groups(study)
        self.cells = {(g.setting[1], g.algorithm, g.ratio, g.lr[0]): g for g in groups if g.lr}
        cnn4 = [g for g in groups if g.setting[1] == "cnn4"]
        self.chosen = {
            (s.chosen.algorithm, s.chosen.ratio): s.chosen for s in select_lr(cnn4, K).values() if s.chosen
        }

    def get(self, algorithm: str, p: float, lr: float, model: str = "cnn4") -> Group | None:
        return self.cells.get((model, algorithm, p, lr))

    def rates(self, algorithm: str, p: float) -> list[float]:
        return sorted(lr for m, a, q, lr in self.cells if (m, a, q) == ("cnn4", algorithm, p))


def diverged(h: list[dict]) -> bool:
    return any(not math.isfinite(r["train_loss"]) for r in h if r.get("train_loss") is not None)


def seeds_only(g: Group, seeds: tuple) -> Group:
    """The cell restricted to ``seeds``."""
    keep = [i for i, seed in enumerate(g.seed_ids()) if seed in seeds]
    return replace(g, histories=[g.histories[i] for i in keep], seeds=[g.seed_ids()[i] for i in keep])


def ratio(p: float) -> str:
    return f"{p:.1f}" if p in (0, 1) else f"{p:g}"


def val(g: Group) -> float:
    """The score a rate is chosen by: the last-5 mean of val_accuracy, averaged over the cell's seeds."""
    return statistics.fmean(g.last_k(K, "val_accuracy"))


def score_cell(g: Group | None, beyond: list[Group]) -> str:
    """A rate's validation score, with how many of its seeds diverged, and the larger rates tried (beyond
    the table's last column) that diverged."""
    if g is None:
        return ""
    text = percent(val(g))
    bad = sum(map(diverged, g.histories))
    if bad:
        text += (
            " (diverged)" if bad == len(g.histories) else f" ({WORDS[bad]} seed{'s' * (bad > 1)} diverged)"
        )
    lost = [f"{c.lr[0]:g}" for c in beyond if all(map(diverged, c.histories))]
    return text + (f" ({', '.join(lost)} diverged)" if lost else "")


def chosen_cell(s: Study, algorithm: str, p: float, others: list[str]) -> str:
    """The rate chosen at p; "–" where one rate alone ran. A choice none of ``others`` made is in bold,
    with its score against the score at the rate they chose."""
    if len(s.rates(algorithm, p)) < 2:
        return "–"
    lr = s.chosen[algorithm, p].lr[0]
    theirs = {s.chosen[o, p].lr[0] for o in others}
    if lr in theirs or len(theirs) != 1:
        return f"{lr:g}"
    (other,) = theirs
    mine, at_theirs = percent(val(s.chosen[algorithm, p])), percent(val(s.get(algorithm, p, other)))
    return f"**{lr:g}** ({mine} against {at_theirs} at {other:g})"


def selection_table(s: Study) -> list[str]:
    """Validation accuracy at p = 0.95 by rate, and the rate each algorithm chose at each p."""
    ratios = " / ".join(f"{p:g}" for p in CHOSEN_AT)
    lines = [
        table_row(["algorithm", *(f"{lr:g}" for lr in SEARCH), f"chosen at p = {ratios}"]),
        table_rule(len(SEARCH) + 2),
    ]
    compared = [MB, V2, FL]
    for algorithm, seeds in ((MB, None), (V2, None), (IL, (0,)), (FL, None)):
        beyond = [s.get(algorithm, SEARCHED_AT, x) for x in s.rates(algorithm, SEARCHED_AT) if x > SEARCH[-1]]
        cells = []
        for lr in SEARCH:
            g = s.get(algorithm, SEARCHED_AT, lr)
            cells.append(
                score_cell(seeds_only(g, seeds) if g and seeds else g, beyond if lr == SEARCH[-1] else [])
            )
        others = [a for a in compared if a != algorithm] if algorithm in compared else []
        chosen = " / ".join(chosen_cell(s, algorithm, p, others) for p in CHOSEN_AT)
        label = LABEL[algorithm] + (f" (seed {', '.join(map(str, seeds))})" if seeds else "")
        lines.append(table_row([label, *cells, chosen]))
    return lines


def complete(g: Group | None) -> bool:
    return g is not None and len(g.histories) == SEEDS and not any(map(diverged, g.histories))


def last5_table(s: Study) -> list[str]:
    """Last-5 test accuracy by p: every algorithm at 0.01, and at each larger rate of SHOWN where all three
    ran it (three seeds, none diverged); interleaved SFL-V2 at its rate chosen at p = 0.95 (seed 0)."""
    lines = [
        table_row(["algorithm", *(f"p = {ratio(p)}" for p in RATIOS)]),
        table_rule(6),
    ]
    for lr in SHOWN:
        for algorithm in (FL, V2, IL, MB) if lr == 0.01 else (FL, V2, MB):
            cells = []
            for p in RATIOS:
                g = s.get(algorithm, p, lr)
                ran = all(s.get(a, p, lr) for a in (MB, V2, FL)) or lr == 0.01
                cells.append(percent_pm(g.last_k(K)) if ran and complete(g) else "")
            if any(cells):
                lines.append(table_row([f"{LABEL[algorithm]}, lr {lr:g}", *cells]))
    il = seeds_only(s.chosen[IL, SEARCHED_AT], (0,))
    cells = [percent_pm(il.last_k(K)) if p == SEARCHED_AT else "" for p in RATIOS]
    lines.append(table_row([f"{LABEL[IL]}, lr {il.lr[0]:g} (seed 0)", *cells]))
    return lines


def margin_row(s: Study, p: float, over: str, lr: float | str) -> str:
    if lr == "best":
        a, b = s.chosen[MB, p], s.chosen[over, p]
        rates = f"best: {a.lr[0]:g} / {b.lr[0]:g}"
    else:
        a, b = s.get(MB, p, lr), s.get(over, p, lr)
        rates = f"{lr:g}" if lr == 0.01 else f"{lr:g} / {lr:g}"
    # per seed in points (× 100 before the difference, as the doc's numbers were first computed): FedAvg's
    # last-5 margin at p = 0.95 is −1.55, a tie at one decimal that the float rounding then settles alike
    final = paired_margin(a, b, lambda g: [100 * v for v in g.final()])
    last5 = paired_margin(a, b, lambda g: [100 * v for v in g.last_k(K)])
    n = len(final.seeds)
    seeds = f"{n}" if n > 1 else f"1 (seed {final.seeds[0]})"
    cells = [
        percent_pm(final.points, True, 1),
        percent_pm(final.relative, True),
        percent_pm(last5.points, True, 1),
        percent_pm(last5.relative, True),
    ]
    return table_row(
        [
            ratio(p),
            OVER[over],
            rates,
            seeds,
            *cells,
            PAPER.get(over, "–") if p == 0.95 else "–",
        ]
    )


def margins_table(s: Study) -> list[str]:
    head = ["p", "over", "lr (MiniBatch-SFL / baseline)", "seeds", "final: pts", "final: relative"]
    head += ["last-5: pts", "last-5: relative", "paper"]
    return [table_row(head), table_rule(len(head)), *(margin_row(s, *m) for m in MARGINS)]


def resnet_table(s: Study) -> list[str]:
    lines = [table_row(["p", "algorithm", "final", "last-5", "best"]), table_rule(5)]
    for p in (0.95, 1.0):
        for algorithm in (MB, V2, FL):
            g = s.get(algorithm, p, 0.01, model="resnet18")
            if g:
                label = OVER.get(algorithm, LABEL[algorithm])
                lines.append(
                    table_row(
                        [
                            ratio(p),
                            label,
                            percent_pm(g.final()),
                            percent_pm(g.last_k(K)),
                            percent_pm(g.best()),
                        ]
                    )
                )
    return lines


def tables(study: Path = STUDY) -> str:
    """tables.md: §1b's four tables, in the doc's order."""
    s = Study(study)
    blocks = [selection_table(s), last5_table(s), margins_table(s), resnet_table(s)]
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def main() -> None:
    write_tables(__doc__.splitlines()[0], tables, ROOT / "docs/results/fmnist-epoch", STUDY)


if __name__ == "__main__":
    main()
