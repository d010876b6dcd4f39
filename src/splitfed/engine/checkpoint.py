"""Checkpoints: one file per trained thing, written atomically, checked whole before anything uses it.

A file is a header line, ``splitfed checkpoint v2 sha256=<hex>``, then the ``torch.save`` bytes it
digests. torch.load reads most damaged files without a word (a flipped bit in a tensor is a wrong
weight), so loading verifies the digest first, then unpickles without running code (weights_only), then
checks the payload against what this run expects before any of it is used: its kind (a run's checkpoint,
a main server's or a fed server's state), the config it was saved with (only ``RESUMABLE_CHANGES`` may
differ), and its structure — every key and type, every tensor's dtype, shape and finiteness — against a
template built from this run's own initial state. Each problem is one SplitfedError naming the file, what
is wrong and how to go on.
"""

import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import Config
from ..errors import SplitfedError
from .side import State, join_states

if TYPE_CHECKING:
    from ..setup import Setup

log = logging.getLogger("splitfed")

CHECKPOINT_VERSION = 2
MAGIC = b"splitfed checkpoint v2 sha256="
ZIP = b"PK\x03\x04"  # how torch.save's files begin: a v1 checkpoint, written before the header existed

# Config fields a resumed run (or a restarted server) may change: they do not alter what was computed so
# far. ``rounds`` may only grow.
RESUMABLE_CHANGES = frozenset({"rounds", "device", "out", "resume", "model_every", "figures"})

KINDS = {
    "run": "run's checkpoint",
    "main_server": "main server's state",
    "fed_server": "fed server's state",
    "client": "client's own state",
}
# How to go on without a server's state file: it cannot be rebuilt alone, since the other server and the
# run directory are at its round or past it.
STATE_REMEDY = (
    "restore it from a copy, or start the deployment over with an empty state_dir and run directory"
)


# --- bytes: header, digest, atomic and durable writes -----------------------------------------------------
def write_checkpoint(path: Path, payload: Any) -> None:
    """Write ``payload`` with its digest, atomically and durably: a kill or a power cut at any moment
    leaves the previous file or this one, whole (tmp file, fsync, rename, fsync of the directory)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getbuffer()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n")
        f.write(body)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # and the new name is too
    finally:
        os.close(directory)


def check_regular_file(path: Path, what: str = "") -> None:
    """Refuse, if ``path`` exists, anything but a regular file (links followed): a directory, a pipe (whose
    read would wait forever) or a device (/dev/zero never ends) where a run keeps its files."""
    if not os.path.lexists(path):
        return
    try:
        mode = path.stat().st_mode
    except OSError as e:  # a link to nothing, a loop of links
        raise SplitfedError(f"{what or path} cannot be used: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a pipe, socket or device"
        raise SplitfedError(
            f"{what or path} is {kind}, not a file; a run directory holds only the files it writes: remove it"
        )


def read_checkpoint(path: Path, remedy: str) -> Any:
    """The payload of the file at ``path`` once its digest matches; nothing of its content is checked."""

    def refuse(why: str) -> SplitfedError:
        return SplitfedError(f"checkpoint {path} {why}; {remedy}")

    check_regular_file(path, f"checkpoint {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise refuse(f"cannot be read ({e.strerror or e})") from None
    if data.startswith(MAGIC):
        head, newline, body = data.partition(b"\n")
        if not newline or hashlib.sha256(body).hexdigest().encode() != head[len(MAGIC) :]:
            raise refuse("fails its checksum (damaged since it was written)")
    elif data.startswith(ZIP):  # a torch.save without the header: v1, or a header cut off to edit it
        raise refuse(
            "has no checksum line (a checkpoint of splitfed before checksums, or one whose first line was "
            "removed): it cannot be verified"
        )
    else:
        raise refuse("is unreadable (not a splitfed checkpoint)")
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as e:  # whatever the unpickler says of a file whose digest matches: it is not ours
        raise refuse(f"is unreadable ({type(e).__name__})") from None


# --- what a checkpoint must hold ---------------------------------------------------------------------
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
    """A run's history: a list of dicts, the n-th for round n, each with its wall-clock time."""


class Tensors:
    """A template's dict of named float tensors of any shapes, each finite (an algorithm's own state)."""


def _json_like(value: Any, depth: int = 0) -> bool:
    if isinstance(value, dict):
        return depth < 8 and all(isinstance(k, str) and _json_like(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return depth < 8 and all(_json_like(v, depth + 1) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def mismatch(expected: Any, value: Any, where: str = "") -> str | None:
    """What is wrong with ``value`` against the template ``expected``, or None.

    A template is a payload of the expected structure: dicts (exactly these keys), lists and tuples
    (exactly this length), tensors (this dtype and shape; the template's values do not matter), scalars
    (this type), or the markers ``Tensor``, ``Each``, ``Equal`` and ``Records``. Every floating tensor
    must be finite.
    """
    name = where or "the payload"
    if isinstance(expected, torch.Tensor):
        expected = Tensor(tuple(expected.shape), expected.dtype)
    if isinstance(expected, Tensor):
        if not isinstance(value, torch.Tensor):
            return f"{name} is {_what(value)}, not a tensor"
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
    if isinstance(expected, Equal):
        return None if value == expected.value else f"{name} is {value!r}, not {expected.value!r}"
    if isinstance(expected, Tensors):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"{name} is {_what(value)}, not a dict of named tensors"
        problems = (mismatch(Tensor(tuple([None] * _dims(v))), v, _key(where, k)) for k, v in value.items())
        return next((p for p in problems if p is not None), None)
    if isinstance(expected, Records):
        if not isinstance(value, list):
            return f"{name} is {_what(value)}, not a list of rounds"
        for n, record in enumerate(value, 1):
            if not isinstance(record, dict) or record.get("round") != n:
                return f"{name}[{n - 1}] is not the record of round {n}"
            if mismatch(float, record.get("wall_time_s")) is not None:
                return f"{name}[{n - 1}] has no wall_time_s"
            # metrics.jsonl is rebuilt from these records: JSON's types only, nothing else unpickled
            if not (isinstance(record.get("algorithm"), str) and _json_like(record)):
                return f"{name}[{n - 1}] is not a round record (JSON numbers, strings, lists and objects)"
        return None
    if isinstance(expected, Each):
        if not isinstance(value, dict if expected.keyed else list):
            return f"{name} is {_what(value)}, not a {'dict' if expected.keyed else 'list'}"
        if expected.keyed and not all(type(k) is int for k in value):
            return f"{name} is keyed by {_what(next(k for k in value if type(k) is not int))}, not integers"
        items = list(value.items()) if expected.keyed else list(enumerate(value))
        problems = (mismatch(expected.item, v, f"{where}[{k!r}]") for k, v in items)
        return next((p for p in problems if p is not None), None)
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return f"{name} is {_what(value)}, not a dict"
        missing = [k for k in expected if k not in value]
        if missing:
            return f"{_key(where, missing[0])} is missing"
        extra = [k for k in value if k not in expected]
        if extra:
            return f"{_key(where, extra[0])} is not expected here"
        problems = (mismatch(e, value[k], _key(where, k)) for k, e in expected.items())
        return next((p for p in problems if p is not None), None)
    if isinstance(expected, list | tuple):
        kind = "list" if isinstance(expected, list) else "tuple"
        if not isinstance(value, list | tuple) or len(value) != len(expected):
            return f"{name} is {_what(value)}, not a {kind} of {len(expected)}"
        problems = (
            mismatch(e, v, f"{where}[{i}]") for i, (e, v) in enumerate(zip(expected, value, strict=True))
        )
        return next((p for p in problems if p is not None), None)
    want = expected if isinstance(expected, type) else type(expected)
    if want is float:  # an integer is a number too; a bool is not
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, want)
    return None if ok else f"{name} is {_what(value)}, not {want.__name__}"


def _dims(value: Any) -> int:
    return value.dim() if isinstance(value, torch.Tensor) else 0


def _key(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _what(value: Any) -> str:
    """A value, briefly: what it is, not its content (a state's worth of numbers is not a message)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def config_changes(saved: dict[str, Any], config: Config) -> list[str]:
    """The fields, other than RESUMABLE_CHANGES, in which ``config`` differs from ``saved`` (a
    ``to_dict()``), as "key (old -> new)". A field the saved config predates counts as its default."""
    now, default = config.to_dict(), Config().to_dict()
    changes = [
        f"{k} ({saved.get(k, default[k])!r} -> {v!r})"
        for k, v in now.items()
        if k not in RESUMABLE_CHANGES and saved.get(k, default[k]) != v
    ]
    return changes + [f"{k} ({v!r} -> no such field)" for k, v in saved.items() if k not in now]


def check_resumable(saved: dict[str, Any], config: Config, what: str, remedy: str) -> None:
    """Refuse to continue ``what`` (saved with ``saved``) with ``config`` where that changes its results."""
    changes = config_changes(saved, config)
    if changes:
        raise SplitfedError(f"cannot resume {what} with a different config: {', '.join(changes)}; {remedy}")
    if isinstance(saved.get("rounds"), int) and config.rounds < saved["rounds"]:
        raise SplitfedError(
            f"cannot resume {what} with fewer rounds ({config.rounds}) than it was set to ({saved['rounds']})"
        )


# --- saving and loading, checked --------------------------------------------------------------------
def save_checkpoint(path: Path, kind: str, config: Config, payload: dict[str, Any]) -> None:
    """Write ``payload`` as a ``kind`` checkpoint (see KINDS) of a run with ``config``."""
    header = {"version": CHECKPOINT_VERSION, "kind": kind, "config": config.to_dict()}
    write_checkpoint(path, header | payload)


def load_checkpoint(
    path: Path,
    kind: str,
    config: Config,
    expect: dict[str, Any],
    remedy: str,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The payload of a ``kind`` checkpoint saved with ``config`` (but for RESUMABLE_CHANGES) that
    matches the template ``expect`` (see ``mismatch``); anything else is a SplitfedError ending in
    ``remedy``, how to go on without the file."""
    saved = read_checkpoint(path, remedy)
    if not isinstance(saved, dict):
        raise SplitfedError(f"checkpoint {path} holds {_what(saved)}, not a dict; {remedy}")
    version = saved.pop("version", None)
    if version == CHECKPOINT_VERSION:
        found = saved.pop("kind", None)
        if found != kind:
            raise SplitfedError(
                f"checkpoint {path} is {'a ' + KINDS[found] if found in KINDS else f'of kind {found!r}'}, "
                f"not a {KINDS[kind]}; {remedy}"
            )
        saved_config = saved.pop("config", None)
        if not isinstance(saved_config, dict):
            raise SplitfedError(f"checkpoint {path} does not say which config it was saved with; {remedy}")
        check_resumable(
            saved_config,
            config,
            str(path),
            "change them back to continue from it, or start afresh in another directory",
        )
    else:  # v1 had no config to check the run against: a file marked so would skip that check
        raise SplitfedError(
            f"checkpoint {path} is not a splitfed v{CHECKPOINT_VERSION} checkpoint (version {version!r}); "
            f"{remedy}"
        )
    if upgrade is not None:
        saved = upgrade(saved)
    problem = mismatch(expect, saved)
    if problem is None and "history" in expect and len(saved["history"]) != saved["round"]:
        problem = f"history holds {len(saved['history'])} rounds, round says {saved['round']}"
    if problem is not None:
        raise SplitfedError(f"checkpoint {path} cannot be used: {problem}; {remedy}")
    return saved


# What ClientStates.state_dict() holds (engine/client_state.py).
CLIENT_STATES = {"memory": Each(Tensors(), keyed=True), "files": Each(int, keyed=True), "version": int}


# --- a run's checkpoint: one per algorithm, saved every round ----------------------------------------
def save_run_checkpoint(
    path: Path,
    algorithm: str,
    config: Config,
    rnd: int,
    model: dict[str, State],
    chain: list[str],
    fed_server: dict[str, torch.Tensor],
    client_states: dict[str, Any],
    streams: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """Everything ``algorithm`` needs to continue after round ``rnd``: every part of its model (with the
    optimizer state), its fed server's own state, its clients' own states, the samplers, the history;
    ``chain``: the in-model parts in model order (what export composes)."""
    payload = {
        "algorithm": algorithm,
        "round": rnd,
        "model": {name: state.to_dict() for name, state in model.items()},
        "chain": list(chain),
        "fed_server": fed_server,
        "client_states": client_states,
        "streams": streams,
        "history": history,
    }
    save_checkpoint(path, "run", config, payload)


def _upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """A run checkpoint from before algorithms had parts (w_c, w_s) in today's layout."""
    if "w_c" in saved and "model" not in saved:
        saved["model"] = {"client": saved.pop("w_c"), "server": saved.pop("w_s", None)}
        saved |= {"chain": ["client", "server"], "fed_server": {}}
        saved["client_states"] = {"memory": {}, "files": {}, "version": 0}
    return saved


def load_run_checkpoint(
    path: Path, algorithm: str, setup: "Setup", parts: dict[str, State]
) -> dict[str, Any]:
    """``algorithm``'s checkpoint, checked against this run: its config, and the shapes of this run's own
    initial ``parts`` and samplers (generic over whatever ``State.to_dict()`` holds)."""
    expect = {
        "algorithm": Equal(algorithm),
        "round": int,
        "model": {name: state.to_dict() for name, state in parts.items()},
        "chain": Each(str),
        "fed_server": Tensors(),
        "client_states": CLIENT_STATES,
        "streams": setup.context().streams.state_dict(),
        "history": Records(),
    }
    remedy = f"delete it to retrain {algorithm} from round 1"
    return load_checkpoint(path, "run", setup.cfg, expect, remedy, upgrade=_upgrade)


def read_run_checkpoint(path: Path) -> dict[str, Any]:
    """A run checkpoint read back outside its run (export, tests): its digest and kind are checked and it
    must hold a round, the model's parts and their order; whether they fit a model is the reader's to
    check. ``w_c`` and ``w_s`` are the model cut once (the first part; the later ones joined)."""
    remedy = "export another round, or rerun"
    saved = read_checkpoint(path, remedy)
    if isinstance(saved, dict) and saved.get("version") == CHECKPOINT_VERSION and saved.get("kind") != "run":
        raise SplitfedError(f"checkpoint {path} is not a run's checkpoint; {remedy}")
    if isinstance(saved, dict):
        saved = _upgrade(saved)
    missing = [
        k for k in ("round", "model", "chain", "history") if not isinstance(saved, dict) or k not in saved
    ]
    if missing:
        raise SplitfedError(f"checkpoint {path} cannot be used: it has no {', '.join(missing)}; {remedy}")
    try:
        states = [State.from_dict(saved["model"][name]) for name in saved["chain"]]
    except (KeyError, TypeError):
        raise SplitfedError(f"checkpoint {path} cannot be used: its model lacks a part; {remedy}") from None
    saved["w_c"], saved["w_s"] = states[0].to_dict(), join_states(states[1:]).to_dict()
    return saved
