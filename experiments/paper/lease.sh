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
# and give the device tool carry ["data"]. Exit status: 0 when the sweep finished or was stopped in time,
# the sweep's own when it failed, 2 (one line, nothing started) for a mistake in the call.
set -uo pipefail

fail() { echo "lease.sh: error: $1" >&2; exit 2; }
[ $# -ge 2 ] || fail "usage: lease.sh GRID STUDY [SECONDS] [WORKERS] (got $# arguments)"
grid=$1
study=experiments/paper/results/$2
seconds=${3:-480}
workers=${4:-8}
[ -f "$grid" ] || fail "no grid file $grid (a TOML grid, e.g. experiments/paper/fmnist-tuned-rest.toml)"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || fail "SECONDS must be a positive integer, got '$seconds'"
[ -n "${OUT:-}" ] || fail "\$OUT is not set: lease.sh writes the study's tables there (the device tool sets it)"
out=$OUT
python=$(command -v python3)

mkdir -p "$study"
echo "lease: $(date -u +%FT%TZ) $grid -> $study, $workers at a time, for ${seconds}s"
"$python" -c 'import torch; print("lease: torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
# the sweep's own SIGINT handling stops its workers and writes its tables of what finished
PYTHONPATH=src timeout -s INT -k 60 "$seconds" \
    "$python" -m splitfed sweep "$grid" --out "$study" --workers "$workers"
rc=$?
echo "lease: sweep ended with $rc (124: stopped at ${seconds}s)"
for f in runs.csv metrics.csv.gz partitions.csv; do
    [ -f "$study/$f" ] && cp "$study/$f" "$out/"
done
ls -l "$out"
# stopped in time is a lease that did its job; any other failure of the sweep is the lease's status
exit $((rc == 124 ? 0 : rc))
