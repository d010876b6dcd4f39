"""Templates of what a checkpoint must hold, and ``mismatch``: what is wrong with a payload against one.

A template is built from a run's own initial state, so a payload of another model, cut layer or config is
named by its first difference: its path in the payload and what it is instead.
"""

from collections.abc import Iterable
from typing import Any

import torch

from .record import record_problem


class Tensor:
    """A template's tensor: this dtype and shape (``None``: any size in that dimension), finite values."""

    def __init__(self, shape: tuple[int | None, ...], dtype: torch.dtype = torch.float32) -> None:
        self.shape, self.dtype = shape, dtype


class Each:
    """A template's container of any length, each value like ``item``: a list, or (``keyed``) a dict keyed
    by integers (clients)."""

    def __init__(self, item: Any, keyed: bool = False) -> None:
        self.item, self.keyed = item, keyed


class Equal:
    """A template's value that must be this one (elsewhere a template's scalars stand for their type)."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Records:
    """A run's history: a list of round records (engine/record.py), the n-th for round n."""


class Tensors:
    """A template's dict of named float tensors of any shapes, each finite (an algorithm's own state)."""


def mismatch(expected: Any, value: Any, where: str = "") -> str | None:
    """What is wrong with ``value`` against the template ``expected``, or None.

    A template is a payload of the expected structure: dicts (exactly these keys), lists and tuples
    (exactly this length), tensors (this dtype and shape; the template's values do not matter), scalars
    (this type), or the markers ``Tensor``, ``Each``, ``Equal``, ``Tensors`` and ``Records``. Every
    floating tensor must be finite.
    """
    name = where or "the payload"
    if isinstance(expected, torch.Tensor):
        expected = Tensor(tuple(expected.shape), expected.dtype)
    if isinstance(expected, Tensor):
        return _tensor_mismatch(expected, value, name)
    if isinstance(expected, Equal):
        return None if value == expected.value else f"{name} is {value!r}, not {expected.value!r}"
    if isinstance(expected, Tensors):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"{name} is {describe(value)}, not a dict of named tensors"
        return _first(mismatch(Tensor(tuple([None] * _dims(v))), v, _key(where, k)) for k, v in value.items())
    if isinstance(expected, Records):
        if not isinstance(value, list):
            return f"{name} is {describe(value)}, not a list of rounds"
        problems = (record_problem(record, n) for n, record in enumerate(value, 1))
        return next((f"{name}[{n}] {p}" for n, p in enumerate(problems) if p is not None), None)
    if isinstance(expected, Each):
        return _each_mismatch(expected, value, where)
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return f"{name} is {describe(value)}, not a dict"
        missing = [k for k in expected if k not in value]
        if missing:
            return f"{_key(where, missing[0])} is missing"
        extra = [k for k in value if k not in expected]
        if extra:
            return f"{_key(where, extra[0])} is not expected here"
        return _first(mismatch(e, value[k], _key(where, k)) for k, e in expected.items())
    if isinstance(expected, list | tuple):
        kind = "list" if isinstance(expected, list) else "tuple"
        if not isinstance(value, list | tuple) or len(value) != len(expected):
            return f"{name} is {describe(value)}, not a {kind} of {len(expected)}"
        pairs = enumerate(zip(expected, value, strict=True))
        return _first(mismatch(e, v, f"{where}[{i}]") for i, (e, v) in pairs)
    return _scalar_mismatch(expected, value, name)


def _first(problems: Iterable[str | None]) -> str | None:
    return next((p for p in problems if p is not None), None)


def _tensor_mismatch(expected: Tensor, value: Any, name: str) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"{name} is {describe(value)}, not a tensor"
    if value.dtype != expected.dtype:
        return f"{name} is a tensor of {value.dtype}, not {expected.dtype}"
    shape = tuple(value.shape)
    if len(shape) != len(expected.shape) or any(
        e not in (None, v) for e, v in zip(expected.shape, shape, strict=True)
    ):
        want = ["any" if e is None else e for e in expected.shape]
        return f"{name} has shape {list(shape)}, not {want} (another model, cut layer or config?)"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return f"{name} holds non-finite values (NaN or inf: training diverged, or the file was altered)"
    return None


def _each_mismatch(expected: Each, value: Any, where: str) -> str | None:
    if not isinstance(value, dict if expected.keyed else list):
        return f"{where or 'the payload'} is {describe(value)}, not a {'dict' if expected.keyed else 'list'}"
    if expected.keyed and not all(type(k) is int for k in value):
        return f"{where} is keyed by {describe(next(k for k in value if type(k) is not int))}, not integers"
    items = list(value.items()) if expected.keyed else list(enumerate(value))
    return _first(mismatch(expected.item, v, f"{where}[{k!r}]") for k, v in items)


def _scalar_mismatch(expected: Any, value: Any, name: str) -> str | None:
    want = expected if isinstance(expected, type) else type(expected)
    if want is float:  # an integer is a number too; a bool is not
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, want)
    return None if ok else f"{name} is {describe(value)}, not {want.__name__}"


def _dims(value: Any) -> int:
    return value.dim() if isinstance(value, torch.Tensor) else 0


def _key(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def describe(value: Any) -> str:
    """A value, briefly: what it is, not its content (a state's worth of numbers is not a message)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
