"""A study as data, and ``splitfed report DIR``: its figures and tables, and how they bear on a claims file.

Reads every finished run of a study (its tables, or run directories) and groups them into cells: runs whose
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

The package, in the order the data flow: ``ids`` (run and partition ids), ``codec`` (a value in a CSV cell,
a round record as rows), ``rundir`` (one run directory), ``tables`` (runs.csv, metrics.csv.gz, partitions.csv:
packing runs into them, reading them), ``load`` (a study's runs, from its tables or its run directories,
into one tidy list of configs and records), ``cells`` (grouped over seeds), ``aggregate`` (the learning
rate chosen on validation, paired margins, costs), ``setting``, ``figures`` and ``clients`` (what is drawn),
``claims`` (the claims file), ``writer`` (report.md and its CSVs).
"""

from .aggregate import Margin, Selection, interval95, paired_margin, select_lr
from .cells import Group, cut_order
from .claims import Claims, PaperFigure, load_claims
from .load import StudyRun, load_groups, load_study
from .rundir import is_run
from .setting import Setting
from .writer import report

__all__ = [
    "Claims",
    "Group",
    "Margin",
    "PaperFigure",
    "Selection",
    "Setting",
    "StudyRun",
    "cut_order",
    "interval95",
    "is_run",
    "load_claims",
    "load_groups",
    "load_study",
    "paired_margin",
    "report",
    "select_lr",
]
