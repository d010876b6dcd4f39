"""One process against several, and many clients: time per round and memory per process.

    python -m benchmarks.scale [--out benchmarks/results/scale.json]

Each measurement is ``splitfed run`` in a fresh process (``--processes K`` starts K ranks), read back from
its metrics.jsonl (median training time of rounds 2.., so start-up is left out) and the largest resident
memory of any of its processes (getrusage of the children). Scenarios:
- N = 1,000 clients of cnn4 on Fashion-MNIST-shaped data, 1 process x 2 threads against 2 processes x 1
  thread, MiniBatch-SFL and FedAvg;
- N = 10,000 clients with 100 taking part in each round (clients_per_round), one process.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = [
    "--dataset", "synthetic", "--synthetic.shape", "1,28,28", "--model", "cnn4", "--partition", "iid",
    "--batch-size", "32", "--divergence.every", "0", "--device", "cpu",
]  # fmt: skip
SCENARIOS = {
    "N1000-1x2": [*COMMON, "--synthetic.samples", "64000", "--clients", "1000", "--local-iters", "2",
                  "--rounds", "3", "--threads", "2"],
    "N1000-2x1": [*COMMON, "--synthetic.samples", "64000", "--clients", "1000", "--local-iters", "2",
                  "--rounds", "3", "--threads", "1", "--processes", "2"],
    "N10000-100": [*COMMON, "--synthetic.samples", "320000", "--clients", "10000",
                   "--clients-per-round", "100", "--local-iters", "10", "--rounds", "4", "--threads", "2"],
}  # fmt: skip


def measure_one(args: list[str]) -> dict:
    """Run one command; its per-round times and the largest resident memory of its processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "splitfed", "run", *args, "--out", str(out)], check=True)
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = {}
    for r in records:
        rows.setdefault(r["algorithm"], []).append(r)
    return {
        "wall_s": wall,
        "peak_rss_mb_per_process": rss_mb,
        "algorithms": {
            name: {
                "train_s_per_round": statistics.median(r["train_time_s"] for r in recs[1:] or recs),
                "samples_per_round": recs[-1]["samples"],
                "participants": recs[-1]["participants"],
                "test_accuracy": recs[-1]["test_accuracy"],
            }
            for name, recs in rows.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/scale.json")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--algorithms", default="minibatch_sfl,fedavg")
    p.add_argument("--one", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # internal: one measurement
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(args.one)))
        return 0
    results = {}
    for name in args.scenarios.split(","):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.scale",
            "--one",
            *SCENARIOS[name],
            "--algorithm",
            args.algorithms,
        ]
        p_out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(p_out.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
