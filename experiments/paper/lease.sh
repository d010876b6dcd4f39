#!/usr/bin/env bash
# One GPU lease of a study's grid, as the device tool runs it (from the repository root, $OUT set):
#
#   bash experiments/paper/lease.sh GRID STUDY [SECONDS] [WORKERS]
#   e.g. bash experiments/paper/lease.sh experiments/paper/fmnist-tuned-rest.toml fmnist-epoch 480
#
# Sweeps GRID into experiments/paper/results/STUDY, WORKERS runs at a time (default 8, what one card
# holds for these models), and stops it with SIGINT after SECONDS (default 480, leaving a lease of 10
# minutes time to copy back). Finished runs are found again by any later sweep (a run's directory is named
# by its config); a run cut short is lost with the machine and starts again on the next (the sweep tables
# only runs that ended). Then the study's tables (runs.csv, metrics.csv.gz, partitions.csv) go to $OUT:
# copy them over the study's folder and commit them before the next lease, whose sync deletes what the
# working tree lacks (grid.toml stays: it describes the study's first grid, not the last one swept).
# Fashion-MNIST travels as data/ (nothing downloads there): before the lease,
#   mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/    (30 MiB; ignored by git)
# and give the device tool carry ["data"].
set -uo pipefail

grid=${1:?usage: lease.sh GRID STUDY [SECONDS] [WORKERS]}
study=experiments/paper/results/${2:?usage: lease.sh GRID STUDY [SECONDS] [WORKERS]}
seconds=${3:-480}
workers=${4:-8}
out=${OUT:?lease.sh writes its tables to \$OUT, which the device tool sets}
python=$(command -v python3)

mkdir -p "$study"
echo "lease: $(date -u +%FT%TZ) $grid -> $study, $workers at a time, for ${seconds}s"
"$python" -c 'import torch; print("lease: torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
# the sweep's own SIGINT handling stops its workers and writes its tables of what finished
PYTHONPATH=src timeout -s INT -k 60 "$seconds" \
    "$python" -m splitfed sweep "$grid" --out "$study" --workers "$workers"
echo "lease: sweep ended with $? (124: stopped at ${seconds}s)"
for f in runs.csv metrics.csv.gz partitions.csv; do
    [ -f "$study/$f" ] && cp "$study/$f" "$out/"
done
ls -l "$out"
