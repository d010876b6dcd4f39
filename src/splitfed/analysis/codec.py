"""How a value is written in a study's CSV tables, and read back exactly.

A cell of runs.csv holds one config value: a string as it is (as JSON text only where it would read as
something else: "", "true", "1"), None as an empty cell, anything else (numbers, booleans, lists, tables)
as compact JSON. A metric record of metrics.jsonl becomes rows of (metric, value): a nested list or table
is flattened to names like ``test_accuracy_per_class.3``, ``client_bytes_up.0`` or ``bytes.smashed`` (a key's
own "." written %2E), a
value is JSON text (floats as their repr, so they read back to the same bits; ints stay ints), and an empty
list or table is kept as ``[]`` or ``{}``. ``unflatten`` gives the record back, keys in their order.
"""

import json
from typing import Any

from ..errors import SplitfedError

KEYS = ("algorithm", "round")  # a record's own columns in metrics.csv.gz, not metrics


def encode(value: Any) -> str:
    """A config value as a cell's text (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value if value else '""'
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def decode(text: str) -> Any:
    """The config value a cell holds (``encode``'s inverse)."""
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def flatten(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A round record's metrics as (name, JSON value) pairs, in the record's order."""
    out: list[tuple[str, str]] = []

    def walk(name: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, v in value.items():
                if not isinstance(key, str) or not key:
                    raise SplitfedError(f"metric {name}: key {key!r} cannot be named in a flat table")
                walk(f"{name}.{_escape(key)}", v)
        elif isinstance(value, list) and value:
            for i, v in enumerate(value):
                walk(f"{name}.{i}", v)
        else:
            out.append((name, json.dumps(value)))

    for key, value in record.items():
        if key not in KEYS:
            walk(key, value)
    return out or [("", "")]  # a record of no metric still has its row


def unflatten(algorithm: str, rnd: int, metrics: list[tuple[str, str]]) -> dict[str, Any]:
    """The round record that ``flatten`` took apart: a table whose keys are 0, 1, … n−1 in order is a list."""
    tree: dict[str, Any] = {"algorithm": algorithm, "round": rnd}
    for name, text in metrics:
        if not name:
            continue
        *path, leaf = map(_unescape, name.split("."))
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(text)
    return {k: _lists(v) for k, v in tree.items()}


def _escape(key: str) -> str:
    """A table's key inside a metric's name: its "." (the names' separator) and "%" written as %2E, %25."""
    return key.replace("%", "%25").replace(".", "%2E")


def _unescape(part: str) -> str:
    return part.replace("%2E", ".").replace("%25", "%")


def _lists(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return value
    items = {k: _lists(v) for k, v in value.items()}
    if list(items) == [str(i) for i in range(len(items))]:
        return list(items.values())
    return items


def same_record(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal keys in the same order, values of the same types and bits (NaN equal to NaN)."""
    return json.dumps(a) == json.dumps(b)
