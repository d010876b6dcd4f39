"""A run's result as an object: what ``run()`` returns, and ``load_run(path)`` that reads the same object
back from a run directory (for analysis in a notebook, days later, without training again)."""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .config import Config
from .errors import SplitfedError
from .export import load_model
from .models import ModelLike
from .report import read_metrics, summarize


@dataclass
class RunResult:
    """What ``run`` returns: every round's metrics, the final model of each algorithm, the summary.

    ``history`` holds every algorithm's rounds one algorithm after another; ``by_algorithm`` and
    ``final_accuracy`` index them by algorithm.
    """

    config: Config
    out_dir: Path
    history: list[dict[str, Any]]
    models: Mapping[str, nn.Module]
    summary: list[dict[str, Any]]
    # True when the run did not finish (interrupted with Ctrl-C): it holds what was trained; --resume
    # continues it
    interrupted: bool = False

    @property
    def by_algorithm(self) -> dict[str, list[dict[str, Any]]]:
        """Each algorithm's round records, in round order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for record in self.history:
            out.setdefault(record["algorithm"], []).append(record)
        return out

    @property
    def final_accuracy(self) -> dict[str, float]:
        """Each algorithm's test accuracy at its last round (always evaluated, whatever eval_every)."""
        return {
            name: next(r["test_accuracy"] for r in reversed(records) if "test_accuracy" in r)
            for name, records in self.by_algorithm.items()
            if any("test_accuracy" in r for r in records)
        }

    @property
    def stopped(self) -> list[str]:
        """The algorithms that ``on_round`` stopped early (``StopAlgorithm``)."""
        return [name for name, records in self.by_algorithm.items() if records[-1].get("stopped")]


class RunModels(Mapping[str, nn.Module]):
    """A run directory's final models, each rebuilt from its files when first asked for (a run given a
    model object in Python needs it again, as ``load_model(model=...)`` does)."""

    def __init__(self, run_dir: Path, algorithms: Sequence[str], model: ModelLike | None) -> None:
        self.run_dir, self.algorithms, self.model = run_dir, list(algorithms), model
        self.loaded: dict[str, nn.Module] = {}

    def __getitem__(self, algorithm: str) -> nn.Module:
        if algorithm not in self.algorithms:
            raise KeyError(algorithm)
        if algorithm not in self.loaded:
            self.loaded[algorithm] = load_model(self.run_dir, algorithm, model=self.model)
        return self.loaded[algorithm]

    def __iter__(self) -> Iterator[str]:
        return iter(self.algorithms)

    def __len__(self) -> int:
        return len(self.algorithms)


def load_run(path: str | Path, *, model: ModelLike | None = None) -> RunResult:
    """The ``RunResult`` that ``run()`` returned for the run directory ``path`` (finished or not: an
    unfinished one has ``interrupted`` set and holds the rounds it trained). ``model``: the model object
    of a run that was given one in Python, needed only to rebuild ``models``."""
    run_dir = Path(path)
    if not (run_dir / "config.toml").is_file():
        raise SplitfedError(f"{run_dir} is not a run directory: it has no config.toml")
    cfg = Config.from_toml(run_dir / "config.toml")
    metrics = run_dir / "metrics.jsonl"
    history = read_metrics(metrics, cfg.algorithm) if metrics.is_file() else []
    trained = [name for name in cfg.algorithm if any(r["algorithm"] == name for r in history)]
    finished = (run_dir / "summary.csv").is_file()
    models = RunModels(run_dir, trained, model)
    return RunResult(cfg, run_dir, history, models, summarize(history, trained), not finished)
