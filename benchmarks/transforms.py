"""The cost of reading a user's Dataset at every draw (its transform per draw) against the gather from
tensors, on FMNIST-shaped data (synthetic [1, 28, 28], cnn4, 10 clients, b = 32).

    PYTHONPATH=src python3 -m benchmarks.transforms [--iters 10] [--repeats 3] [--threads 1] [--device cpu]

Four ways to give the same samples: tensors (the gather, today's fast path); a Dataset whose
``__getitem__`` returns the stored sample (an identity transform: the bare cost of reading per draw); a
Dataset that flips at random per item (a transform as torchvision writes one); and tensors with a batch
``transform`` flipping on the batch's device. For each: the draw alone (``ClientStreams.batches`` of a
MiniBatch-SFL slot, 10 clients × 32 samples) and a whole MiniBatch-SFL round, in one process, same seed,
interleaved, the fastest of ``--repeats`` timings kept.
Writes benchmarks/results/transforms.json.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

CLIENTS, BATCH = 10, 32


class Stored(Dataset):
    """The samples as stored: what a Dataset with an identity transform costs."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Flipped(Stored):
    """A horizontal flip with probability 1/2, drawn per item from torch's RNG (torchvision's way)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x), self.y[i]


def flip_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def prepared(data, transform, args):
    from splitfed import Config
    from splitfed.setup import prepare

    cfg = Config(
        algorithm=("minibatch_sfl",),
        model="cnn4",
        clients=CLIENTS,
        batch_size=BATCH,
        local_iters=args.iters,
        rounds=1,
        divergence={"every": 0},
        partition="iid",
        device=args.device,
        threads=args.threads,
    )
    return prepare(cfg, data=data, transform=transform)


def time_draws(setup, slots: int) -> float:
    """Seconds per slot: every client's next batch, drawn together as MiniBatch-SFL draws them."""
    streams = setup.context().streams
    clients, sizes = list(range(CLIENTS)), [BATCH] * CLIENTS
    streams.batches(clients, sizes)  # warm
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(slots):
        streams.batches(clients, sizes)
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / slots


def time_round(setup) -> float:
    """Seconds of one MiniBatch-SFL round (args.iters local iterations), evaluation included."""
    from splitfed.executors import train

    start = time.perf_counter()
    train("minibatch_sfl", setup)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=10, help="local iterations per round")
    parser.add_argument("--slots", type=int, default=20, help="slots drawn per timing of the draw alone")
    parser.add_argument("--repeats", type=int, default=3, help="timings per path (the minimum is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/transforms.json")
    args = parser.parse_args()
    from splitfed.data import DATASETS

    data = DATASETS.get("synthetic")(shape=(1, 28, 28), samples=2000)
    x, y = data.train_x, data.train_y
    paths = {
        "tensors": prepared(TensorDataset(x, y), None, args),
        "Dataset, identity": prepared(Stored(x, y), None, args),
        "Dataset, random flip": prepared(Flipped(x, y), None, args),
        "tensors + transform": prepared(TensorDataset(x, y), flip_batch, args),
    }
    # Interleaved and the minimum kept: on a shared machine, the least disturbed timing of each path.
    draw = {name: float("inf") for name in paths}
    rounds = dict(draw)
    for _ in range(args.repeats):
        for name, setup in paths.items():
            draw[name] = min(draw[name], time_draws(setup, args.slots))
            rounds[name] = min(rounds[name], time_round(setup))
    rows = []
    for name in paths:
        row = {
            "path": name,
            "draw_ms": draw[name] * 1e3,
            "round_s": rounds[name],
            "draw_ratio": draw[name] / draw["tensors"],
            "round_ratio": rounds[name] / rounds["tensors"],
        }
        rows.append(row)
        print(
            f"{name:>22}: draw {row['draw_ms']:7.2f} ms per slot of {CLIENTS}x{BATCH} "
            f"(x{row['draw_ratio']:.1f}), "
            f"round of {args.iters} iterations {row['round_s']:6.2f} s (x{row['round_ratio']:.2f})"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
