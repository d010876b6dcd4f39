"""Typed values from what people write, and back: a TOML file read safely, a dataclass from its table
(``from_table``, the one loader of every settings file), a command-line flag's text, and flat TOML
written for a resolved config. Every mistake is one SplitfedError naming the key and what it accepts."""

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import SplitfedError

# A cut: a block number of an nn.Sequential / CutModel, or the qualified name of any module (a traced graph).
CUT = int | str
# A named thing or a table of its settings (a device profile: "phone-4g", or {base = "phone-4g", ...}), or a
# list of them (several profiles, timed at once).
NAMED_OR_TABLE = str | dict | tuple
# A config is a few dozen lines; anything near this is not one, and parsing it would take a while.
MAX_CONFIG_BYTES = 1 << 20

T = TypeVar("T")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's table; any way the file can be unreadable is one SplitfedError naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise SplitfedError(f"cannot read config file {path}: {e.strerror or e}") from None
    except ValueError:  # open() refuses a NUL byte in a path with ValueError
        raise SplitfedError(f"config file path {str(path)!r} contains a NUL byte") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise SplitfedError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SplitfedError(
            f"config file {path} is not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}); TOML must be"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise SplitfedError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise SplitfedError(f"config file {path} nests arrays or tables too deeply to be a config") from None


def from_table(
    cls: type[T], table: Mapping[str, Any], source: str, *, kind: str = "config", prefix: str = ""
) -> T:
    """The dataclass ``cls`` from a table of typed values (a TOML file's): every key one of its fields,
    every value of its field's type (checked by ``convert``; a list of tables for a tuple of dataclasses),
    every field without a default given; the rest of the checks are the class's own (``__post_init__``).
    ``source`` names where the table came from, ``kind`` what it holds, ``prefix`` how its keys are written
    there: an unknown key is "unknown config key 'x' in exp.toml; valid keys: ...", a wrong value
    "deploy.retry_s in site.toml must be a number, got 'x'"."""
    if not isinstance(table, Mapping):
        raise SplitfedError(f"{prefix.rstrip('.') or kind} in {source} must be a table, got {table!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)  # real types, also under ``from __future__ import annotations``
    values = {}
    for key, value in table.items():
        if key not in known:
            raise SplitfedError(f"unknown {kind} key {key!r} in {source}; valid keys: {', '.join(known)}")
        values[key] = convert(hints[key], value, f"{prefix}{key} in {source}")
    missing = [k for k, f in known.items() if k not in values and _required(f)]
    if missing:
        raise SplitfedError(f"{kind} in {source} needs {', '.join(missing)}")
    return cls(**values)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _tables(tp: Any, value: Any, where: str) -> Any:
    """A list of tables as a tuple of the dataclass ``tp`` holds (``[[paper]]`` entries), else _WRONG."""
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
    if not (dataclasses.is_dataclass(item) and isinstance(value, list)):
        return _WRONG
    name = where.partition(" in ")[0]
    return tuple(
        from_table(item, v, where.partition(" in ")[2], kind=f"{name}[{i}]", prefix=f"{name}[{i}].")
        for i, v in enumerate(value)
    )


def _table(tp: Any, value: Any, where: str) -> Any:
    """A table (or an instance) as the dataclass ``tp`` (a config's section, ``[sfl_v2]``), else _WRONG."""
    if not dataclasses.is_dataclass(tp):
        return _WRONG
    if isinstance(value, tp):
        return value
    if not isinstance(value, Mapping):
        return _WRONG
    name, _, source = where.partition(" in ")
    return from_table(tp, value, source or "config", kind=name, prefix=f"{name}.")


def base_type(tp: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def coerce(f: dataclasses.Field, value: Any, where: str, *, from_cli: bool = False) -> Any:
    """Check and convert a value to the field's type (``convert``)."""
    return convert(f.type, value, where, from_cli=from_cli)


def convert(tp: Any, value: Any, where: str, *, from_cli: bool = False) -> Any:
    """Check and convert a value to the type ``tp``.

    ``from_cli`` says the value is the text of a command-line flag, to be parsed ("3" -> 3, "none" ->
    None, "3x32x32" -> (3, 32, 32)). Every other source (a TOML file, a grid file, a Python caller) has
    typed values and gets no parsing: ``rounds = "1"`` in a file is a mistake that would otherwise hide
    another (a quoted number usually means the file was generated or edited wrongly), so it is refused.
    ``where`` names the value in the error, e.g. "rounds in exp.toml" or "--rounds".
    """
    base, optional = base_type(tp)
    if from_cli and not isinstance(value, str):
        raise TypeError(f"{where}: a command-line value must be a string, got {value!r}")
    if optional and (value is None or (from_cli and value.lower() == "none")):
        return None
    try:
        out = _parse(base, value) if from_cli else _check(base, value)
        if out is _WRONG and not from_cli:
            out = (
                _tables(base, value, where)
                if typing.get_origin(base) is tuple
                else _table(base, value, where)
            )
    except ValueError:
        out = _WRONG
    if out is not _WRONG:
        return out
    hint = ""
    if isinstance(value, str) and not from_cli and base is not str:
        hint = " (a string: in a file, write numbers, booleans and lists without quotes)"
    raise SplitfedError(f"{where} must be {type_name(tp)}, got {value!r}{hint}")


_WRONG = object()  # a value that is not of the type asked for


def _parse(tp: Any, text: str) -> Any:
    """A command-line flag's text as ``tp`` (ValueError or _WRONG when it is not one)."""
    if tp is bool:
        return text.lower() == "true" if text.lower() in ("true", "false") else _WRONG
    if tp in (int, float, str):
        return tp(text)
    if tp == CUT:  # a block number, or a module's qualified name ("3" on the command line is 3)
        return int(text) if text.strip().isdigit() else text
    if tp == NAMED_OR_TABLE:  # a name, or names; a table is written in a file
        return tuple(v.strip() for v in text.split(",")) if "," in text else text
    if typing.get_origin(tp) is tuple:  # "a,b,c"; integer lists may also be written 3x32x32
        item = typing.get_args(tp)[0]
        return tuple(item(v.strip()) for v in (text.replace("x", ",") if item is int else text).split(","))
    return _WRONG


def _number(value: Any, kinds: type | tuple[type, ...] = int) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check(tp: Any, value: Any) -> Any:
    """A typed value (a file's, a Python caller's) as ``tp``, or _WRONG: nothing is parsed."""
    if tp is bool:
        return value if isinstance(value, bool) else _WRONG
    if tp is int:
        return value if _number(value) else _WRONG
    if tp is float:
        return float(value) if _number(value, (int, float)) else _WRONG
    if tp is str:
        return value if isinstance(value, str) else _WRONG
    if tp == CUT:  # "3" in a file is a quoted number, not a module's name
        return value if _number(value) or (isinstance(value, str) and not value.isdigit()) else _WRONG
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(value, str) and item is str:  # one name for a list of names
            return (value,)
        kinds = (int, float) if item is float else item  # a list of numbers may hold integers
        if isinstance(value, list | tuple) and all(_number(v, kinds) for v in value):
            return tuple(item(v) for v in value)
        return _WRONG
    if tp == NAMED_OR_TABLE:
        if isinstance(value, list | tuple):
            items = [v if isinstance(v, str) else _check(dict, v) for v in value]
            return tuple(items) if value and _WRONG not in items else _WRONG
        return value if isinstance(value, str) else _check(dict, value)
    if (tp is dict or typing.get_origin(tp) is dict) and isinstance(value, dict):  # a table of scalars
        return dict(value) if all(isinstance(v, int | float | str | bool) for v in value.values()) else _WRONG
    return _WRONG


def type_name(tp: Any) -> str:
    """What a type accepts, in words ("an integer or none")."""
    base, optional = base_type(tp)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    if typing.get_origin(base) is dict:
        base = dict
    names[CUT] = "an integer or a module's name"
    names[NAMED_OR_TABLE] = "a name, a table or a list of them"
    if dataclasses.is_dataclass(base):
        return "a table of " + ", ".join(f.name for f in dataclasses.fields(base))
    lists = {int: "a list of integers", float: "a list of numbers"}
    args = typing.get_args(base)
    item = args[0] if args else None
    name = (
        names.get(base)
        or lists.get(item)
        or ("a list of tables" if dataclasses.is_dataclass(item) else "a list of names")
    )
    return name + (" or none" if optional else "")


def dump_toml(values: dict[str, Any], tables: dict[str, dict[str, Any]] | None = None) -> str:
    """A TOML document for the resolved config: ``values`` (scalars, lists, inline tables), then each of
    ``tables`` that holds a value as a ``[name]`` table."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            # Every character TOML forbids raw in a basic string is escaped (a newline in --out would
            # otherwise write a config.toml that --resume cannot read).
            return '"' + "".join(_TOML_ESCAPES.get(ch) or _escape_control(ch) for ch in v) + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {fmt(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else fmt(k)

    def lines(table: dict[str, Any]) -> str:
        return "".join(f"{key(k)} = {fmt(v)}\n" for k, v in table.items())

    return lines(values) + "".join(f"\n[{key(k)}]\n{lines(t)}" for k, t in (tables or {}).items() if t)


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape_control(ch: str) -> str:
    return f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch
