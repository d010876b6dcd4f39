"""The table of docs/results.md §4 (many clients), from the study's tables:

    python experiments/beyond/clients_tables.py [--out docs/results/many-clients]

writes tables.md, whose table §4 carries verbatim (tests/test_results_doc.py checks it). Read from
experiments/beyond/results/many-clients through ``splitfed.analysis``: per algorithm and server rate, the
last-5 mean test accuracy at each p and N (one seed), and the seconds per round at N = 1,000 and p = 1: the
mean of round_time_s over the rounds (evaluation and the divergence rounds included), and in brackets the
training alone, the median of train_time_s over the rounds (the statistic §4 has printed since it ran).
"""

import statistics
from pathlib import Path

from splitfed.analysis import Group, load_groups
from splitfed.analysis.script import write_tables
from splitfed.analysis.text import percent_pm, table_row, table_rule

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments/beyond/results/many-clients"
K = 5
RATIOS = (0.8, 1.0)
CLIENTS = (10, 100, 1000)
TIMED = (1000, 1.0)  # (N, p) of the seconds-per-round column
ROWS = [  # (algorithm, its label, server lr, how the rate is described)
    ("fedavg", "FedAvg (FL)", 0.01, "0.01"),
    ("sfl_v2", "SFL-V2", 0.01, "0.01"),
    ("minibatch_sfl", "MiniBatch-SFL", 0.01, "0.01"),
    ("minibatch_sfl", "MiniBatch-SFL", 0.05, "0.05 (scaled with B)"),
]


def seconds(g: Group) -> str:
    (h,) = g.histories
    per_round = statistics.fmean(r["round_time_s"] for r in h)
    training = statistics.median(r["train_time_s"] for r in h)
    return f"{per_round:.1f} (training {training:.1f})"


def table(groups: list[Group]) -> list[str]:
    cells = {(g.algorithm, g.lr[1], g.ratio, g.setting[2]): g for g in groups if g.lr}
    head = ["algorithm", "server lr"]
    for p in RATIOS:
        head += [f"p = {p:g}: N = {CLIENTS[0]:,}", *(f"{n:,}" for n in CLIENTS[1:])]
    head.append(f"s/round at N = {TIMED[0]:,} (p = {TIMED[1]:g})")
    lines = [table_row(head), table_rule(len(head))]
    for algorithm, label, server_lr, rate in ROWS:
        accuracy = []
        for p in RATIOS:
            for n in CLIENTS:
                g = cells.get((algorithm, server_lr, p, n))
                accuracy.append(percent_pm(g.last_k(K)) if g else "")
        timed = cells.get((algorithm, server_lr, TIMED[1], TIMED[0]))
        lines.append(table_row([label, rate, *accuracy, seconds(timed) if timed else ""]))
    return lines


def tables(study: Path = STUDY) -> str:
    """tables.md: §4's table."""
    return "\n".join(table(load_groups(study))) + "\n"


def main() -> None:
    write_tables(__doc__.splitlines()[0], tables, ROOT / "docs/results/many-clients", STUDY)


if __name__ == "__main__":
    main()
