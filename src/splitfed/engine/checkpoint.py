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
from .template import Each, Equal, Records, Tensors, describe, mismatch

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
        raise SplitfedError(f"checkpoint {path} holds {describe(saved)}, not a dict; {remedy}")
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
