"""``splitfed sweep GRID.toml``: the cross product of config fields, one run per point, kept as tables.

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

A point is named by its run id (``analysis.ids.run_id``: a digest of the settings that decide its
numbers), so the same run reached from two tables is one point, and points that differ only in where or
how they execute (``config.MACHINE_FIELDS``) are refused: they are one run.

The sweep directory holds the study's tables (runs.csv, metrics.csv.gz, partitions.csv: see
``analysis.tables``) and grid.toml, and, as working state, a directory per run named by its id. After each
run that finished or diverged, its rows go into the tables (each file replaced whole). A point whose id the
tables hold as finished or diverged is not run again, even without its directory: a grid committed as
tables resumes on another machine.

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
import itertools
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._limits import check_output_dir, check_threads
from ._log import clock, logging_only_to, message_handler
from .analysis import tables
from .analysis.ids import run_id
from .config import MACHINE_FIELDS, Config, coerce, field_of, read_toml
from .errors import SplitfedError
from .preflight import preflight
from .sections import LEGACY, by_path

log = logging.getLogger("splitfed")
INDEX_FIELDS = ["run", "status", "rounds_done", "final_accuracy", "best_accuracy"]


@dataclasses.dataclass
class Point:
    """One run of the sweep: its run id (its directory's name), the fields it varies, its whole config."""

    name: str
    varied: dict[str, Any]
    config: Config


def expand(grid_file: str | Path, out_dir: str | Path) -> list[Point]:
    """The grid file's points, each a validated Config whose ``out`` is its run directory."""
    raw = read_toml(grid_file)
    grids = raw.pop("grid", [])
    if isinstance(grids, dict):
        grids = [grids]
    grids = [by_path(t) for t in grids]
    if not grids:
        raise SplitfedError(f"{grid_file} has no [[grid]] table: nothing to sweep")
    for key in ("out", "resume"):
        if key in raw:
            raise SplitfedError(f"{key} is set by the sweep for each run; remove it from {grid_file}")
    base = Config.from_dict(raw, source=str(grid_file))
    varied_keys: list[str] = []
    for t in grids:
        varied_keys += [k for k in t if k not in varied_keys]
    points: dict[str, Point] = {}
    for t in grids:
        for key, values in t.items():
            if field_of(key) is None or key in ("out", "resume"):
                raise SplitfedError(f"[[grid]] in {grid_file}: {key!r} is not a config field to sweep")
            if not isinstance(values, list) or not values:
                raise SplitfedError(f"[[grid]] in {grid_file}: {key} must be a non-empty list of values")
        keys = list(t)
        for combo in itertools.product(*(t[k] for k in keys)):
            where = f"in [[grid]] of {grid_file}"
            values = {k: coerce(field_of(k), v, f"{k} {where}") for k, v in zip(keys, combo, strict=True)}
            varied = {k: values.get(k, base.get(LEGACY.get(k, k))) for k in varied_keys}
            config = base.replace(**values)
            name = run_id(config)
            seen = points[name].config.replace(out=None) if name in points else config
            if seen != config:
                machine = [k for k in MACHINE_FIELDS if getattr(config, k) != getattr(seen, k)]
                raise SplitfedError(
                    f"[[grid]] in {grid_file}: points that differ only in {', '.join(sorted(machine))} "
                    f"(where or how a run executes, not what it computes) are one run ({name}); sweep them "
                    "apart"
                )
            points.setdefault(name, Point(name, varied, config.replace(out=str(Path(out_dir) / name))))
    return list(points.values())


def _status(point: Point, tabled: dict[str, str] | None = None) -> tuple[str, int]:
    """("done" | "diverged" | "partial" | "pending", rounds it has written, over all its algorithms).
    ``tabled``: the status of each run in the study's tables, which a run's directory need not be beside."""
    run_dir = Path(point.config.out or "")
    total = point.config.rounds * len(point.config.algorithm)
    held = (tabled or {}).get(point.name)
    if held in ("finished", "diverged"):
        return ("done" if held == "finished" else "diverged"), total
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
    handler = message_handler(log_file)  # a logging.FileHandler: its stream is the log file
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


def write_index(
    points: list[Point], out_dir: Path, tabled: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """index.csv: one row per point with its status, varied fields and final accuracy (where its run's
    directory is here: a run known from the tables alone has its numbers in metrics.csv.gz)."""
    rows = []
    varied_keys = list(dict.fromkeys(k for p in points for k in p.varied))
    for p in points:
        status, done = _status(p, tabled)
        row: dict[str, Any] = {"run": p.name, "status": status, "rounds_done": done}
        row |= {k: _cell(p.varied[k] if k in p.varied else p.config.get(k)) for k in varied_keys}
        summary = Path(p.config.out or "") / "summary.csv"
        if status == "done" and summary.is_file():  # a row for every algorithm: the first one's
            with summary.open(newline="") as f:
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


def _tabled(out: Path) -> dict[str, str]:
    """Each run's status in the study's tables (none yet: empty)."""
    return {r["run"]: r["status"] for r in tables.read_runs(out)} if tables.has_tables(out) else {}


def _record(out: Path, points: list[Point], tabled: dict[str, str], notes: dict[str, str]) -> None:
    """Put the points whose directories finished or diverged (or failed, with ``notes``' error) and that
    the tables do not hold so into the tables; ``tabled`` follows."""
    packed = []
    for p in points:
        run_dir = Path(p.config.out or "")
        status = {"done": "finished", "diverged": "diverged"}.get(_status(p)[0])
        if status is None and p.name in notes and (run_dir / "config.toml").is_file():
            status = "failed"
        if status is None or tabled.get(p.name) == status:
            continue
        note = (run_dir / "diverged.txt").read_text().strip() if status == "diverged" else ""
        try:
            packed.append(tables.pack_run(run_dir, status, notes.get(p.name, note), rid=p.name))
        except SplitfedError:
            if status != "failed":
                raise
            continue  # a failed run whose files are torn: its error stays in failures.json
        tabled[p.name] = status
    if packed:
        tables.update(out, packed)


def _prepare(grid_file: Path, out: Path) -> list[Point]:
    """The grid's points, each checked against this machine now (not hours into the sweep); the sweep
    directory with the grid file beside its tables."""
    check_output_dir(out)
    points = expand(grid_file, out)
    for p in points:
        preflight(p.config, check_out=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.toml").write_text(grid_file.read_text())
    return points


def sweep(grid_file: str | Path, out_dir: str | Path | None = None, workers: int = 1) -> list[dict[str, Any]]:
    """Run every point of ``grid_file`` not yet finished; returns the index rows."""
    if workers < 1:
        raise SplitfedError(f"--workers must be a positive integer, got {workers}")
    check_threads(workers, "--workers")
    grid_file = Path(grid_file)
    out = Path(out_dir) if out_dir else Path("runs") / grid_file.stem
    points = _prepare(grid_file, out)
    tabled = _tabled(out)
    _record(out, points, tabled, {})  # runs finished here before the tables had them
    status = {p.name: _status(p, tabled)[0] for p in points}
    todo = [p for p in points if status[p.name] not in ("done", "diverged")]
    # a run that diverged is tried: its line stays among the failures, it is not run again
    notes = {r["run"]: r["note"] for r in tables.read_runs(out)} if tabled else {}
    failures = {p.name: notes.get(p.name, "diverged") for p in points if status[p.name] == "diverged"}
    log.info(
        f"sweep {grid_file}: {len(points)} runs in {out}, {len(points) - len(todo) - len(failures)} already "
        f"done{f', {len(failures)} diverged (not run again)' if failures else ''}; {workers} worker(s)"
    )
    _run_all(points, todo, out, workers, tabled, failures)
    rows = write_index(points, out, tabled)
    _record(out, points, tabled, failures)
    (out / "failures.json").write_text(json.dumps(failures, indent=1))
    if failures:
        raise SplitfedError(f"{len(failures)} of {len(points)} runs failed; see {out / 'failures.json'}")
    log.info(f"sweep done: {out / 'runs.csv'}; next: splitfed report {out}")
    return rows


def _run_all(
    points: list[Point],
    todo: list[Point],
    out: Path,
    workers: int,
    tabled: dict[str, str],
    failures: dict[str, str],
) -> None:
    """Run ``todo`` on ``workers`` processes, each finished run into the tables as it ends; progress
    every minute and at each run's end."""
    total_rounds = sum(p.config.rounds * len(p.config.algorithm) for p in points)

    def rounds_done() -> int:
        return sum(_status(p, tabled)[1] for p in points)

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
                if error := fut.result():
                    failures[point.name] = error
                    log.info(f"  {point.name}: FAILED: {error}")
                _record(out, [point], tabled, {})
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
