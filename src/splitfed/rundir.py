"""The run directory: created for a new run or checked and continued for a resumed one, written only
whole (``write_atomic``), with its checkpoints, models, metrics and, at the end, summary and figures.

It holds: config.toml (resolved), data.json (the inputs' shape and classes), provenance.json (what
produced it, per session), partition.csv/.txt, checkpoints/<algorithm>.pt (every round), metrics.jsonl
(one object per round per algorithm), models/<algorithm>.pt (each final model's state_dict; per round too
with model_every), tensorboard/<algorithm>/ (when tensorboard is installed), and, once every algorithm
has finished, summary.csv, accuracy, accuracy_vs_bytes, accuracy_vs_client_flops and divergence (.png,
.svg; unless figures is off). A run without summary.csv is unfinished: ``--resume`` it; one with
diverged.txt turned NaN.
"""

import csv
import datetime
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import provenance
from ._limits import check_output_dir
from .algorithms import create
from .config import Config
from .data import class_histogram, format_histogram
from .engine.checkpoint import RESUMABLE_CHANGES, check_regular_file, check_resumable, load_run_checkpoint
from .errors import SplitfedError
from .executors.parts import build_parts
from .export import save_state_dict
from .report import format_table, loss_name, plot_run, summarize, write_summary_csv
from .setup import Setup

log = logging.getLogger("splitfed")


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
        for name in RUN_FILES:  # what is read back or replaced by name: a planted pipe would hang
            check_regular_file(self.path / name)
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

    def model_file(self, algorithm: str, rnd: int | None = None) -> Path:
        """models/<algorithm>.pt (the final model), or models/<algorithm>/round-<R>.pt."""
        models = self.path / "models"
        return models / f"{algorithm}.pt" if rnd is None else models / algorithm / f"round-{rnd}.pt"

    def save_model(self, algorithm: str, model: nn.Module, rnd: int | None = None) -> Path:
        """The assembled model's state_dict on the CPU, as plain ``torch.save(model.state_dict())``:
        ``model.load_state_dict(torch.load(path))`` restores it into a model built the same way."""
        return save_state_dict(model, self.model_file(algorithm, rnd))

    def start(self, setup: Setup, histogram: torch.Tensor | None = None) -> None:
        """Create the run's files, or check and continue them (``histogram``: the partition's class
        counts, computed here unless the caller has them)."""
        if histogram is None:
            histogram = class_histogram(setup.data.train_y, setup.parts, setup.data.num_classes).cpu()
        # Every checkpoint is checked whole (digest, config, structure) before anything is written: a
        # refused resume leaves the run as it was. metrics.jsonl is rebuilt from their histories, which
        # are written before their line is appended: a kill between the two never loses or doubles a round.
        histories = self._saved_histories(setup)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "summary.csv").unlink(missing_ok=True)  # a resumed run is unfinished until it ends
        write_atomic(self.path / "config.toml", self.cfg.to_toml())
        write_atomic(self.path / "data.json", json.dumps(data_info(setup)) + "\n")
        where = self.path / "provenance.json"
        write_atomic(where, provenance.recorded(where, setup.device, self.cfg.deterministic))
        write_atomic(self.path / "partition.csv", partition_csv(histogram))
        write_atomic(
            self.path / "partition.txt", format_histogram(histogram, max_rows=histogram.shape[0]) + "\n"
        )
        self.write_metrics([r for history in histories for r in history])

    def _saved_histories(self, setup: Setup) -> list[list[dict[str, Any]]]:
        """The rounds each algorithm's checkpoint holds (up to ``rounds``), each checkpoint checked whole."""
        histories = []
        for name in self.cfg.algorithm:
            if self.checkpoint(name).exists():
                parts = {part: spec.init for part, spec in build_parts(create(self.cfg, name), setup).items()}
                saved = load_run_checkpoint(self.checkpoint(name), name, setup, parts)
                histories.append(saved["history"][: self.cfg.rounds])
        return histories

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        write_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    def mark_diverged(self, message: str) -> None:
        """Say in the directory that the run diverged (a sweep then does not run it again)."""
        write_atomic(self.path / "diverged.txt", message + "\n")

    def finish(
        self,
        history: list[dict[str, Any]],
        algorithms: list[str],
        title: str,
        loss: str,
        complete: bool = True,
    ) -> list[dict[str, Any]]:
        """The run's files: metrics.jsonl in its final order, figures (unless ``figures`` is off), and
        summary.csv once it is ``complete`` (its absence marks a run to resume); the table."""
        self.write_metrics(history)
        summary = summarize(history, algorithms)
        plots = plot_run(history, algorithms, self.path, title, loss) if self.cfg.figures else []
        files = ["metrics.jsonl", *(["summary.csv"] if complete else []), *(p.name for p in plots)]
        if complete:
            write_summary_csv(summary, self.path / "summary.csv")
        log.info("\n" + format_table(summary))
        log.info(f"results in {self.path}: " + ", ".join(files))
        return summary


RUN_FILES = (
    "config.toml",
    "data.json",
    "metrics.jsonl",
    "partition.csv",
    "partition.txt",
    "summary.csv",
    "diverged.txt",
    "provenance.json",
)


def write_atomic(path: Path, text: str) -> None:
    """``path`` replaced whole by ``text``: never half-written, and never written through a link planted
    at ``path`` or at its temporary name (both are replaced, not followed)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.write_text(text)
    os.replace(tmp, path)


def data_info(setup: Setup) -> dict[str, Any]:
    """What rebuilding the model needs besides config.toml (splitfed export), without the data; and the
    loss trained on, which config.toml cannot hold (a Python object), for the figures' loss axis."""
    data = setup.data
    return {
        "in_shape": list(data.in_shape),
        "num_classes": data.num_classes,
        "input_dtype": str(data.train_x.dtype).removeprefix("torch."),
        "train_samples": len(data.train_y),
        "test_samples": len(data.test_y),
        "loss": loss_name(setup.loss),
    }


def partition_csv(histogram: torch.Tensor) -> str:
    """partition.csv: a row per client, its samples and its count of each class."""
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["client", "samples", *[f"class_{c}" for c in range(histogram.shape[1])]])
    for n, row in enumerate(histogram.tolist()):
        writer.writerow([n, sum(row), *row])
    return table.getvalue()
