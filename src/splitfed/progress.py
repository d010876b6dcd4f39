"""What a run says about each round as it ends: a progress line (accuracy, loss, an ETA for the whole run)
and TensorBoard scalars."""

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._log import clock
from .config import Config

log = logging.getLogger("splitfed")


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
        acc_text = (  # rounds between evaluations (eval_every) have none
            f"acc {record['test_accuracy']:.4f}  test_loss {record['test_loss']:.4f}  "
            if "test_accuracy" in record
            else ""
        )
        stopped = "  stopped by on_round" if record.get("stopped") else ""
        log.info(
            f"[{record['algorithm']:>13}] round {record['round']:>3}/{cfg.rounds}  {acc_text}"
            f"train_loss {record['train_loss']:.4f}{div_text}  "
            f"{record['round_time_s']:.2f}s  ETA {clock(eta)}{stopped}"
        )


class TensorBoard:
    """One scalar per numeric metric per round (dicts as ``bytes/smashed``; per-client and per-class
    lists stay in metrics.jsonl), under RUN/tensorboard/<algorithm>/, when the tensorboard package is
    installed (``pip install 'splitfed[tensorboard]'``); nothing otherwise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writers: dict[str, Any] = {}
        self.enabled = importlib.util.find_spec("tensorboard") is not None

    def add(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        name = record["algorithm"]
        if name not in self.writers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # installed but broken (e.g. a protobuf it cannot use): say so, go on
                log.warning(f"tensorboard is installed but cannot be imported ({e}); no TensorBoard scalars")
                self.enabled = False
                return
            self.writers[name] = SummaryWriter(log_dir=str(self.path / name))
        writer = self.writers[name]
        for key, value in scalars(record):
            writer.add_scalar(key, value, record["round"])
        writer.flush()  # rounds take seconds: a TensorBoard open beside the run sees each as it ends

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """A round record's numeric metrics as (tag, value); a dict of numbers gives ``key/entry`` tags."""
    for key, value in record.items():
        if key in ("algorithm", "round"):
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    yield f"{key}/{sub}", float(v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield key, float(value)
