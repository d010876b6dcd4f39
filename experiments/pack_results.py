"""Pack a study's run directories into its tables (runs.csv, metrics.csv.gz, partitions.csv), as ``splitfed
sweep`` does after each run; the one-off migration of the committed studies from run directories, and the
way to bring in a sweep written by a splitfed from before the tables:

    python experiments/pack_results.py experiments/paper/results/fmnist-epoch [...]

Every run directory (with config.toml) of each study is packed under its run id; failures.json's notes fold
into runs.csv. The directories are left as they are: remove them once the tables are committed.
"""

import argparse
from pathlib import Path

from splitfed.analysis.tables import pack_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders holding run directories")
    for study in parser.parse_args().studies:
        print(f"{study}: {len(pack_study(study))} runs packed into its tables")


if __name__ == "__main__":
    main()
