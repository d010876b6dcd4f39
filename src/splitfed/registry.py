"""Name -> factory registries for models, algorithms, datasets and partitions (timm style)."""

import ast
import functools
import hashlib
import importlib
import os
import re
import sys
import types
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


PYTHON_OBJECT = "python:"  # the label of an object that cannot be imported by name: python:<name>@<hash>


def object_label(obj: Any) -> str:
    """What config.toml records for an object given in Python (an optimizer class, a factory): its
    ``pkg.module:name`` where that imports back to ``obj`` (a CLI run can then name it), else
    ``python:<name>@<fingerprint>`` of its code, so a resumed run given another object refuses it.
    Either way ``import_object`` finds ``obj`` under the label in this process."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and qualname and module != "__main__" and "<" not in qualname:
        spec = f"{module}:{qualname}"
        try:
            if import_object(spec, "object") is obj:
                GIVEN[spec] = obj
                return spec
        except SplitfedError:
            pass
    name = qualname or type(obj).__name__
    digest = hashlib.blake2b(_fingerprint(obj).encode(), digest_size=4).hexdigest()
    label = f"{PYTHON_OBJECT}{name}@{digest}"
    GIVEN[label] = obj
    return label


def _fingerprint(obj: Any, depth: int = 0) -> str:
    """Text that changes when the object's behaviour may: a function's code, constants, defaults and
    closure (addresses left out, so the same code in a new process gives the same text)."""
    if depth > 4:
        return "..."
    if isinstance(obj, functools.partial):
        parts = [_fingerprint(obj.func, depth + 1), *map(repr, obj.args)]
        return "partial(" + ", ".join(parts + [f"{k}={v!r}" for k, v in sorted(obj.keywords.items())]) + ")"
    if isinstance(obj, types.FunctionType):
        cells = [c.cell_contents for c in obj.__closure__ or ()]
        return "|".join(
            [
                obj.__qualname__,
                _fingerprint(obj.__code__, depth + 1),
                *(_fingerprint(v, depth + 1) for v in (*(obj.__defaults__ or ()), *cells)),
            ]
        )
    if isinstance(obj, types.CodeType):
        consts = [
            _fingerprint(c, depth + 1) if isinstance(c, types.CodeType) else repr(c) for c in obj.co_consts
        ]
        return f"{obj.co_code.hex()}{consts}{obj.co_names}"
    if isinstance(obj, type):
        if obj.__module__ != "__main__" and "<" not in obj.__qualname__:
            return f"{obj.__module__}:{obj.__qualname__}"
        methods = sorted((k, _fingerprint(v, depth + 1)) for k, v in vars(obj).items() if callable(v))
        return f"{obj.__qualname__}{[b.__qualname__ for b in obj.__bases__]}{methods}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def import_object(spec: str, kind: str, what: str = "it as pkg.module:name") -> Any:
    """The object at ``pkg.module:attr`` (attr may be dotted), imported from the current directory or
    PYTHONPATH; any way that fails is one SplitfedError naming the ``kind`` ("model", "algorithm") and how
    to name one (``what``)."""
    if spec in GIVEN:
        return GIVEN[spec]
    if spec.startswith(PYTHON_OBJECT):
        raise SplitfedError(
            f"{kind} {spec} was given in Python as an object, which this process does not hold; give the "
            f"same object again, or name {what}"
        )
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
