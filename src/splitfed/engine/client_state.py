"""Each client's own state that outlives a round (SCAFFOLD's control variate c_i, FedBN's normalisation
layers), kept by client id for an algorithm that never sees where it lives.

A client that never trained has none (an empty dict), so 10,000 clients cost what the ones that trained
hold. Up to ``memory_bytes`` stay in memory; beyond, the least recently used go to files in ``spill_dir``
(each written with a digest, as checkpoints are) and come back when their client trains again. A file is
never rewritten: a client's newer state goes to a new file, and the old one is deleted once a checkpoint
no longer names it, so a run killed between checkpoints resumes from exactly the states its last
checkpoint saw.
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
        self.held = 0  # bytes in memory
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

    def _file(self, n: int, version: int) -> Path:
        return self.spill_dir / f"{n}-{version}.pt"

    def __len__(self) -> int:
        return len(self.memory) + len(self.files)

    def get(self, n: int) -> Tensors:
        """Client n's state (empty if it has none yet)."""
        if n in self.memory:
            self.memory.move_to_end(n)
            return self.memory[n]
        if n in self.files:
            path = self._file(n, self.files[n])
            state = read_checkpoint(path, "restore the run directory, or start the run afresh")
            return {k: v.to(self.device) for k, v in state.items()}
        return {}

    def put(self, n: int, state: Tensors) -> None:
        """Client n's state after its round (an empty dict is no state)."""
        if n in self.memory:
            self.held -= _nbytes(self.memory.pop(n))
        if n in self.files:
            self.garbage.append(self._file(n, self.files.pop(n)))
        if not state:
            return
        self.memory[n] = state
        self.held += _nbytes(state)
        while self.held > self.memory_bytes and len(self.memory) > 1:
            self._spill(next(iter(self.memory)))

    def _spill(self, n: int) -> None:
        state = self.memory.pop(n)
        self.held -= _nbytes(state)
        self.version += 1
        write_checkpoint(self._file(n, self.version), {k: v.cpu() for k, v in state.items()})
        self.files[n] = self.version

    # --- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the states in memory, and which file holds each spilled one."""
        return {
            "memory": {n: dict(s) for n, s in self.memory.items()},
            "files": dict(self.files),
            "version": self.version,
        }

    def saved(self) -> None:
        """A checkpoint naming the current files is on disk: files no state names any more can go."""
        for path in self.garbage:
            path.unlink(missing_ok=True)
        self.garbage.clear()

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.memory = OrderedDict(
            (int(n), {k: v.to(self.device) for k, v in s.items()}) for n, s in saved["memory"].items()
        )
        self.held = sum(_nbytes(s) for s in self.memory.values())
        # newer spills of the interrupted run may lie beside these; no checkpoint names them
        named = {self._file(n, v) for n, v in saved["files"].items()}
        if self._spill_dir is not None and self._spill_dir.exists():
            for path in self._spill_dir.glob("*.pt"):
                if path not in named:
                    path.unlink()
        self.files = {int(n): int(v) for n, v in saved["files"].items()}
        self.version = int(saved["version"])
