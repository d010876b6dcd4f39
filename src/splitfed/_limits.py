"""Limits that come from the machine (memory, CPUs, the file system), checked before the work they guard.

A request too large for the machine (a width of 100000, 10^9 synthetic samples, a gzip bomb) would
otherwise end in an allocator error, the kernel's OOM killer or an hour of swapping. Each check here
costs next to nothing, runs before the allocation it guards and raises SplitfedError saying what was
asked and what fits. Memory means the host's: data and models are built there before any move to a GPU.
"""

import os
from pathlib import Path

from .errors import SplitfedError

_CGROUP_LIMITS = (  # (limit, usage) files: cgroup v2, then v1; a container's share of the machine
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):  # absent, "max", or unreadable: no limit known here
        return None


def available_memory() -> int | None:
    """Bytes of memory this process can still take: MemAvailable, lowered to a cgroup's remaining
    share where one is set; os.sysconf's free pages where /proc is absent; None if nothing says."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file, usage_file in _CGROUP_LIMITS:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1 says "none" as ~2^63
            available = min(available, max(0, limit - usage))
    return available


def size_text(n: float) -> str:
    """A byte count for people: 1.5 GiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(what: str, needed: int, per_unit: int = 0, unit: str = "") -> None:
    """Refuse ``what`` when its ``needed`` bytes exceed the memory available now.

    With ``per_unit`` (bytes per sample, per parameter...) the message also says how many ``unit``
    would fit, so the user learns the number to ask for instead.
    """
    available = available_memory()
    if available is None or needed <= available:
        return
    fits = available // per_unit if per_unit else 0
    hint = f"; at most {fits} {unit} fit" if fits else f"; not one of its {unit} fits" if per_unit else ""
    raise SplitfedError(
        f"{what} needs {size_text(needed)} of memory, but {size_text(available)} is available{hint}"
    )


def max_threads() -> int:
    """The most CPU threads a run may ask for on this machine.

    Threads beyond the CPUs only oversubscribe them, but a run keeps its thread count when resumed
    (results repeat bit for bit only at equal threads), so a run started on a larger machine must still
    resume here: 4x this machine's CPUs, and never fewer than 64. 2^31 and beyond overflow torch's C int.
    """
    return max(64, 4 * (os.cpu_count() or 1))


def check_threads(threads: int, where: str = "threads") -> None:
    """Refuse a thread (or worker process) count this machine cannot sensibly run."""
    if threads > max_threads():
        raise SplitfedError(
            f"{where}={threads} asked; at most {max_threads()} allowed on this machine "
            f"({os.cpu_count() or 1} CPUs)"
        )


def check_output_dir(path: str | Path, what: str = "--out") -> None:
    """Refuse an output directory that cannot be created or written, before anything is written.

    ``path`` may exist (a directory, writable) or not (its nearest existing ancestor must be a
    writable directory, so that mkdir -p succeeds). Creates nothing. As root, permission bits do not
    stop writes and os.access says so too; a read-only file system is still caught.
    """
    text = str(path)
    if "\0" in text:
        raise SplitfedError(f"{what} {text!r} contains a NUL byte, which no file name can hold")
    target = Path(path)
    try:
        if os.path.lexists(target) and not target.exists():
            raise SplitfedError(f"{what} {target} is a symbolic link to nothing")
        existing = target
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            if existing == target:
                raise SplitfedError(f"{what} {target} is a file, not a directory")
            raise SplitfedError(f"{what} {target} cannot be created: {existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            why = (
                "is not writable" if existing == target else f"cannot be created: {existing} is not writable"
            )
            raise SplitfedError(f"{what} {target} {why}")
    except OSError as e:  # e.g. a name too long, a symlink loop
        raise SplitfedError(f"{what} {target} cannot be used: {e.strerror or e}") from None
