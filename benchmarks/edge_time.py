"""What the edge-time model costs a run: the same round trained with and without ``profile``, interleaved in
one process, on FMNIST-shaped data (synthetic [1, 28, 28], cnn4 cut 2, b = 32).

    PYTHONPATH=src python3 -m benchmarks.edge_time [--clients 10,100] [--iters 20] [--repeats 5]

Two costs: recording (each step tells the round's recorder what it did: the training time of a timed
round over an untimed one, ``train ×``) and simulating the recorded round on the profile's devices after
training (``simulate s``, and its share of the untimed round). The fastest of ``--repeats`` rounds is kept
for each. Writes benchmarks/results/edge_time.json.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from splitfed import Config
from splitfed.algorithms import create
from splitfed.engine.profiles import profile
from splitfed.executors import make_executor
from splitfed.executors.parts import prepare_context
from splitfed.executors.rounds import begin_round
from splitfed.setup import prepare

ALGORITHMS = ("minibatch_sfl", "sfl_v2", "fedavg")


def _config(clients: int, iters: int, timed: bool) -> Config:
    return Config(
        dataset="synthetic",
        synthetic={"shape": (1, 28, 28), "samples": clients * 64},
        model="cnn4",
        cut_layer=2,
        clients=clients,
        local_iters=iters,
        batch_size=32,
        divergence={"every": 0},
        device="cpu",
        threads=1,
        profile="phone-4g-mixed" if timed else None,
    )


def _round_time(executor, ctx, rnd: int) -> float:
    begin_round(ctx, rnd)
    t0 = time.perf_counter()
    executor.run_round(rnd, list(range(ctx.num_clients)))
    return time.perf_counter() - t0


def measure(algorithm: str, clients: int, iters: int, repeats: int) -> dict:
    runs = {}
    for timed in (False, True):
        setup = prepare(_config(clients, iters, timed))
        algo = create(setup.cfg, algorithm)
        ctx = prepare_context(algo, setup)
        runs[timed] = (make_executor(algo, ctx, "sequential"), ctx, setup)
    best = {False: float("inf"), True: float("inf")}
    simulate = float("inf")
    for rnd in range(1, repeats + 2):
        for timed in (False, True):
            executor, ctx, setup = runs[timed]
            seconds = _round_time(executor, ctx, rnd)
            if rnd > 1:  # the first round warms caches up
                best[timed] = min(best[timed], seconds)
        executor, _, setup = runs[True]
        parties = profile(setup.cfg.profile).draw(clients, 0)
        t0 = time.perf_counter()
        executor.timeline.simulate(parties)
        simulate = min(simulate, time.perf_counter() - t0)
    return {
        "algorithm": algorithm,
        "clients": clients,
        "iters": iters,
        "tasks": len(runs[True][0].timeline.tasks),
        "train_s": best[False],
        "train_timed_s": best[True],
        "train_ratio": best[True] / best[False],
        "simulate_s": simulate,
        "simulate_share": simulate / best[False],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="10,100")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'algorithm':<14}{'N':>5}{'tasks':>8}{'train s':>10}{'train ×':>9}{'simulate s':>12}{'share':>8}")
    for clients in (int(n) for n in args.clients.split(",")):
        for algorithm in ALGORITHMS:
            r = measure(algorithm, clients, args.iters, args.repeats)
            rows.append(r)
            print(
                f"{algorithm:<14}{clients:>5}{r['tasks']:>8}{r['train_s']:>10.3f}{r['train_ratio']:>9.3f}"
                f"{r['simulate_s']:>12.4f}{r['simulate_share']:>8.1%}",
                flush=True,
            )
    out = Path("benchmarks/results/edge_time.json")
    out.write_text(json.dumps({"torch": torch.__version__, "threads": 1, "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
