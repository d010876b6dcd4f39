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
value, e.g. ``cut_layer = 2``, for runs shared by two tables to coincide); equal points run once.
Finished runs (with summary.csv) are skipped, interrupted ones resume from their checkpoints, so
rerunning the same command continues a sweep. ``--workers K`` runs K points side by side.
"""

import concurrent.futures as futures
import csv
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from ._limits import check_output_dir, check_threads, preflight
from .config import Config, coerce, read_toml
from .errors import SplitfedError

log = logging.getLogger("splitfed")
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
INDEX_FIELDS = ["run", "status", "rounds_done", "final_accuracy", "best_accuracy"]


@dataclasses.dataclass
class Point:
    """One run of the sweep: its directory name, the fields it varies, its whole config."""

    name: str
    varied: dict[str, Any]
    config: Config


def _run_name(varied: dict[str, Any]) -> str:
    parts = []
    for key, value in varied.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        parts.append(f"{key}={text}")
    return "__".join(parts).replace("/", "_") or "base"


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
    """("done" | "partial" | "pending", rounds it has written, over all its algorithms)."""
    run_dir = Path(point.config.out or "")
    if (run_dir / "summary.csv").is_file():
        return "done", point.config.rounds * len(point.config.algorithm)
    metrics = run_dir / "metrics.jsonl"
    done = metrics.read_text().count("\n") if metrics.is_file() else 0
    return ("partial" if (run_dir / "config.toml").is_file() else "pending"), done


def _exit_with(parent: int) -> None:
    """Worker initializer: leave when the sweep that started this worker is gone (killed, even with
    SIGKILL), instead of training on as an orphan; its run resumes from its checkpoint next time."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_point(config: Config, threads: int, log_file: Path) -> str:
    """Worker: run (or resume) one point, its progress into log_file. Returns an error message or ''."""

    from .runner import run

    run_dir = Path(config.out or ".")
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("splitfed")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    resume = (run_dir / "config.toml").is_file()

    def to_log(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
        # a worker's warnings belong to its run: in its log, not interleaved with the sweep's progress
        handler.stream.write(warnings.formatwarning(message, category, filename, lineno))

    try:
        with warnings.catch_warnings():
            warnings.showwarning = to_log
            # a resumed run keeps the thread count it started with (its config.toml); a new one its share
            run(config.replace(resume=resume, threads=None if resume else threads))
        return ""
    except SplitfedError as e:
        return str(e)
    finally:
        logger.removeHandler(handler)
        handler.close()


def write_index(points: list[Point], out_dir: Path) -> list[dict[str, Any]]:
    """index.csv: one row per point with its status, varied fields and final accuracy."""
    rows = []
    varied_keys = list(dict.fromkeys(k for p in points for k in p.varied))
    for p in points:
        status, done = _status(p)
        row: dict[str, Any] = {"run": p.name, "status": status, "rounds_done": done}
        row |= {k: _cell(p.varied.get(k, getattr(p.config, k))) for k in varied_keys}
        summary = Path(p.config.out or "") / "summary.csv"
        if status == "done":
            first = next(csv.DictReader(summary.open()))
            row |= {"final_accuracy": first["final_accuracy"], "best_accuracy": first["best_accuracy"]}
        rows.append(row)
    with (out_dir / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_FIELDS[:3] + varied_keys + INDEX_FIELDS[3:], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


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

    todo = [p for p in points if _status(p)[0] != "done"]
    log.info(
        f"sweep {grid_file}: {len(points)} runs in {out}, {len(points) - len(todo)} already done; "
        f"{workers} worker(s)"
    )
    threads = max(1, (os.cpu_count() or 1) // workers)
    start_rounds, started, failures = rounds_done(), time.perf_counter(), {}
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited torch state
    with futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_exit_with, initargs=(os.getpid(),)
    ) as pool:
        (out / "logs").mkdir(exist_ok=True)
        pending = {
            pool.submit(_run_point, p.config, threads, out / "logs" / f"{p.name}.log"): p for p in todo
        }
        last_report = 0.0
        while pending:
            finished, _ = futures.wait(pending, timeout=5, return_when=futures.FIRST_COMPLETED)
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
                eta = _clock((total_rounds - done) / rate) if rate else "?"
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
