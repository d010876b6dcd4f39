"""What ``channels_last = true`` gains: rounds and evaluation of the same setup in channels-last memory order
against the default (contiguous, NCHW), with the floor (plain PyTorch on the giant batch) in both orders.

    PYTHONPATH=src python3 -m benchmarks.channels_last [--repeats 3] [--threads 1] [--device cpu]

Workloads: ResNet-18 at width 16 on FMNIST-shaped inputs [1, 28, 28] (docs/results.md §1b's paper-model
runs), at width 8 on CIFAR-shaped [3, 32, 32] (``splitfed bench``'s), and cnn4 on [1, 28, 28]; 10 clients,
b = 32, cut 2, 960 samples a round (τ = 3), synthetic data. For each, one process times a round of each
variant in both orders, interleaved in a rotating order after one warm-up round (bench.py's protocol), and
the evaluation forward of the assembled model on 2,000 samples; a row gives the median time in each order
and the median over repetitions of their ratio. The sweeps of issue 25 run one thread per process, hence
the default.
Writes benchmarks/results/channels_last.json.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

WORKLOADS = {
    "resnet18-w16-fmnist": ("resnet18", {"width": 16}, (1, 28, 28)),
    "resnet18-w8-cifar": ("resnet18", {"width": 8}, (3, 32, 32)),
    "cnn4-fmnist": ("cnn4", {}, (1, 28, 28)),
}
VARIANTS = ("floor", "minibatch_sfl", "sfl_v2", "fedavg")
CLIENTS, BATCH, TAU = 10, 32, 3


def prepared(model: str, model_args: dict, shape: tuple, last: bool, args: argparse.Namespace):
    from splitfed import Config
    from splitfed.setup import prepare

    cfg = Config(
        algorithm=("minibatch_sfl",),
        dataset="synthetic",
        synthetic={"shape": shape, "samples": CLIENTS * 64 + 2000},
        model=model,
        model_args=model_args,
        clients=CLIENTS,
        partition="iid",
        batch_size=BATCH,
        local_iters=TAU,
        rounds=1,
        divergence={"every": 0},
        device=args.device,
        channels_last=last,
    )
    return prepare(cfg)


class Evaluation:
    """A runner whose round is the evaluation forward of the initial model on 2,000 samples."""

    def __init__(self, setup) -> None:
        self.setup, self.split = setup, setup.split_model()
        self.x, self.y = setup.data.train_x[:2000], setup.data.train_y[:2000]

    def run_round(self, rnd: int, clients: list[int]) -> None:
        self.split.evaluate(self.setup.init_c, self.setup.init_s, self.x, self.y)


def runners(setup, suffix: str) -> dict[str, Any]:
    from splitfed.algorithms import create
    from splitfed.bench_plain import PlainTorch
    from splitfed.executors import make_executor
    from splitfed.executors.parts import prepare_context

    out: dict[str, Any] = {}
    for name in VARIANTS:
        if name == "floor":
            out[name + suffix] = PlainTorch(setup, setup.context(), giant=True)
        else:
            algo = create(setup.cfg, name)
            out[name + suffix] = make_executor(algo, prepare_context(algo, setup), "sequential")
    out["evaluate" + suffix] = Evaluation(setup)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated names of WORKLOADS")
    p.add_argument("--out", default="benchmarks/results/channels_last.json")
    args = p.parse_args()
    from splitfed.bench import machine, time_rounds

    torch.set_num_threads(args.threads)
    rows = []
    for workload in args.workloads.split(","):
        model, model_args, shape = WORKLOADS[workload]
        plain = prepared(model, model_args, shape, False, args)
        last = prepared(model, model_args, shape, True, args)
        timed = runners(plain, "") | runners(last, "[channels_last]")
        times, _ = time_rounds(timed, plain.participants(1), args.repeats, plain.device)
        for name in (*VARIANTS, "evaluate"):
            a, b = times[name], times[name + "[channels_last]"]
            row = {
                "workload": workload,
                "variant": name,
                "contiguous_s": statistics.median(a),
                "channels_last_s": statistics.median(b),
                "ratio": statistics.median(y / x for x, y in zip(a, b, strict=True)),
            }
            rows.append(row)
            print(
                f"{workload:<24} {name:<14} contiguous {row['contiguous_s']:7.3f} s  channels_last "
                f"{row['channels_last_s']:7.3f} s  ratio {row['ratio']:.3f}",
                flush=True,
            )
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        "settings": vars(args) | {"clients": CLIENTS, "batch_size": BATCH, "tau": TAU},
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
