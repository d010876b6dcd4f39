"""``run(config, model=, data=, loss=, on_round=, progress=)``: check everything, then train each
algorithm on the same setup and write the run directory.

A run directory holds: config.toml (resolved), data.json (the inputs' shape and classes), provenance.json
(what produced it, per session), partition.csv/.txt, checkpoints/<algorithm>.pt (every round),
metrics.jsonl (one object per round per algorithm), models/<algorithm>.pt (each final model's
state_dict; per round too with model_every), tensorboard/<algorithm>/ (when tensorboard is installed),
and, once every algorithm has finished, summary.csv, accuracy, accuracy_vs_bytes,
accuracy_vs_client_flops and divergence (.png, .svg; unless figures is off). A run without summary.csv
is unfinished: ``--resume`` it; one with diverged.txt turned NaN.
"""

import contextlib
import copy
import csv
import dataclasses
import datetime
import functools
import importlib.util
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import provenance
from ._limits import check_output_dir
from ._log import clock
from .algorithms import create
from .algorithms.base import check_knobs
from .config import Config
from .data import class_histogram, format_histogram
from .data.datasets import Augment
from .engine.checkpoint import RESUMABLE_CHANGES, check_regular_file, check_resumable, load_run_checkpoint
from .engine.metrics import LossFn
from .engine.side import State
from .errors import Diverged, SplitfedError, StopAlgorithm
from .executors import train
from .executors.distributed import check_distributable, join, launched, leave, share
from .executors.parts import build_parts
from .export import save_state_dict
from .models import ModelLike
from .preflight import preflight
from .report import format_table, loss_name, plot_run, run_title, summarize, write_summary_csv
from .results import RunResult, read_metrics
from .setup import Setup, prepare

log = logging.getLogger("splitfed")


def check_algorithms(cfg: Config) -> None:
    """Every algorithm named exists, before anything is written."""
    check_knobs(cfg)  # resolves every name too


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
        histories = []
        for name in self.cfg.algorithm:
            if self.checkpoint(name).exists():
                parts = {part: spec.init for part, spec in build_parts(create(self.cfg, name), setup).items()}
                saved = load_run_checkpoint(self.checkpoint(name), name, setup, parts)
                histories.append(saved["history"][: self.cfg.rounds])
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "summary.csv").unlink(missing_ok=True)  # a resumed run is unfinished until it ends
        write_atomic(self.path / "config.toml", self.cfg.to_toml())
        # What rebuilding the model needs besides config.toml (splitfed export), without the data; and the
        # loss trained on, which config.toml cannot hold (a Python object), for the figures' loss axis.
        data = setup.data
        info = {
            "in_shape": list(data.in_shape),
            "num_classes": data.num_classes,
            "input_dtype": str(data.train_x.dtype).removeprefix("torch."),
            "train_samples": len(data.train_y),
            "test_samples": len(data.test_y),
            "loss": loss_name(setup.loss),
        }
        write_atomic(self.path / "data.json", json.dumps(info) + "\n")
        where = self.path / "provenance.json"
        write_atomic(where, provenance.recorded(where, setup.device, self.cfg.deterministic))
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        writer.writerow(["client", "samples", *[f"class_{c}" for c in range(histogram.shape[1])]])
        for n, row in enumerate(histogram.tolist()):
            writer.writerow([n, sum(row), *row])
        write_atomic(self.path / "partition.csv", table.getvalue())
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


def interactive() -> bool:
    """Whether a person is likely watching: stdout is a terminal, or this runs in a Jupyter kernel."""
    if getattr(sys.stdout, "isatty", lambda: False)():  # some IDEs' replacements have no isatty
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


@contextlib.contextmanager
def printing(progress: bool | None) -> Iterator[None]:
    """While a ``run`` lasts: with ``progress`` on (None: ``interactive()``), the "splitfed" logger's
    INFO lines (setup, a line per round, the table) reach stdout, through the logging configuration if
    there is one, else a handler of its own; off, logging is left as configured (by default: silent)."""
    if not (interactive() if progress is None else progress):
        yield
        return
    handler = None
    if not log.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    level = log.level
    if not log.isEnabledFor(logging.INFO):
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.setLevel(level)
        if handler is not None:
            log.removeHandler(handler)


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
    """Run every algorithm of ``config`` (default: ``Config()``) on one shared setup; see the module
    docstring for the files it writes, and docs/api.md for each argument.

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
    group = None
    if launched():  # one rank of a torch.distributed job: the clients are shared among the ranks
        config = config.replace(processes=int(os.environ["WORLD_SIZE"]))
        distributing(config)
    elif config.processes > 1:
        raise SplitfedError(
            f"processes = {config.processes}: start the ranks with `splitfed run --processes "
            f"{config.processes} ...` or torchrun --nproc-per-node {config.processes} -m splitfed run ..."
        )
    setup = prepare(config, model, data, loss, transform)
    if launched():
        group = join(setup.device)
        same_on_every_rank(setup.cfg)  # the job's first collective: nothing has depended on it yet
    cfg = setup.cfg
    leader = group is None or group.leader
    histogram = class_histogram(setup.data.train_y, setup.parts, setup.data.num_classes).cpu()
    error, run_dir = None, None
    if leader:  # rank 0 alone writes the run directory; every rank stops if it cannot
        try:
            run_dir = RunDir(cfg)
            run_dir.start(setup, histogram)
        except SplitfedError as e:
            error = str(e)
    if group is not None:
        error = share(group, error)
    if error is not None:
        raise SplitfedError(error)
    log.info(
        f"splitfed: {cfg.dataset} ({len(setup.data.train_y)} train / {len(setup.data.test_y)} test), "
        f"model {cfg.model} cut at layer {cfg.cut_layer}, {cfg.clients} clients, partition {cfg.partition}"
        + (f" ({cfg.partition_option})" if cfg.partition_option is not None else "")
        + f", τ = {setup.tau()} iterations/round, device {setup.device}"
        + (f", {cfg.processes} processes" if group is not None else "")
        + (f"; writing {run_dir.path}" if run_dir is not None else "")
    )
    log.info("client class histogram:\n" + format_histogram(histogram))
    progress = Progress(cfg)
    histories: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, nn.Module] = {}
    tensorboard = TensorBoard(run_dir.path / "tensorboard") if run_dir is not None else None

    def on_round(record: dict[str, Any]) -> None:
        assert run_dir is not None and tensorboard is not None
        try:
            if user_on_round is not None:
                user_on_round(record)
        except StopAlgorithm:
            record["stopped"] = True
            raise
        finally:  # the round is trained and checkpointed whatever the callback did: it is written
            run_dir.append_metrics(record)
            tensorboard.add(record)
            progress(record)

    def on_weights(name: str, rnd: int, w_c: State, w_s: State) -> None:
        if run_dir is not None and cfg.model_every and rnd % cfg.model_every == 0:
            run_dir.save_model(name, setup.assemble(w_c, w_s), rnd)

    # Under torch.distributed the algorithms that spread their clients over the ranks come first; then
    # rank 0 trains the others alone while the other ranks wait for the results.
    spread = distributing(cfg) if group is not None else list(cfg.algorithm)
    alone = [name for name in cfg.algorithm if name not in spread]
    interrupted = False
    try:
        for name in [*spread, *alone]:
            solo = name in alone
            if solo and not leader:
                continue
            checkpoint = run_dir.checkpoint(name) if run_dir is not None else None
            save = functools.partial(on_weights, name) if leader else None
            executor, histories[name], _ = train(
                name, setup, checkpoint, on_round, None if solo else group, save
            )
            models[name] = setup.assemble(executor.w_c, executor.w_s)
            if run_dir is not None:
                run_dir.save_model(name, models[name])
    except KeyboardInterrupt:
        if group is not None:  # the other ranks cannot be told consistently: stop as before
            raise
        interrupted = True
    except Diverged as e:
        if run_dir is not None:
            run_dir.mark_diverged(str(e))
        raise
    finally:
        if tensorboard is not None:
            tensorboard.close()
    result = None
    if run_dir is not None:
        result = finish(cfg, run_dir, histories, models, interrupted, loss_name(setup.loss))
    if group is not None:  # every rank returns rank 0's result, models included
        states = {name: m.state_dict() for name, m in models.items()} if leader else None
        light = dataclasses.replace(result, models={}) if result is not None else None
        shared = share(group, (light, states) if leader else None, patient=True)
        leave(group)
        if not leader:
            result, states = shared
            result.models = {name: _with_state(setup.model, state) for name, state in states.items()}
    assert result is not None
    return result


def distributing(cfg: Config) -> list[str]:
    """The algorithms of ``cfg`` that spread their clients over torch.distributed ranks; the others run
    in rank 0 alone. A job where none spreads is refused (the first one's reason)."""
    spread, reasons = [], []
    for name in cfg.algorithm:
        try:
            check_distributable(create(cfg, name))
            spread.append(name)
        except SplitfedError as e:
            reasons.append(str(e))
    if not spread:
        raise SplitfedError(reasons[0])
    return spread


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out


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


def same_on_every_rank(cfg: Config) -> None:
    """In a torch.distributed job every rank is started with its own command line (torchrun) and calls
    run() with its own objects: a rank with another learning rate or seed would train its clients with it
    and the job would end well with mixed numbers; another client count or rounds, abort or hang deep
    inside gloo. Every rank's resolved config (model and data by their fingerprints) is compared with rank
    0's before any work; every rank refuses alike, naming what differs."""
    import torch.distributed as dist

    configs: list[Any] = [None] * dist.get_world_size()
    # threads may differ (machines with other core counts): it changes the last bits, not the run
    dist.all_gather_object(configs, {k: v for k, v in cfg.to_dict().items() if k != "threads"})
    first = configs[0]
    for rank, other in enumerate(configs):
        differ = [k for k in dict.fromkeys([*first, *other]) if other.get(k) != first.get(k)]
        if {"model", "dataset"} & set(differ):
            raise SplitfedError(
                f"rank {rank} was given another model or data than rank 0 ({other.get('model')}, "
                f"{other.get('dataset')} against {first.get('model')}, {first.get('dataset')}): build them "
                "the same way on every rank (seed a module's construction, or pass a builder)"
            )
        if differ:
            shown = ", ".join(f"{k} = {other.get(k)!r} against {first.get(k)!r}" for k in differ[:3])
            raise SplitfedError(
                f"rank {rank} was started with another config than rank 0 ({shown}"
                f"{', ...' if len(differ) > 3 else ''}): start every rank with the same settings"
            )


def spawn_ranks(config: Config, argv: list[str]) -> int:
    """``splitfed run --processes K``: the same command as K ranks of a torch.distributed job on this
    machine (what ``torchrun --standalone --nproc-per-node K -m splitfed`` does), rank 0 speaking for all.

    Everything a rank would refuse is checked here first, so a mistake is one line, not K. If a rank dies,
    the others are stopped and the exit status says so; ``--resume`` continues from the last checkpoint.
    """
    import contextlib
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    cores = os.cpu_count() or 1
    if config.processes > cores:  # each rank computes all the time: more than the cores only queue
        raise SplitfedError(
            f"processes = {config.processes} ranks on this machine's {cores} CPU cores: start at most "
            f"{cores} here (torchrun spreads more over several machines)"
        )
    check_algorithms(config)
    distributing(config)
    if not config.resume:
        RunDir(config)  # a used --out: refused now, before any rank starts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    k = config.processes
    threads = str(config.threads or max(1, (os.cpu_count() or 1) // k))
    with contextlib.ExitStack() as stack:
        logs = [
            stack.enter_context(tempfile.TemporaryFile()) for _ in range(1, k)
        ]  # ranks 1.. speak on failure
        procs = []
        for rank in range(k):
            env = dict(
                os.environ,
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(k),
                LOCAL_WORLD_SIZE=str(k),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS=threads,
            )
            out = None if rank == 0 else logs[rank - 1]
            cmd = [sys.executable, "-m", "splitfed", *argv]
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out))
        try:
            while True:
                codes = [p.poll() for p in procs]
                failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
                if failed or all(c == 0 for c in codes):
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            failed = [(0, 130)]
        # A mistake every rank finds (a diverged round) ends them all within moments: rank 0's line then
        # speaks for the job, whichever rank exited first.
        grace = time.monotonic() + 5
        while procs[0].poll() is None and time.monotonic() < grace:
            time.sleep(0.1)
        if procs[0].poll() not in (None, 0):
            failed = [(0, procs[0].returncode)]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        if not failed:
            return 0
        rank, code = failed[0]
        if code < 0:  # killed by a signal (the OOM killer, a kill -9): it could not say why itself
            print(
                f"splitfed: error: rank {rank} of {k} was killed by {signal.Signals(-code).name}; the "
                f"other ranks were stopped; continue with --out {config.out or 'DIR'} --resume",
                file=sys.stderr,
            )
            return 128 - code
        if rank != 0:
            logs[rank - 1].seek(0)
            tail = logs[rank - 1].read().decode(errors="replace").strip().splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            print(
                f"splitfed: error: rank {rank} of {k} exited with {code}; continue with --resume",
                file=sys.stderr,
            )
        return code
