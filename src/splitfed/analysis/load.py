"""The one place that reads a study into the tidy table the analysis works on: a run per row, with its id,
status, config (as written, over Config's defaults) and round records. A study is read from its tables
(runs.csv, metrics.csv.gz: see ``tables``), or, for a live sweep that has none yet, from its run directories,
or it is one run directory."""

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SplitfedError
from . import codec, tables
from .cells import Group, group_runs
from .rundir import CONFIG_DEFAULTS, algorithms_of, is_run, read_config, read_records, status_of


@dataclass
class StudyRun:
    """One row of the tidy table."""

    run: str  # its id (a run directory's name where read from directories)
    status: str  # finished, diverged or failed
    note: str
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)  # as metrics.jsonl holds them
    device: str = ""  # where it ran, as its provenance names the device ("": recorded before provenance)

    def histories(self) -> dict[str, list[dict[str, Any]]]:
        """The records by algorithm, each in round order, algorithms in the config's order."""
        order = {name: i for i, name in enumerate(algorithms_of(self.config))}
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in sorted(self.records, key=lambda r: (order.get(r["algorithm"], len(order)), r["round"])):
            out[rec["algorithm"]].append(rec)
        return out


def load_study(path: str | Path) -> list[StudyRun]:
    """A study's runs, from its tables where it has them, else from its run directories (sorted by name);
    ``path`` may also be one run's directory. Unfinished runs are rows without records."""
    path = Path(path)
    if tables.has_tables(path):
        return _from_tables(path)
    runs = [path] if is_run(path) else sorted(p.parent for p in path.glob("*/config.toml"))
    if not runs:
        raise SplitfedError(
            f"no runs in {path} (expected a run directory, or a study: runs.csv or run directories with "
            "config.toml)"
        )
    out = []
    for run_dir in runs:
        status, note = status_of(run_dir)
        config = read_config(run_dir / "config.toml")
        records = read_records(run_dir, config) if status != "failed" else []
        out.append(StudyRun(run_dir.name, status, note, config, records, _device_of(run_dir)))
    return out


def _from_tables(study: Path) -> list[StudyRun]:
    records: dict[str, list[list[str]]] = defaultdict(list)
    for row in tables.read_metrics_rows(study):
        records[row[0]].append(row)
    out = []
    for row in tables.read_runs(study):
        config = CONFIG_DEFAULTS | {k: codec.decode(row[k]) for k in tables.SETTINGS if k in row}
        device = row.get("prov_device_name") or row.get("prov_device") or ""
        out.append(
            StudyRun(
                row["run"], row["status"], row["note"], config, tables.records_of(records[row["run"]]), device
            )
        )
    return out


def devices(runs: list[StudyRun]) -> dict[str, int]:
    """How many finished runs each device produced (runs recorded before provenance count nowhere): a
    report says where it pools runs of several devices."""
    count: dict[str, int] = {}
    for run in runs:
        if run.status == "finished" and run.device:
            count[run.device] = count.get(run.device, 0) + 1
    return count


def _device_of(run_dir: Path) -> str:
    try:
        sessions = json.loads((run_dir / "provenance.json").read_text())
        names = {str(s.get("device_name") or s.get("device")) for s in sessions}
    except (OSError, ValueError, AttributeError, TypeError):
        return ""
    return ";".join(sorted(names))


def load_groups(
    path: str | Path, runs: list[StudyRun] | None = None, diverged_cells: bool = False
) -> list[Group]:
    """The cells of a study's finished runs (of one run's, where ``path`` is a run directory), each with
    the seeds whose run diverged; ``runs``: the study as ``load_study`` read it already. A cell where
    every seed diverged has no history: left out unless ``diverged_cells`` (a rate search's reach)."""
    path = Path(path)
    runs = load_study(path) if runs is None else runs
    finished = [(r.config, r.histories()) for r in runs if r.status == "finished"]
    if not finished:
        raise SplitfedError(
            f"{path} is unfinished (no summary.csv): continue it with --resume"
            if is_run(path)
            else f"no finished runs in {path} yet"
        )
    stopped = [_diverged(r) for r in runs if r.status == "diverged"]
    finished += [(r.config, done) for r, done, _ in stopped if done]
    groups = group_runs(finished, [(r.config, name) for r, _, names in stopped for name in names])
    return groups if diverged_cells else [g for g in groups if g.histories]


def _diverged(run: StudyRun) -> tuple[StudyRun, dict[str, list[dict[str, Any]]], list[str]]:
    """A diverged run: the algorithms it trained to the end before it stopped, with their records (the
    runner trains them one after another and stops at the first that diverges, which its note names), and
    the one that diverged; where the note names none of them, every algorithm is taken as diverged."""
    names = algorithms_of(run.config)
    at = next((i for i, n in enumerate(names) if run.note.startswith(f"{n} diverged")), None)
    if at is None:
        return run, {}, names
    histories = run.histories()
    return run, {n: histories[n] for n in names[:at] if histories.get(n)}, [names[at]]
