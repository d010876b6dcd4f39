"""What produced a run: the code (splitfed's version and, from a git checkout, its commit and whether the
tree was clean), the software (Python, torch, CUDA) and the machine (device, CPU threads, determinism).

A run directory's ``provenance.json`` holds one entry per session: the first start and every resume (a
resumed run may continue on another machine, or with other code: both are on record)."""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).resolve().parent


# a study's committed results (experiments/*/results/: its tables, the grid a sweep copies there) are what
# runs write, not what produces them: a sweep that updates them must not make its own runs "dirty"
OUTPUTS = ":(top,exclude)experiments/*/results/**"


def git_state(folder: Path = SOURCE) -> dict[str, Any]:
    """The commit of the checkout ``folder`` is in and whether its tree is clean (no tracked file changed
    but the studies' results); {} where it is not a git checkout (an installed wheel) or git is missing."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", OUTPUTS))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "clean": not dirty}


def _version() -> str:
    # from the installed metadata: importing the package's own __version__ would import the package,
    # which imports the runner, which imports this module
    try:
        return importlib.metadata.version("splitfed")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _cpu_device_name() -> str:
    """The CPU's model and the vector instructions torch's kernels use on it ("AMD EPYC (AVX2)"): virtual
    machines often report a bare model name for several CPU generations, and the instruction set decides a
    run's last float bits and its speed (a ResNet-18 round took three times as long with AVX2 as with
    AVX-512 on two machines that both said "AMD EPYC")."""
    return f"{_cpu_name()} ({torch.backends.cpu.get_cpu_capability()})"


def session(device: torch.device, deterministic: bool) -> dict[str, Any]:
    """This session's entry: when, what code and software, on what machine."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_device_name()
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "splitfed": _version(),
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "deterministic": deterministic,
        "platform": platform.platform(),
        "argv": sys.argv,
    }


def recorded(path: Path, device: torch.device, deterministic: bool) -> str:
    """The sessions on record in ``path`` (provenance.json) and this one after them, as the file's new
    text (the run directory writes it)."""
    sessions: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            sessions = old if isinstance(old, list) else []
        except ValueError:  # torn or edited: start the record again rather than refuse the run
            sessions = []
    sessions.append(session(device, deterministic))
    return json.dumps(sessions, indent=1) + "\n"
