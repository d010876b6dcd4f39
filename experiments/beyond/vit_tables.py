"""The table of docs/results.md §2b (the cut layer in a vision transformer), from the study's tables:

    python experiments/beyond/vit_tables.py [--out docs/results/vit-cuts]

writes tables.md, whose table §2b carries verbatim (tests/test_results_doc.py checks it). Read from
experiments/beyond/results/vit-cuts through ``splitfed.analysis``: per p and cut, each algorithm's last-5
mean test accuracy (mean ± std over the seeds), and MiniBatch-SFL's client-side divergence δ_c in the spec's
three forms, each the mean over the rounds measured, then over the seeds. FedAvg trains the whole model on
the clients, so its accuracy does not depend on the cut: it is printed at the first cut and marked 〃
(the same) at the others, which the script checks rather than assumes.
"""

import statistics
from pathlib import Path

from splitfed.analysis import Group, load_groups
from splitfed.analysis.script import write_tables
from splitfed.analysis.text import percent_pm, table_row, table_rule

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments/beyond/results/vit-cuts"
K = 5
ALGORITHMS = ("minibatch_sfl", "sfl_v2", "fedavg")
CUT_FREE = "fedavg"  # its whole model trains on the clients: the same runs' numbers at every cut
SAME = "〃"
HEAD = ["p", "cut", "MiniBatch-SFL", "SFL-V2", "FedAvg", "δ_c raw", "δ_c relative", "δ_c per parameter"]


def divergence(g: Group, form: str) -> float:
    return statistics.fmean(g.mean_over_rounds(f"divergence_client{form}"))


def raw(x: float) -> str:
    """Three significant digits below 1, two decimals above (0.371, 4.91, 12.96)."""
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def table(groups: list[Group]) -> list[str]:
    cells = {(g.algorithm, g.ratio, g.cut_layer): g for g in groups}
    lines = [table_row(HEAD), table_rule(len(HEAD))]
    for p in sorted({g.ratio for g in groups}):
        cuts = sorted({g.cut_layer for g in groups if g.ratio == p})
        for cut in cuts:
            accuracy = []
            for algorithm in ALGORITHMS:
                text = percent_pm(cells[algorithm, p, cut].last_k(K))
                first = percent_pm(cells[algorithm, p, cuts[0]].last_k(K))
                if algorithm == CUT_FREE and cut != cuts[0]:
                    if text != first:
                        raise ValueError(f"{algorithm} at p = {p:g} differs between cuts {cuts[0]} and {cut}")
                    text = SAME
                accuracy.append(text)
            mb = cells["minibatch_sfl", p, cut]
            forms = [
                raw(divergence(mb, "")),
                f"{divergence(mb, '_relative'):.2f}",
                f"{divergence(mb, '_per_param'):.4f}",
            ]
            lines.append(table_row([f"{p:.1f}", str(cut), *accuracy, *forms]))
    return lines


def tables(study: Path = STUDY) -> str:
    """tables.md: §2b's table."""
    return "\n".join(table(load_groups(study))) + "\n"


def main() -> None:
    write_tables(__doc__.splitlines()[0], tables, ROOT / "docs/results/vit-cuts", STUDY)


if __name__ == "__main__":
    main()
