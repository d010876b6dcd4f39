"""The one place that reads a study: a run directory, a sweep's run directories or (later) its tables, into
the tidy rows (a config and its histories per run) that the cells are grouped from."""

import dataclasses
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import SplitfedError
from ..report import read_metrics
from .cells import Group, group_runs

_CONFIG_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING
}


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.toml as written, with Config's defaults for fields it lacks. Read as TOML, not as a
    Config, so that runs written by an older or newer splitfed still report."""
    try:
        return _CONFIG_DEFAULTS | tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SplitfedError(f"{path}: {e}") from None


def is_run(path: Path) -> bool:
    """Whether ``path`` is one run's directory rather than a sweep's."""
    return (Path(path) / "config.toml").is_file()


def read_history(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's round records (a line cut short, or not a record of its algorithms, is one line)."""
    algorithms = config.get("algorithm") or ()
    return read_metrics(
        run_dir / "metrics.jsonl", [algorithms] if isinstance(algorithms, str) else algorithms
    )


def load_groups(sweep_dir: Path) -> list[Group]:
    """The cells of a sweep's finished runs (of one run's, where ``sweep_dir`` is a run directory)."""
    sweep_dir = Path(sweep_dir)
    runs = [sweep_dir] if is_run(sweep_dir) else sorted(p.parent for p in sweep_dir.glob("*/config.toml"))
    if not runs:
        raise SplitfedError(
            f"no runs in {sweep_dir} (expected a run directory, or a sweep of them, with config.toml)"
        )
    finished = []
    for run_dir in runs:
        if not (run_dir / "summary.csv").is_file():
            continue  # unfinished: reported once the sweep completes it
        config = read_config(run_dir / "config.toml")
        histories: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in read_history(run_dir, config):
            histories[rec["algorithm"]].append(rec)
        finished.append((config, histories))
    if not finished:
        raise SplitfedError(
            f"{sweep_dir} is unfinished (no summary.csv): continue it with --resume"
            if runs == [sweep_dir]
            else f"no finished runs in {sweep_dir} yet"
        )
    return group_runs(finished)
