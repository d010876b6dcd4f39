"""The normalisation control's probe (docs/results.md §1b): where does SFL-V2 lose with a BatchNorm on
the server side, in the running statistics evaluation uses or in the weights it trained?

SFL-V2's main server normalises one client's batch at a time, nearly one class at p >= 0.95, so its
running statistics follow the last clients it saw; MiniBatch-SFL's normalises the union of all clients'
batches. If the statistics were all that differ, recomputing them over the union of the clients' training
data (one pass of smashed data, which a main server could make before it evaluates) would close the gap.
For each finished run of ``cnn4 norm=batch`` in a sweep folder, the test accuracy of its final model: as
trained, with the server side's BatchNorm statistics recomputed, and with every BatchNorm's.

It reads the run directories of a sweep (the models are working state, not committed: sweeping the
grids into an empty folder remakes them; the repository's folder holds the tables, which count as run)
and writes ``bn_recalibration.csv`` beside the study's committed tables, where ``epoch_tables.py`` makes
§1b's table of it:

    python experiments/paper/bn_recalibration.py SWEEP_FOLDER_WITH_RUN_DIRECTORIES
"""

import argparse
import csv
import tomllib
from pathlib import Path

import torch
from torch import nn

from splitfed.data import DATASETS, Dataset
from splitfed.models import MODELS

STUDY = Path(__file__).resolve().parent / "results/fmnist-epoch"
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
FIELDS = ["run", "algorithm", "schedule", "non_iid_ratio", "lr", "seed", "as_trained", "server_bn", "all_bn"]


def server_side(model: nn.Sequential, cut_layer: int) -> list[str]:
    """The names of the blocks after the cut (the main server's)."""
    names = list(model._modules)
    return names[names.index(model.cut_points[cut_layer]) + 1 :]


@torch.no_grad()
def recalibrate(model: nn.Module, prefixes: list[str], x: torch.Tensor, batch: int = 1000) -> None:
    """Recompute the running statistics of the BatchNorms under ``prefixes`` ("" for all) over ``x``,
    every other module in evaluation mode; the weights stay as trained. Each batch weighs the same: over
    equal batches the mean is the data's exactly and the variance the batches' average (unbiased) one,
    which misses only the spread of the batch means."""
    model.eval()
    chosen = [
        m
        for name, m in model.named_modules()
        if isinstance(m, BATCH_NORMS) and name.startswith(tuple(prefixes))
    ]
    saved = [m.momentum for m in chosen]
    for m in chosen:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
        m.train()
    for i in range(0, len(x), batch):
        model(x[i : i + batch])
    for m, momentum in zip(chosen, saved, strict=True):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    model.eval()
    right = sum(
        (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item() for i in range(0, len(y), batch)
    )
    return right / len(y)


def probe(run: Path, data: dict[tuple, Dataset]) -> dict | None:
    """One run's three accuracies; None for a run that is not a finished cnn4 norm=batch run."""
    cfg = tomllib.loads((run / "config.toml").read_text())
    models = list((run / "models").glob("*.pt"))
    if cfg.get("model") != "cnn4" or cfg.get("model_args", {}).get("norm") != "batch" or len(models) != 1:
        return None
    if not (run / "summary.csv").exists():  # interrupted or diverged: no final model to speak of
        return None
    key = (cfg["dataset"], cfg.get("validation_samples", 0))
    if key not in data:  # the training split the run's clients shared: the validation samples held out
        loaded = DATASETS.get(cfg["dataset"])(cfg.get("data_dir"))
        data[key] = loaded.hold_out(key[1]) if key[1] else loaded
    d = data[key]

    def trained() -> nn.Sequential:
        model = MODELS.get("cnn4")(d.num_classes, tuple(d.train_x.shape[1:]), **cfg["model_args"])
        model.load_state_dict(torch.load(models[0], map_location="cpu", weights_only=True))
        return model

    server = trained()
    recalibrate(server, server_side(server, cfg["cut_layer"]), d.train_x)
    every = trained()
    recalibrate(every, [""], d.train_x)
    return {
        "run": run.name,
        "algorithm": cfg["algorithm"][0],
        "schedule": cfg.get("sfl_v2", {}).get("schedule", "") if cfg["algorithm"][0] == "sfl_v2" else "",
        "non_iid_ratio": cfg["non_iid_ratio"],
        "lr": cfg["lr"],
        "seed": cfg["seed"],
        "as_trained": accuracy(trained(), d.test_x, d.test_y),
        "server_bn": accuracy(server, d.test_x, d.test_y),
        "all_bn": accuracy(every, d.test_x, d.test_y),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder with its run directories")
    parser.add_argument("--out", type=Path, default=STUDY, help="default: the study's committed tables")
    args = parser.parse_args()
    if not args.sweep.is_dir():
        parser.error(f"{args.sweep} is not a folder; give the folder a sweep wrote its run directories into")
    torch.set_num_threads(1)
    data: dict[tuple, Dataset] = {}
    rows = [
        r
        for run in sorted(args.sweep.iterdir())
        if (run / "config.toml").exists() and (r := probe(run, data))
    ]
    rows.sort(key=lambda r: (r["non_iid_ratio"], r["lr"], r["algorithm"], r["schedule"], r["seed"]))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "bn_recalibration.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {**r, **{k: f"{r[k]:.4f}" for k in ("as_trained", "server_bn", "all_bn")}} for r in rows
        )
    print(f"wrote {args.out / 'bn_recalibration.csv'} ({len(rows)} runs)")
    for r in rows:
        print(r["algorithm"], r["schedule"], r["lr"], r["seed"], r["as_trained"], r["server_bn"], r["all_bn"])


if __name__ == "__main__":
    main()
