"""Per-client state with many clients: SCAFFOLD's c_i for N = 10,000 clients, 100 a round.

    PYTHONPATH=src python3 -m benchmarks.client_states [--clients 10000] [--per-round 100] [--rounds 20]

Each setting trains SCAFFOLD in a subprocess of its own and reports the clients holding a c_i, the bytes
of c_i in memory and on disk, and the process's peak memory (RSS). ``client_state_mb`` bounds what stays
in memory; the rest goes to files beside the checkpoint. Writes benchmarks/results/client_states.json.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "cnn4"  # 1.6 M parameters: a c_i (client and server side) is 6.4 MB


def one(clients: int, per_round: int, rounds: int, memory_mb: float, out: str) -> dict:
    """In this process: train, then measure."""
    from splitfed import Config
    from splitfed.executors import train
    from splitfed.setup import prepare

    cfg = Config(
        algorithm=("scaffold",),
        dataset="synthetic",
        synthetic={"shape": (1, 28, 28), "samples": 2 * clients},
        model=MODEL,
        clients=clients,
        clients_per_round=per_round,
        partition="iid",
        batch_size=2,
        local_iters=1,
        rounds=rounds,
        divergence={"every": 0},
        eval_every=rounds,
        client_state_mb=memory_mb,
        device="cpu",
        threads=1,
    )
    executor, _, _ = train("scaffold", prepare(cfg), checkpoint=Path(out) / "scaffold.pt")
    store = executor.client_states
    disk = sum(p.stat().st_size for p in store.spill_dir.glob("*.pt"))
    return {
        "clients": clients,
        "per_round": per_round,
        "rounds": rounds,
        "client_state_mb": memory_mb,
        "clients_with_state": len(store),
        "in_memory_mb": store.held / 1e6,
        "on_disk_mb": disk / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--one", nargs=4, metavar=("N", "M", "R", "MB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        n, m, r, mb = args.one
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(one(int(n), int(m), int(r), float(mb), out)))
        return
    rows = []
    for memory_mb in (100_000.0, 1024.0, 256.0):  # everything in memory, the default, a small bound
        cmd = [sys.executable, "-m", "benchmarks.client_states", "--one"]
        cmd += [str(args.clients), str(args.per_round), str(args.rounds), str(memory_mb)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    path = Path(__file__).parent / "results" / "client_states.json"
    path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
