"""``splitfed sweep GRID.toml``: the cross product of config fields, one run directory per point.

A grid file is a base config (any Config field at top level) plus one or more ``[[grid]]`` tables whose
values are lists; the sweep is the union over tables of each table's cross product, e.g.

    dataset = "fmnist"
    rounds = 30
    [[grid]]                      # every algorithm at the middle cut
    algorithm = ["minibatch_sfl", "sfl_v2", "fedavg"]
    non_iid_ratio = [0.0, 0.8, 1.0]
    seed = [0, 1, 2]
    [[grid]]                      # MiniBatch-SFL at every cut
    algorithm = ["minibatch_sfl"]
    cut_layer = [1, 2, 3]
    non_iid_ratio = [0.0, 0.8, 1.0]
    seed = [0, 1, 2]

Points are named by every swept field, a table that leaves one out using the base value (so set the base
value, e.g. ``cut_layer = 2``, for runs shared by two tables to coincide); equal points run once. A
name is ``key=value`` joined by ``__``; distinct points always get distinct names: a value whose text
is ambiguous (``a/b`` and ``a_b``, a model_args table) or too long adds ``~`` and a hash of the exact
values.

A run is finished when its files say so completely: summary.csv has one row per algorithm of its
config, each of ``rounds`` rounds, and metrics.jsonl holds rounds x algorithms whole JSON lines, one
per (algorithm, round). Finished runs are skipped; any other run with a config.toml (interrupted, or
with an empty or torn file) resumes from its checkpoints, so rerunning the same command continues a
sweep. A run that diverged (its ``diverged.txt``) was tried: it is not run again, and stays among the
failures. ``--workers K`` runs K points side by side.
"""

import concurrent.futures as futures
import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._limits import check_output_dir, check_threads
from ._log import clock, logging_only_to
from .config import FIELDS, Config, coerce, read_toml
from .errors import SplitfedError
from .preflight import preflight

log = logging.getLogger("splitfed")
INDEX_FIELDS = ["run", "status", "rounds_done", "final_accuracy", "best_accuracy"]


@dataclasses.dataclass
class Point:
    """One run of the sweep: its directory name, the fields it varies, its whole config."""

    name: str
    varied: dict[str, Any]
    config: Config


# Characters a run name shows as they are. "=" (between key and value) and "," (between list items)
# are left out, so that a name splits back into its values; "/" and spaces are left out of file names.
_SAFE = re.compile(r"[A-Za-z0-9._+-]+")
# File systems take 255 bytes a name; this leaves room for the sweep's own suffixes (".log").
_MAX_NAME = 200


def _exact(value: Any) -> str | None:
    """The value's text in a run name when that text is only this value's, else None (lossy)."""
    if isinstance(value, bool | int | float):  # a field holds one type: 1.0 is a float field's 1.0
        return str(value)
    if value is None:
        return "None"  # the string "None" is lossy below, so this stays None's
    if isinstance(value, str):
        return value if _SAFE.fullmatch(value) and value != "None" else None
    if isinstance(value, tuple):
        items = [_exact(v) for v in value]
        return ",".join(items) if value and None not in items else None  # type: ignore[arg-type]
    return None  # a dict: 1, "1" and 1.0 read alike


def _run_name(varied: dict[str, Any]) -> str:
    """The run directory's name: ``key=value`` for every varied field, joined by ``__``.

    Distinct values give distinct names. A value whose text would be ambiguous ("a/b" and "a_b", 1
    and "1" in model_args, the string "None") is shown readably with its unsafe characters as "_", and
    the name ends in "~" and a hash of all the exact values; "~" appears in no exact name. So does a
    name longer than a file system allows, cut short.
    """
    parts, lossy = [], False
    for key, value in varied.items():
        text = _exact(value)
        if text is None:
            lossy = True
            if isinstance(value, dict):
                value = ",".join(f"{k}:{v}" for k, v in value.items())
            elif isinstance(value, tuple):
                value = ",".join(map(str, value))
            text = re.sub(r"[^A-Za-z0-9._+,-]+", "_", str(value))[:40]
        parts.append(f"{key}={text}")
    name = "__".join(parts) or "base"
    if lossy or len(name.encode()) > _MAX_NAME:
        exact = repr([(k, type(v).__name__, v) for k, v in varied.items()])
        digest = hashlib.sha256(exact.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = name[: _MAX_NAME - 13] + "~" + digest
    return name


def expand(grid_file: str | Path, out_dir: str | Path) -> list[Point]:
    """The grid file's points, each a validated Config whose ``out`` is its run directory."""
    raw = read_toml(grid_file)
    tables = raw.pop("grid", [])
    if isinstance(tables, dict):
        tables = [tables]
    if not tables:
        raise SplitfedError(f"{grid_file} has no [[grid]] table: nothing to sweep")
    for key in ("out", "resume"):
        if key in raw:
            raise SplitfedError(f"{key} is set by the sweep for each run; remove it from {grid_file}")
    base = Config.from_dict(raw, source=str(grid_file))
    varied_keys: list[str] = []
    for t in tables:
        varied_keys += [k for k in t if k not in varied_keys]
    points: dict[str, Point] = {}
    for t in tables:
        for key, values in t.items():
            if key not in FIELDS or key in ("out", "resume"):
                raise SplitfedError(f"[[grid]] in {grid_file}: {key!r} is not a config field to sweep")
            if not isinstance(values, list) or not values:
                raise SplitfedError(f"[[grid]] in {grid_file}: {key} must be a non-empty list of values")
        keys = list(t)
        for combo in itertools.product(*(t[k] for k in keys)):
            where = f"in [[grid]] of {grid_file}"
            values = {k: coerce(FIELDS[k], v, f"{k} {where}") for k, v in zip(keys, combo, strict=True)}
            # Named by every swept field (the base value where this table leaves one out), so that the
            # same run reached from two tables is one point.
            varied = {k: values.get(k, getattr(base, k)) for k in varied_keys}
            name = _run_name(varied)
            if name not in points:
                config = base.replace(**values, out=str(Path(out_dir) / name))
                points[name] = Point(name, varied, config)
    return list(points.values())


def _status(point: Point) -> tuple[str, int]:
    """("done" | "diverged" | "partial" | "pending", rounds it has written, over all its algorithms)."""
    run_dir = Path(point.config.out or "")
    total = point.config.rounds * len(point.config.algorithm)
    if _finished(run_dir, point.config):
        return "done", total
    metrics = run_dir / "metrics.jsonl"
    done = metrics.read_bytes().count(b"\n") if metrics.is_file() else 0
    if (run_dir / "diverged.txt").is_file():  # tried: it would diverge again
        return "diverged", total
    return ("partial" if (run_dir / "config.toml").is_file() else "pending"), min(done, total)


_FINISHED: dict[Path, tuple[tuple[int, ...], bool]] = {}  # run dir -> (its files' stat, finished)


def _finished(run_dir: Path, config: Config) -> bool:
    """Whether the run's files say it finished, completely (see the module docstring).

    Cached on the two files' size and time: the sweep asks every few seconds, for every run.
    """
    summary, metrics = run_dir / "summary.csv", run_dir / "metrics.jsonl"
    try:
        stats = (summary.stat(), metrics.stat())
    except OSError:
        return False
    key = tuple(x for st in stats for x in (st.st_size, st.st_mtime_ns))
    cached = _FINISHED.get(run_dir)
    if cached is None or cached[0] != key:
        cached = _FINISHED[run_dir] = (key, _files_complete(summary, metrics, config))
    return cached[1]


def _files_complete(summary: Path, metrics: Path, config: Config) -> bool:
    rounds, algorithms = config.rounds, config.algorithm
    try:
        with summary.open(newline="") as f:
            rows = list(csv.DictReader(f))
        lines = metrics.read_text().splitlines(keepends=True)
        records = [json.loads(line) for line in lines]
        seen = {(r["algorithm"], r["round"]) for r in records}
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, KeyError, TypeError):
        return False  # unreadable, torn or foreign: not finished, so the run resumes and rewrites them
    return (
        sorted(r.get("algorithm") or "" for r in rows) == sorted(algorithms)
        and all(r.get("rounds") == str(rounds) for r in rows)
        and len(records) == rounds * len(algorithms)
        and all(line.endswith("\n") for line in lines)
        and seen == {(a, n) for a in algorithms for n in range(1, rounds + 1)}
    )


def _exit_with(parent: int) -> None:
    """Worker initializer: leave when the sweep that started this worker is gone (killed, even with
    SIGKILL), instead of training on as an orphan; its run resumes from its checkpoint next time."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Let SIGINT stop the sweep even where it started with SIGINT ignored: a shell script's ``cmd &``
    and some schedulers start jobs so, and Python then never raises KeyboardInterrupt. Restored after."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) != signal.SIG_IGN
    ):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class Interrupted(SplitfedError):
    exit_code = 130  # as a shell reports a command ended by Ctrl-C


def _stop(pool: futures.ProcessPoolExecutor) -> None:
    """Stop at once: drop the queued runs and end the running ones (each resumes from its checkpoint).
    Leaving the pool's ``with`` block instead would wait for every queued run to finish."""
    # the pool's own workers only (sweep() may run in a process with children of its own); there is no
    # public accessor before Python 3.14, and shutdown() forgets them, so they are taken first
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(timeout=10)


def _run_point(config: Config, threads: int, log_file: Path) -> str:
    """Worker: run (or resume) one point, its progress into log_file. Returns an error message or ''."""

    from .runner import run

    run_dir = Path(config.out or ".")
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(message)s"))
    resume = (run_dir / "config.toml").is_file()

    def to_log(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
        # a worker's warnings belong to its run: in its log, not interleaved with the sweep's progress
        handler.stream.write(warnings.formatwarning(message, category, filename, lineno))

    try:
        with logging_only_to(handler, logging.INFO), warnings.catch_warnings():
            warnings.showwarning = to_log
            # a resumed run keeps the thread count it started with (its config.toml); a new one its share
            result = run(config.replace(resume=resume, threads=None if resume else threads))
        if result.interrupted:  # run() kept what it trained; the sweep stops as on any Ctrl-C
            raise KeyboardInterrupt
        return ""
    except SplitfedError as e:
        return str(e)
    finally:
        handler.close()


def write_index(points: list[Point], out_dir: Path) -> list[dict[str, Any]]:
    """index.csv: one row per point with its status, varied fields and final accuracy."""
    rows = []
    varied_keys = list(dict.fromkeys(k for p in points for k in p.varied))
    for p in points:
        status, done = _status(p)
        row: dict[str, Any] = {"run": p.name, "status": status, "rounds_done": done}
        row |= {k: _cell(p.varied.get(k, getattr(p.config, k))) for k in varied_keys}
        if status == "done":  # so summary.csv has a row for every algorithm: the first one's
            with (Path(p.config.out or "") / "summary.csv").open(newline="") as f:
                first = next(r for r in csv.DictReader(f) if r["algorithm"] == p.config.algorithm[0])
            row |= {"final_accuracy": first["final_accuracy"], "best_accuracy": first["best_accuracy"]}
        rows.append(row)
    with (out_dir / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_FIELDS[:3] + varied_keys + INDEX_FIELDS[3:], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def sweep(grid_file: str | Path, out_dir: str | Path | None = None, workers: int = 1) -> list[dict[str, Any]]:
    """Run every point of ``grid_file`` not yet finished; returns the index rows."""
    if workers < 1:
        raise SplitfedError(f"--workers must be a positive integer, got {workers}")
    check_threads(workers, "--workers")
    grid_file = Path(grid_file)
    out = Path(out_dir) if out_dir else Path("runs") / grid_file.stem
    check_output_dir(out)
    points = expand(grid_file, out)
    for p in points:  # every run checked against this machine now, not hours into the sweep
        preflight(p.config, check_out=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.toml").write_text(grid_file.read_text())
    total_rounds = sum(p.config.rounds * len(p.config.algorithm) for p in points)

    def rounds_done() -> int:
        return sum(_status(p)[1] for p in points)

    status = {p.name: _status(p)[0] for p in points}
    todo = [p for p in points if status[p.name] not in ("done", "diverged")]
    # a run that diverged is tried: its line stays among the failures, it is not run again
    failures = {
        p.name: (Path(p.config.out or "") / "diverged.txt").read_text().strip()
        for p in points
        if status[p.name] == "diverged"
    }
    log.info(
        f"sweep {grid_file}: {len(points)} runs in {out}, {len(points) - len(todo) - len(failures)} already "
        f"done{f', {len(failures)} diverged (not run again)' if failures else ''}; {workers} worker(s)"
    )
    threads = max(1, (os.cpu_count() or 1) // workers)
    start_rounds, started = rounds_done(), time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited torch state
    with (
        _interruptible(),
        futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_exit_with, initargs=(os.getpid(),)
        ) as pool,
    ):
        (out / "logs").mkdir(exist_ok=True)
        pending = {
            pool.submit(_run_point, p.config, threads, out / "logs" / f"{p.name}.log"): p for p in todo
        }
        last_report = 0.0
        while pending:
            try:
                finished, _ = futures.wait(pending, timeout=5, return_when=futures.FIRST_COMPLETED)
            except KeyboardInterrupt:
                _stop(pool)
                raise Interrupted(
                    f"sweep interrupted with {len(points) - len(pending) - len(failures)} of {len(points)} "
                    "runs done; the same command continues it (finished runs are kept, interrupted ones "
                    "resume from their last round)"
                ) from None
            for fut in finished:
                point = pending.pop(fut)
                error = fut.result()
                if error:
                    failures[point.name] = error
                    log.info(f"  {point.name}: FAILED: {error}")
            now = time.perf_counter()
            if finished or now - last_report > 60:
                last_report = now
                done = rounds_done()
                rate = (done - start_rounds) / (now - started) if done > start_rounds else 0.0
                eta = clock((total_rounds - done) / rate) if rate else "?"
                runs_done = len(points) - len(pending) - len(failures)
                log.info(
                    f"sweep: {runs_done}/{len(points)} runs done, {done}/{total_rounds} rounds "
                    f"({100 * done / max(total_rounds, 1):.0f}%), {len(pending)} to go, ETA {eta}"
                )
    rows = write_index(points, out)
    (out / "failures.json").write_text(json.dumps(failures, indent=1))
    if failures:
        raise SplitfedError(f"{len(failures)} of {len(points)} runs failed; see {out / 'failures.json'}")
    log.info(f"sweep done: {out / 'index.csv'}; next: splitfed report {out}")
    return rows
