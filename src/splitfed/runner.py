"""``run(config, model=, data=, loss=, on_round=, progress=)``: check everything, then train each
algorithm on the same setup and record it in the run directory (rundir.py says what that holds).

A run: preflight (what this machine can hold) -> setup (data, partition, model) -> an executor per
algorithm (``executors.train``) -> the record (metrics, checkpoints, models, summary). Under
torch.distributed this is one rank of the job (ranks.py); ``--processes K`` starts the ranks (spawn.py).
"""

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._log import printing
from .algorithms.base import check_knobs
from .config import Config
from .data import class_histogram, format_histogram
from .data.datasets import Augment
from .engine.metrics import LossFn
from .engine.side import State
from .errors import Diverged, SplitfedError, StopAlgorithm
from .executors import train
from .executors.distributed import Group, join, launched, leave, share
from .models import ModelLike
from .preflight import preflight
from .progress import Progress, TensorBoard, scalars
from .ranks import distributing, same_on_every_rank, share_result
from .report import loss_name, run_title
from .results import RunResult, read_metrics
from .rundir import RunDir
from .setup import Setup, prepare

# Importable from here as before (roles.py and the tests import them from their own modules now).
__all__ = ["Progress", "RunDir", "RunResult", "TensorBoard", "check_algorithms", "finish", "run", "scalars"]

log = logging.getLogger("splitfed")


def check_algorithms(cfg: Config) -> None:
    """Every algorithm named exists, before anything is written."""
    check_knobs(cfg)  # resolves every name too


def run(
    config: Config | None = None,
    *,
    model: ModelLike | None = None,
    data: Any = None,
    loss: LossFn | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | None = None,
    transform: Augment | None = None,
) -> RunResult:
    """Run every algorithm of ``config`` (default: ``Config()``) on one shared setup; see rundir.py
    for the files it writes, and docs/api.md for each argument.

    ``model``: an ``nn.Sequential`` (cut at config.cut_layer between its top-level children; trained from
    its own weights), a ``CutModel``, or a builder ``(num_classes, in_shape) -> nn.Sequential`` (built
    under the init seed). ``data``: ``(x_train, y_train[, x_test, y_test])`` tensors, a dict of them, or
    torch Datasets ``train`` / ``(train, test)`` (the training Dataset read at every draw); or data split
    into clients (a list, a dict by client, an object with ``load_partition``); without a test set a fixed
    20% of each class is held out. ``transform(x_batch, generator)``: applied to every training batch on
    its device, drawing from the generator (seeded per draw). ``loss(output, target)``: the batch's mean
    loss (default cross-entropy). ``on_round(record)``: called with each round's record as it is written
    to metrics.jsonl. ``progress``: print the run's progress to stdout (default: when stdout is a terminal
    or in a notebook).
    """
    with printing(progress):
        return _run(config or Config(), model, data, loss, on_round, transform)


def _run(
    config: Config,
    model: ModelLike | None,
    data: Any,
    loss: LossFn | None,
    user_on_round: Callable[[dict[str, Any]], None] | None,
    transform: Augment | None = None,
) -> RunResult:
    setup = prepare(_checked(config, model, data), model, data, loss, transform)
    group = None
    if launched():
        group = join(setup.device)
        same_on_every_rank(setup.cfg)  # the job's first collective: nothing has depended on it yet
    histogram = class_histogram(setup.data.train_y, setup.parts, setup.data.num_classes).cpu()
    run_dir = _open(setup, group, histogram)
    _announce(setup, group, run_dir, histogram)
    histories, models, interrupted = _train_all(setup, group, run_dir, user_on_round)
    result = None
    if run_dir is not None:
        result = finish(setup.cfg, run_dir, histories, models, interrupted, loss_name(setup.loss))
    if group is not None:  # every rank returns rank 0's result, models included
        return share_result(group, result, models, setup.model)
    assert result is not None
    return result


def _checked(config: Config, model: ModelLike | None, data: Any) -> Config:
    """The config to run, checked against this machine before anything is loaded or written."""
    if (
        config.resume
        and config.threads is None
        and config.out
        and (Path(config.out) / "config.toml").is_file()
    ):
        # continue with the thread count the run started with, so that it repeats bit for bit
        config = config.replace(threads=Config.from_toml(Path(config.out) / "config.toml").threads)
    check_algorithms(config)
    # what this machine can hold, before anything is loaded or written (objects are checked by prepare)
    preflight(
        config.replace(
            model="python:" if model is not None else config.model,
            dataset="python:" if data is not None else config.dataset,
        )
    )
    if launched():  # one rank of a torch.distributed job: the clients are shared among the ranks
        config = config.replace(processes=int(os.environ["WORLD_SIZE"]))
        distributing(config)
    elif config.processes > 1:
        raise SplitfedError(
            f"processes = {config.processes}: start the ranks with `splitfed run --processes "
            f"{config.processes} ...` or torchrun --nproc-per-node {config.processes} -m splitfed run ..."
        )
    return config


def _open(setup: Setup, group: Group | None, histogram: torch.Tensor) -> RunDir | None:
    """Rank 0 alone writes the run directory (None on the other ranks); every rank stops if it cannot."""
    error, run_dir = None, None
    if group is None or group.leader:
        try:
            run_dir = RunDir(setup.cfg)
            run_dir.start(setup, histogram)
        except SplitfedError as e:
            error = str(e)
    if group is not None:
        error = share(group, error)
    if error is not None:
        raise SplitfedError(error)
    return run_dir


def _announce(setup: Setup, group: Group | None, run_dir: RunDir | None, histogram: torch.Tensor) -> None:
    cfg = setup.cfg
    log.info(
        f"splitfed: {cfg.dataset} ({len(setup.data.train_y)} train / {len(setup.data.test_y)} test), "
        f"model {cfg.model} cut at layer {cfg.cut_layer}, {cfg.clients} clients, partition {cfg.partition}"
        + (f" ({cfg.partition_option})" if cfg.partition_option is not None else "")
        + f", τ = {setup.tau()} iterations/round, device {setup.device}"
        + (f", {cfg.processes} processes" if group is not None else "")
        + (f"; writing {run_dir.path}" if run_dir is not None else "")
    )
    log.info("client class histogram:\n" + format_histogram(histogram))


class Recording:
    """Where a round goes as it ends: the caller's ``on_round``, then (whatever that did) metrics.jsonl,
    TensorBoard and the progress line; and the models ``model_every`` asks for."""

    def __init__(
        self, setup: Setup, run_dir: RunDir | None, user_on_round: Callable[[dict[str, Any]], None] | None
    ) -> None:
        self.setup, self.run_dir, self.user_on_round = setup, run_dir, user_on_round
        self.progress = Progress(setup.cfg)
        self.tensorboard = TensorBoard(run_dir.path / "tensorboard") if run_dir is not None else None

    def on_round(self, record: dict[str, Any]) -> None:
        assert self.run_dir is not None and self.tensorboard is not None
        try:
            if self.user_on_round is not None:
                self.user_on_round(record)
        except StopAlgorithm:
            record["stopped"] = True
            raise
        finally:  # the round is trained and checkpointed whatever the callback did: it is written
            self.run_dir.append_metrics(record)
            self.tensorboard.add(record)
            self.progress(record)

    def on_weights(self, name: str, rnd: int, w_c: State, w_s: State) -> None:
        every = self.setup.cfg.model_every
        if self.run_dir is not None and every and rnd % every == 0:
            self.run_dir.save_model(name, self.setup.assemble(w_c, w_s), rnd)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _train_all(
    setup: Setup,
    group: Group | None,
    run_dir: RunDir | None,
    user_on_round: Callable[[dict[str, Any]], None] | None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, nn.Module], bool]:
    """Train every algorithm in turn: (histories, final models, whether a Ctrl-C interrupted them)."""
    cfg = setup.cfg
    leader = group is None or group.leader
    recording = Recording(setup, run_dir, user_on_round)
    histories: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, nn.Module] = {}
    # Under torch.distributed the algorithms that spread their clients over the ranks come first; then
    # rank 0 trains the others alone while the other ranks wait for the results.
    spread = distributing(cfg) if group is not None else list(cfg.algorithm)
    alone = [name for name in cfg.algorithm if name not in spread]
    try:
        for name in [*spread, *alone]:
            solo = name in alone
            if solo and not leader:
                continue
            checkpoint = run_dir.checkpoint(name) if run_dir is not None else None
            save = functools.partial(recording.on_weights, name) if leader else None
            executor, histories[name], _ = train(
                name, setup, checkpoint, recording.on_round, None if solo else group, save
            )
            models[name] = setup.assemble(executor.w_c, executor.w_s)
            if run_dir is not None:
                run_dir.save_model(name, models[name])
    except KeyboardInterrupt:
        if group is not None:  # the other ranks cannot be told consistently: stop as before
            raise
        return histories, models, True
    except Diverged as e:
        if run_dir is not None:
            run_dir.mark_diverged(str(e))
        if group is not None and name in spread:
            # Every rank raised it in the same round (rank 0 shared it): they leave the job together, or
            # the rank that exits first can make another abort (SIGABRT) instead of ending on this line.
            leave(group)
        raise
    finally:
        recording.close()
    return histories, models, False


def finish(
    cfg: Config,
    run_dir: RunDir,
    histories: dict[str, list[dict[str, Any]]],
    models: dict[str, nn.Module],
    interrupted: bool,
    loss: str,
) -> RunResult:
    """The run's result and its files. An interrupted run keeps what it trained: its rounds (also those of
    the algorithm it was in, read back from metrics.jsonl), figures and table, and no summary.csv (the
    mark of a finished run), so that --resume continues it."""
    if interrupted:
        history = read_metrics(run_dir.path / "metrics.jsonl", cfg.algorithm)
        trained = [name for name in cfg.algorithm if any(r["algorithm"] == name for r in history)]
        log.warning(
            f"interrupted: kept {len(history)} rounds of {', '.join(trained) or 'no algorithm'} in "
            f"{run_dir.path}; continue with --out {run_dir.path} --resume"
        )
        title = run_title(cfg.to_dict())
        summary = run_dir.finish(history, trained, title, loss, complete=False) if history else []
        return RunResult(cfg, run_dir.path, history, models, summary, interrupted=True)
    # Canonical order (algorithm, round): a resumed run that extends its rounds appended out of order.
    history = [r for name in cfg.algorithm for r in histories[name]]
    summary = run_dir.finish(history, list(cfg.algorithm), run_title(cfg.to_dict()), loss)
    return RunResult(cfg, run_dir.path, history, models, summary)
