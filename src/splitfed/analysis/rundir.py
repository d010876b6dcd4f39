"""One run directory as the analysis reads it: its config.toml (as written, over Config's defaults), its
round records, and whether it finished, diverged or stopped short."""

import json
import tomllib
from pathlib import Path
from typing import Any

from ..config import DEFAULTS
from ..errors import SplitfedError
from ..report import read_metrics
from ..sections import flatten

CONFIG_DEFAULTS = {k: v for k, v in DEFAULTS.items() if k != "model_args"}


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.toml as written, with Config's defaults for fields it lacks, its sections' keys by
    their flat names (``sflv2_schedule``, as runs.csv's columns). Read as TOML, not as a Config, so that runs
    written by an older or newer splitfed still report."""
    try:
        return CONFIG_DEFAULTS | flatten(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as e:
        raise SplitfedError(f"{path}: {e}") from None


def is_run(path: Path) -> bool:
    """Whether ``path`` is one run's directory rather than a sweep's."""
    return (Path(path) / "config.toml").is_file()


def algorithms_of(config: dict[str, Any]) -> list[str]:
    algorithms = config.get("algorithm") or ()
    return [algorithms] if isinstance(algorithms, str) else list(algorithms)


def read_history(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's round records, algorithm by algorithm in round order (a line cut short, or not a record
    of its algorithms, is one line)."""
    return read_metrics(run_dir / "metrics.jsonl", algorithms_of(config))


def read_records(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.jsonl's records in the file's order (checked as ``read_history`` checks them)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    read_history(run_dir, config)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def status_of(run_dir: Path) -> tuple[str, str]:
    """(status, note) from the run's files: diverged.txt, summary.csv, else failed."""
    if (run_dir / "diverged.txt").is_file():
        return "diverged", (run_dir / "diverged.txt").read_text().strip()
    if (run_dir / "summary.csv").is_file():
        return "finished", ""
    return "failed", "no summary.csv: the run did not finish"
