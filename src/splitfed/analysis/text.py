"""How a study's numbers read in its tables and file names: mean ± std, rates, frozen config values."""

import math
import re
import statistics
from typing import Any

from ..plotstyle import dataset_name, model_name


def same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b)
    return a == b


def std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def fmt(values: list[float], scale: float = 100.0, digits: int = 1, sign: str = "") -> str:
    """Mean ± std of ``values`` × scale; sign="+" writes the mean's sign always (margins). One value has no
    spread to show: "92.4 (n = 1)", not "92.4 ± 0.0", which would claim seeds that agree."""
    if not values:
        return "–"
    centre = f"{scale * statistics.fmean(values):{sign}.{digits}f}"
    return f"{centre} (n = 1)" if len(values) == 1 else f"{centre} ± {scale * std(values):.{digits}f}"


def percent(x: float, sign: bool = False, scale: float = 100.0, digits: int = 1) -> str:
    """A fraction as a percentage (or x × scale) as docs/results.md prints it: a true minus sign, and with
    sign=True a plus sign too (margins)."""
    return f"{scale * x:{'+' if sign else ''}.{digits}f}".replace("-", "−")


def percent_pm(values: list[float], sign: bool = False, scale: float = 100.0) -> str:
    """Mean ± std over seeds as docs/results.md prints it; one seed: its value alone."""
    centre = percent(statistics.fmean(values), sign, scale)
    return centre if len(values) == 1 else f"{centre} ± {percent(std(values), scale=scale)}"


def interval_text(bounds: tuple[float, float] | None, scale: float = 100.0) -> str:
    """A 95 % interval as docs/results.md prints it, "[+0.7, +12.1]"; none (one seed): "–"."""
    return (
        "–" if bounds is None else f"[{percent(bounds[0], True, scale)}, {percent(bounds[1], True, scale)}]"
    )


def table_row(cells: list[str]) -> str:
    """A markdown table row as docs/results.md writes it (an empty cell is one space)."""
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def table_rule(columns: int) -> str:
    return "|" + "---|" * columns


def fmt_rounds(rounds: list[int | None]) -> str:
    reached = [r for r in rounds if r is not None]
    if not reached:
        return "never"
    text = fmt([float(r) for r in reached], 1.0)
    return text if len(reached) == len(rounds) else f"{text}, never in {len(rounds) - len(reached)}"


def fmt_seconds(seconds: list[float | None]) -> str:
    """Simulated seconds to a target over seeds, as fmt_rounds writes rounds."""
    reached = [s for s in seconds if s is not None]
    if not reached:
        return "never"
    text = fmt(reached, 1.0, digits=0)
    return text if len(reached) == len(seconds) else f"{text}, never in {len(seconds) - len(reached)}"


def fmt_lr(lr: tuple[float, float] | None) -> str:
    if lr is None:
        return "–"
    return f"{lr[0]:g}" if lr[0] == lr[1] else f"η_c {lr[0]:g}, η_s {lr[1]:g}"


def freeze(value: Any) -> Any:
    """A TOML value as something hashable (lists and tables become tuples)."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def show(value: Any) -> str:
    """A frozen TOML value as a reader writes it: (('width', 16),) -> width=16."""
    if isinstance(value, tuple):
        if all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return ",".join(f"{k}={show(v)}" for k, v in value)
        return ",".join(show(v) for v in value)
    return str(value)


def names(dataset: str, model: str) -> str:
    """A setting's data set and model as a title shows them: their names, not config.toml's fingerprints
    (file names keep what config.toml records: two data sets given as tensors stay apart)."""
    return f"{dataset_name(dataset)} {model_name(model)}"


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")
