"""Name -> factory registries for models, algorithms, datasets and partitions (timm style)."""

import ast
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import SplitfedError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories, filled by the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SplitfedError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


# Objects handed to a Config in Python (a user's algorithm class), by the import path that names them in
# config.toml: found here first, so a class defined in a script or a notebook (``__main__``) works too.
GIVEN: dict[str, Any] = {}


def given_name(obj: Any) -> str:
    """The ``pkg.module:Qualified.name`` that names ``obj`` (a class or function), and remember ``obj``
    under it for ``import_object``."""
    name = f"{obj.__module__}:{obj.__qualname__}"
    GIVEN[name] = obj
    return name


def import_object(spec: str, kind: str, what: str = "it as pkg.module:name") -> Any:
    """The object at ``pkg.module:attr`` (attr may be dotted), imported from the current directory or
    PYTHONPATH; any way that fails is one SplitfedError naming the ``kind`` ("model", "algorithm") and how
    to name one (``what``)."""
    if spec in GIVEN:
        return GIVEN[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SplitfedError(f"{kind} {spec!r}: name {what}")
    # `python -m splitfed` puts the current directory on the path; the installed `splitfed` script does not
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # the user's module: missing, or failing as it imports (any error, one line)
        first = (str(e).splitlines() or [""])[0]
        raise SplitfedError(
            f"{kind} {spec}: cannot import {module_name} ({type(e).__name__}: {first})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SplitfedError(f"{kind} {spec}: module {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


# How the package's own modules register an entry: ``@MODELS.register("cnn4")``, ``@DATASETS...``,
# ``@PARTITIONS...``; algorithms with ``@register("fedavg")`` (algorithms/base.py).
_DECORATORS = {"MODELS": "model", "DATASETS": "dataset", "PARTITIONS": "partition", "register": "algorithm"}


def builtin_entries() -> dict[str, list[tuple[str, str]]]:
    """The package's own registered names with their docstring's first line, by kind ("model", ...),
    read from the source without importing it: `splitfed list` and `--help` then need no torch (seconds).
    A test checks that this agrees with the registries filled by importing."""
    found: dict[str, list[tuple[str, str]]] = {kind: [] for kind in _DECORATORS.values()}
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue
            for dec in node.decorator_list:
                if not (isinstance(dec, ast.Call) and dec.args and isinstance(dec.args[0], ast.Constant)):
                    continue
                who = _decorator_name(dec.func)
                if who in _DECORATORS:
                    doc = (ast.get_docstring(node) or "").strip().splitlines()
                    found[_DECORATORS[who]].append((str(dec.args[0].value), doc[0] if doc else ""))
    return found


def _decorator_name(func: ast.expr) -> str | None:
    """``MODELS`` for ``@MODELS.register(...)``, ``register`` for ``@register(...)``."""
    if isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name):
        return func.value.id
    return func.id if isinstance(func, ast.Name) else None
