"""Each client's own state that outlives a round (SCAFFOLD's control variate c_i, FedBN's normalisation
layers), kept by client id for an algorithm that never sees where it lives.

A client that never trained has none (an empty dict), so 10,000 clients cost what the ones that trained
hold. Up to ``memory_bytes`` stay in memory; beyond, the least recently used go to files in ``spill_dir``
(each written with a digest, as checkpoints are) and come back when their client trains again.

With checkpoints (a run directory), a checkpoint writes each state that changed since the last one to a
file of its own and names the files, so it costs what changed in the round, not what is held. A file is
never rewritten: a client's newer state goes to a new file (its version in the name), and the old one is
deleted once a checkpoint no longer names it (``saved``). A run killed between checkpoints resumes from
exactly the states its last checkpoint named; files written after it are deleted on resume.
"""

import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_checkpoint, write_checkpoint

Tensors = dict[str, torch.Tensor]


def _nbytes(state: Tensors) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class ClientStates:
    """Per-client tensors by client id: ``get(n)`` (a dict the caller may change), ``put(n, state)``."""

    def __init__(
        self, memory_bytes: int = 1 << 30, spill_dir: Path | None = None, device: torch.device | str = "cpu"
    ) -> None:
        self.memory_bytes, self.device = memory_bytes, torch.device(device)
        self._spill_dir = spill_dir
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.memory: OrderedDict[int, Tensors] = OrderedDict()  # least recently used first
        self.sizes: dict[int, int] = {}  # bytes of each state in memory, as it was put (callers change them)
        self.held = 0  # bytes in memory
        self.dirty: set[int] = set()  # in memory only: changed since it was last written
        self.files: dict[int, int] = {}  # client -> the version of its state on disk
        self.version = 0  # the last version written
        self.garbage: list[Path] = []  # files no state names any more, deleted once a checkpoint agrees

    @property
    def spill_dir(self) -> Path:
        if self._spill_dir is None:  # in-memory training (no run directory): a private temporary folder
            self._tmp = tempfile.TemporaryDirectory(prefix="splitfed-client-states-")
            self._spill_dir = Path(self._tmp.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

    def set_dir(self, path: Path) -> None:
        """Keep the files in ``path`` (beside the run's checkpoint)."""
        self._spill_dir = path

    def _file(self, n: int, version: int) -> Path:
        return self.spill_dir / f"{n}-{version}.pt"

    def __len__(self) -> int:
        """Clients holding a state."""
        return len(self.memory.keys() | self.files.keys())

    def get(self, n: int) -> Tensors:
        """Client n's state (empty if it has none yet)."""
        if n in self.memory:
            self.memory.move_to_end(n)
            return self.memory[n]
        if n in self.files:
            path = self._file(n, self.files[n])
            state = read_checkpoint(path, "restore the run directory, or start the run afresh")
            state = {k: v.to(self.device) for k, v in state.items()}
            self._hold(n, state)
            return state
        return {}

    def put(self, n: int, state: Tensors) -> None:
        """Client n's state after its round (an empty dict is no state)."""
        if n in self.memory:
            self._drop(n)
        if n in self.files:
            self.garbage.append(self._file(n, self.files.pop(n)))
        self.dirty.discard(n)
        if state:
            self._hold(n, state)
            self.dirty.add(n)
        self._evict()

    def _hold(self, n: int, state: Tensors) -> None:
        self.memory[n] = state
        self.sizes[n] = _nbytes(state)
        self.held += self.sizes[n]

    def _drop(self, n: int) -> None:
        del self.memory[n]
        self.held -= self.sizes.pop(n)

    def _evict(self) -> None:
        """Least recently used first, to disk (if changed) until what stays fits; the newest stays."""
        while self.held > self.memory_bytes and len(self.memory) > 1:
            n = next(iter(self.memory))
            if n in self.dirty:
                self._write(n)
            self._drop(n)

    def _write(self, n: int) -> None:
        self.version += 1
        write_checkpoint(self._file(n, self.version), {k: v.cpu() for k, v in self.memory[n].items()})
        self.files[n] = self.version
        self.dirty.discard(n)

    # --- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint names: every state changed since the last one written to its file first."""
        for n in sorted(self.dirty):
            self._write(n)
        return {"memory": {}, "files": dict(self.files), "version": self.version}

    def saved(self) -> None:
        """A checkpoint naming the current files is on disk: files no state names any more can go."""
        for path in self.garbage:
            path.unlink(missing_ok=True)
        self.garbage.clear()

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """The states a checkpoint named (``memory``: held inline, as a checkpoint may also hold them)."""
        self.memory, self.sizes, self.held = OrderedDict(), {}, 0
        for n, state in saved["memory"].items():
            self._hold(int(n), {k: v.to(self.device) for k, v in state.items()})
        self.dirty = set(self.memory)
        self.files = {int(n): int(v) for n, v in saved["files"].items()}
        self.version = int(saved["version"])
        # newer files of the interrupted run may lie beside these; no checkpoint names them
        named = {self._file(n, v) for n, v in self.files.items()}
        for path in self.spill_dir.glob("*.pt"):
            if path not in named:
                path.unlink(missing_ok=True)  # (each rank of a distributed run does the same)
