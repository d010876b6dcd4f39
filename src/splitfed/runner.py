"""``run(Config)``: check everything, then train each algorithm on the same setup and write the run dir.

A run directory holds: config.toml (resolved), partition.csv/.txt, checkpoints/<algorithm>.pt (every
round), metrics.jsonl (one object per round per algorithm), and, once every algorithm has finished,
summary.csv, accuracy.png and divergence.png. A run without summary.csv is unfinished: ``--resume`` it.
"""

import csv
import datetime
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._limits import check_output_dir, preflight
from .algorithms import ALGORITHMS
from .config import Config
from .data import class_histogram, format_histogram
from .engine.checkpoint import RESUMABLE_CHANGES, check_resumable, load_run_checkpoint
from .errors import SplitfedError
from .executors import train
from .report import format_table, plot_run, summarize, write_summary_csv
from .setup import Setup, prepare

log = logging.getLogger("splitfed")


@dataclass
class RunResult:
    """What ``run`` returns: every round's metrics, the final model of each algorithm, the summary."""

    config: Config
    out_dir: Path
    history: list[dict[str, Any]]
    models: dict[str, nn.Module]
    summary: list[dict[str, Any]]


def check_algorithms(cfg: Config) -> None:
    """Every algorithm named exists, before anything is written."""
    for name in cfg.algorithm:
        ALGORITHMS.get(name)


class RunDir:
    """The run directory: created for a new run, checked against the config for a resumed one."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        if cfg.resume and not cfg.out:
            raise SplitfedError("--resume needs --out DIR naming the run to continue")
        if cfg.out:
            self.path = Path(cfg.out)
        else:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.path = Path("runs") / stamp
            suffix = 1
            while self.path.exists():
                suffix += 1
                self.path = Path("runs") / f"{stamp}-{suffix}"
        check_output_dir(self.path)  # a directory that can be written, or one line saying why not
        config_file = self.path / "config.toml"
        if cfg.resume:
            if not config_file.is_file():
                raise SplitfedError(f"nothing to resume in {self.path}: it has no config.toml")
            self._check_same(Config.from_toml(config_file))
        elif self.path.exists() and any(self.path.iterdir()):
            raise SplitfedError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )

    def _check_same(self, saved: Config) -> None:
        """The flags given may change only RESUMABLE_CHANGES of config.toml; each checkpoint is then
        checked against the config it was trained with (``start``), which an edited config.toml is not."""
        remedy = f"only {', '.join(sorted(RESUMABLE_CHANGES - {'resume'}))} may change"
        check_resumable(saved.to_dict(), self.cfg, str(self.path), remedy)

    def checkpoint(self, algorithm: str) -> Path:
        return self.path / "checkpoints" / f"{algorithm}.pt"

    def start(self, setup: Setup, histogram: torch.Tensor) -> None:
        # Every checkpoint is checked whole (digest, config, structure) before anything is written: a
        # refused resume leaves the run as it was. metrics.jsonl is rebuilt from their histories, which
        # are written before their line is appended: a kill between the two never loses or doubles a round.
        histories = [
            load_run_checkpoint(self.checkpoint(name), name, setup)["history"][: self.cfg.rounds]
            for name in self.cfg.algorithm
            if self.checkpoint(name).exists()
        ]
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "summary.csv").unlink(missing_ok=True)  # a resumed run is unfinished until it ends
        write_atomic(self.path / "config.toml", self.cfg.to_toml())
        with (self.path / "partition.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["client", "samples", *[f"class_{c}" for c in range(histogram.shape[1])]])
            for n, row in enumerate(histogram.tolist()):
                writer.writerow([n, sum(row), *row])
        write_atomic(
            self.path / "partition.txt", format_histogram(histogram, max_rows=histogram.shape[0]) + "\n"
        )
        lines = [json.dumps(r) + "\n" for history in histories for r in history]
        write_atomic(self.path / "metrics.jsonl", "".join(lines))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        write_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    def finish(
        self, history: list[dict[str, Any]], algorithms: list[str], title: str
    ) -> list[dict[str, Any]]:
        """The finished run's files: metrics.jsonl in its final order, summary.csv, plots; the table."""
        self.write_metrics(history)
        summary = summarize(history, algorithms)
        plots = plot_run(history, algorithms, self.path, title)
        write_summary_csv(summary, self.path / "summary.csv")
        log.info("\n" + format_table(summary))
        log.info(
            f"results in {self.path}: "
            + ", ".join(["metrics.jsonl", "summary.csv", *(p.name for p in plots)])
        )
        return summary


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Progress:
    """One line per round with accuracy and an ETA for the whole run."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rounds_timed = 0
        self.seconds = 0.0

    def __call__(self, record: dict[str, Any]) -> None:
        cfg = self.cfg
        self.rounds_timed += 1
        self.seconds += record["round_time_s"]
        later_algorithms = len(cfg.algorithm) - 1 - cfg.algorithm.index(record["algorithm"])
        remaining = cfg.rounds - record["round"] + cfg.rounds * later_algorithms
        eta = self.seconds / self.rounds_timed * remaining
        div = record.get("divergence_client_relative")
        div_text = f"  div_c {div:.3f}" if div is not None else ""
        log.info(
            f"[{record['algorithm']:>13}] round {record['round']:>3}/{cfg.rounds}  "
            f"acc {record['test_accuracy']:.4f}  test_loss {record['test_loss']:.4f}  "
            f"train_loss {record['train_loss']:.4f}{div_text}  "
            f"{record['round_time_s']:.2f}s  ETA {_clock(eta)}"
        )


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def run(config: Config) -> RunResult:
    """Run every algorithm of ``config`` on one shared setup; see the module docstring for outputs."""
    if (
        config.resume
        and config.threads is None
        and config.out
        and (Path(config.out) / "config.toml").is_file()
    ):
        # continue with the thread count the run started with, so that it repeats bit for bit
        config = config.replace(threads=Config.from_toml(Path(config.out) / "config.toml").threads)
    check_algorithms(config)
    preflight(config)  # what this machine can hold, before anything is loaded or written
    setup = prepare(config)
    cfg = setup.cfg
    run_dir = RunDir(cfg)
    histogram = class_histogram(setup.data.train_y, setup.parts, setup.data.num_classes).cpu()
    run_dir.start(setup, histogram)
    log.info(
        f"splitfed: {cfg.dataset} ({len(setup.data.train_y)} train / {len(setup.data.test_y)} test), "
        f"model {cfg.model} cut at layer {cfg.cut_layer}, {cfg.clients} clients, partition {cfg.partition}"
        + (f" ({cfg.partition_option})" if cfg.partition_option is not None else "")
        + f", τ = {setup.tau()} iterations/round, device {setup.device}; writing {run_dir.path}"
    )
    log.info("client class histogram:\n" + format_histogram(histogram))
    progress = Progress(cfg)
    history: list[dict[str, Any]] = []
    models: dict[str, nn.Module] = {}
    for name in cfg.algorithm:

        def on_round(record: dict[str, Any]) -> None:
            run_dir.append_metrics(record)
            progress(record)

        executor, algo_history, _ = train(name, setup, run_dir.checkpoint(name), on_round)
        history += algo_history
        models[name] = setup.assemble(executor.w_c, executor.w_s)
    title = f"{cfg.dataset}, {cfg.model} cut {cfg.cut_layer}, N={cfg.clients}, {cfg.partition}"
    if cfg.partition_option is not None:
        title += f" {cfg.partition_option}"
    # Canonical order (algorithm, round): a resumed run that extends its rounds appended out of order.
    summary = run_dir.finish(history, list(cfg.algorithm), title)
    return RunResult(cfg, run_dir.path, history, models, summary)
