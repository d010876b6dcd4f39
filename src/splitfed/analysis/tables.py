"""A study as tables a lab can share: runs.csv, metrics.csv.gz and partitions.csv beside its grid.toml.

- runs.csv: a row per run: its id (``ids.run_id``), status (finished, diverged, failed) and note (the
  divergence or the error), the round records it holds (``rounds_done``, over its algorithms), its partition
  id, every config setting (``codec.encode``), the data's description (data.json, as ``data.*``) and, where
  the run recorded provenance.json, what produced it (``prov_*``; runs from before that record leave them
  empty).
- metrics.csv.gz: one long table (gzipped CSV) for every run: run, algorithm, round, metric, value
  (``codec.flatten``).
- partitions.csv: each distinct partition once: its id (a digest of its counts), client, samples, class_k.

``pack_run`` reads a run directory into its rows; ``update`` puts packed runs into a study's tables,
replacing their earlier rows, each file written whole to a temporary name and renamed into place.
"""

import contextlib
import csv
import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..config import DEFAULTS, Config
from ..errors import SplitfedError
from . import codec
from .ids import partition_id, run_id
from .rundir import read_config, read_records, status_of

RUNS, METRICS, PARTITIONS = "runs.csv", "metrics.csv.gz", "partitions.csv"
STATUSES = ("finished", "diverged", "failed")
HEAD = ["run", "status", "note", "rounds_done", "partition_id"]
# config fields that say where a run's files went, not what it was: no column
NOT_SETTINGS = ("out", "resume")
# runs.csv's settings columns: a section's keys by their flat names (sflv2_schedule), in the fields' order
SETTINGS = [name for name in DEFAULTS if name not in NOT_SETTINGS]
DATA = ["in_shape", "num_classes", "input_dtype", "train_samples", "test_samples", "loss"]
# provenance.json's entries kept per run (of its sessions, different values joined by ";")
PROVENANCE = ["commit", "clean", "splitfed", "torch", "cuda", "device", "device_name", "deterministic"]
METRIC_COLUMNS = ["run", "algorithm", "round", "metric", "value"]


@dataclass
class Packed:
    """One run's rows of the three tables."""

    run: dict[str, str]
    metrics: list[list[str]] = field(default_factory=list)
    partition: list[list[str]] = field(default_factory=list)  # partition.csv's rows, header first


def pack_run(run_dir: Path, status: str | None = None, note: str = "", rid: str | None = None) -> Packed:
    """A run directory's rows; its metrics are checked to give back metrics.jsonl's records exactly.
    ``rid``: the id a sweep gave the run (of its grid point: config.toml's resolved values, a default cut
    filled in, may differ from what the grid said); None: computed from config.toml."""
    config = read_config(run_dir / "config.toml")
    raw = {k: v for k, v in config.items() if k in SETTINGS and v is not None}
    rid = rid or run_id(Config.from_dict(raw, source=str(run_dir / "config.toml")))
    if status is None:
        status, note = status_of(run_dir)
    records = read_records(run_dir, config)
    metrics = [
        [rid, r["algorithm"], str(r["round"]), name, value]
        for r in records
        for name, value in codec.flatten(r)
    ]
    back = records_of(metrics)
    if len(back) != len(records) or not all(map(codec.same_record, back, records)):
        raise SplitfedError(f"{run_dir}/metrics.jsonl does not flatten to a table and back exactly")
    partition = _read_csv_rows(run_dir / "partition.csv")
    row = {"run": rid, "status": status, "note": note, "rounds_done": str(len(records))}
    row["partition_id"] = partition_id(partition) if partition else ""
    row |= {k: codec.encode(config.get(k)) for k in SETTINGS}
    row |= _described(run_dir)
    return Packed(row, metrics, partition)


def _described(run_dir: Path) -> dict[str, str]:
    """data.json as ``data.*`` columns and provenance.json's sessions as ``prov_*`` columns."""
    row: dict[str, str] = {}
    data = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").is_file() else {}
    row |= {f"data.{k}": codec.encode(data.get(k)) for k in [*DATA, *(k for k in data if k not in DATA)]}
    sessions = []
    if (run_dir / "provenance.json").is_file():
        sessions = json.loads((run_dir / "provenance.json").read_text())
    for key in PROVENANCE:
        values = dict.fromkeys(codec.encode(s.get(key)) for s in sessions if isinstance(s, dict))
        row[f"prov_{key}"] = ";".join(values)
    row["prov_sessions"] = str(len(sessions)) if sessions else ""
    return row


def _read_csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.reader(f) if row]


def records_of(metrics: Iterable[list[str]]) -> list[dict[str, Any]]:
    """metrics.csv.gz's rows of one run, back to its round records (in the rows' order)."""
    records: list[dict[str, Any]] = []
    current: tuple[str, str] | None = None
    pairs: list[tuple[str, str]] = []
    for _, algorithm, rnd, name, value in metrics:
        if (algorithm, rnd) != current:
            if current is not None:
                records.append(codec.unflatten(current[0], int(current[1]), pairs))
            current, pairs = (algorithm, rnd), []
        pairs.append((name, value))
    if current is not None:
        records.append(codec.unflatten(current[0], int(current[1]), pairs))
    return records


# ---------------------------------------------------------------------------------------------------------
# a study's tables


def has_tables(study: Path) -> bool:
    return (Path(study) / RUNS).is_file()


def read_runs(study: Path) -> list[dict[str, str]]:
    with (Path(study) / RUNS).open(newline="") as f:
        return list(csv.DictReader(f))


def read_metrics_rows(study: Path) -> Iterator[list[str]]:
    """metrics.csv.gz's rows, header left out."""
    path = Path(study) / METRICS
    if not path.is_file():
        return
    with _open(path, "r") as f:
        rows = csv.reader(f)
        if next(rows, None) != METRIC_COLUMNS:
            raise SplitfedError(f"{path} is not a metrics table (expected the columns {METRIC_COLUMNS})")
        yield from rows


def read_partitions(study: Path) -> list[list[str]]:
    """partitions.csv's rows, header first."""
    return _read_csv_rows(Path(study) / PARTITIONS)


def update(study: Path, packed: list[Packed]) -> None:
    """Put ``packed`` runs into the study's tables (a run already there is replaced), rows sorted by run
    id; each table written to a temporary name and renamed, so a reader sees the old table or the new."""
    study = Path(study)
    new = {p.run["run"]: p for p in packed}
    runs = [r for r in (read_runs(study) if has_tables(study) else []) if r["run"] not in new]
    runs = sorted([*runs, *(p.run for p in packed)], key=lambda r: r["run"])
    columns = list(dict.fromkeys([*HEAD, *SETTINGS, *(k for r in runs for k in r)]))
    _write(study / RUNS, columns, ([r.get(c, "") for c in columns] for r in runs))
    _write(study / METRICS, METRIC_COLUMNS, _merged(read_metrics_rows(study), packed))
    _write_partitions(study, [p.partition for p in packed if p.partition])


def _merged(old: Iterator[list[str]], packed: list[Packed]) -> Iterator[list[str]]:
    """The old metrics rows without the packed runs', the packed runs' rows merged in at their run id's
    place (the table is ordered by run id, each run's rows in its file's order), streamed."""
    new = sorted(packed, key=lambda p: p.run["run"])
    replaced = {p.run["run"] for p in new}
    i = 0
    for row in old:
        while i < len(new) and new[i].run["run"] < row[0]:
            yield from new[i].metrics
            i += 1
        if row[0] not in replaced:
            yield row
    for p in new[i:]:
        yield from p.metrics


def _write_partitions(study: Path, tables: list[list[list[str]]]) -> None:
    """Each distinct partition once, by id; one header: the widest (class columns, in order)."""
    old = read_partitions(study)
    rows = old[1:]
    header = old[0] if old else ["partition"]
    known = {r[0] for r in rows}
    for table in tables:
        pid = partition_id(table)
        if len(table[0]) + 1 > len(header):
            header = ["partition", *table[0]]
        if pid not in known:
            known.add(pid)
            rows += [[pid, *r] for r in table[1:]]
    rows.sort(key=lambda r: r[0])
    _write(study / PARTITIONS, header, (r + [""] * (len(header) - len(r)) for r in rows))


def _write(path: Path, columns: list[str], rows: Iterable[list[str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with _open(tmp, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    os.replace(tmp, path)


@contextlib.contextmanager
def _open(path: Path, mode: str) -> Iterator[IO[str]]:
    """A table as text; the metrics table gzipped (per-client lists make it long: 27 MB of CSV for the
    many-clients study, 3 MB gzipped) with no time stamp or file name inside, so equal rows give equal
    bytes."""
    if not path.name.removesuffix(".tmp").endswith(".gz"):
        with path.open(mode, newline="") as f:
            yield f
        return
    with (
        path.open(mode + "b") as raw,
        gzip.GzipFile(filename="", mode=mode + "b", fileobj=raw, mtime=0) as packed,
        io.TextIOWrapper(packed, encoding="utf-8", newline="") as f,
    ):
        yield f


def partition_of(study: Path, pid: str) -> list[list[str]]:
    """partition.csv's rows of partition ``pid`` (header first), as the run wrote them."""
    table = read_partitions(study)
    if not table:
        return []
    rows = [r[1:] for r in table[1:] if r[0] == pid]
    width = max((sum(1 for c in r if c != "") for r in rows), default=0)
    return [table[0][1 : width + 1], *[r[:width] for r in rows]]


def pack_study(study: Path) -> list[str]:
    """Pack every run directory of ``study`` into its tables (the migration from run directories, and the
    sweep's own path); failures.json's notes (a sweep's record of runs that failed) fold into runs.csv.
    Returns the directories packed. Two directories of one id (the same run twice) are refused."""
    study = Path(study)
    failures_file = study / "failures.json"
    failures = json.loads(failures_file.read_text()) if failures_file.is_file() else {}
    dirs = sorted(p.parent for p in study.glob("*/config.toml"))
    packed: dict[str, Packed] = {}
    for run_dir in dirs:
        status, note = status_of(run_dir)
        if run_dir.name in failures and status != "finished":
            note = failures[run_dir.name]
        p = pack_run(run_dir, status, note)
        if (rid := p.run["run"]) in packed:
            raise SplitfedError(f"{run_dir} and another directory of {study} are one run (id {rid})")
        packed[rid] = p
    update(study, list(packed.values()))
    return [d.name for d in dirs]
