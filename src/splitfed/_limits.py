"""Limits that come from the machine (memory, CPUs, the file system), checked before the work they guard.

A request too large for the machine (a width of 100000, 10^9 synthetic samples, a gzip bomb) would
otherwise end in an allocator error, the kernel's OOM killer or an hour of swapping. Each check here
costs next to nothing, runs before the allocation it guards and raises SplitfedError saying what was
asked and what fits. Memory means the host's: data and models are built there before any move to a GPU.
"""

import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SplitfedError

if TYPE_CHECKING:
    from .config import Config

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


# Bytes per parameter while training: float32 weights, their gradients, the optimizer's momentum and
# the aggregation's sum. Per-client copies come on top and depend on the algorithm (the engine's).
TRAINING_BYTES_PER_PARAM = 4 * 4


def check_model(
    name: str, num_classes: int, in_shape: tuple[int, ...], model_args: dict[str, Any] | None = None
) -> int:
    """Build model ``name`` on the meta device (no memory, no time), refuse it if it cannot be built
    from these arguments or would not fit in memory while training; return its parameter count."""
    params = _count_params(name, num_classes, tuple(in_shape), dict(model_args or {}))
    args_text = "".join(f" {k}={v}" for k, v in (model_args or {}).items())
    check_fits(
        f"model {name}{args_text} ({params:,} parameters, trained)",
        params * TRAINING_BYTES_PER_PARAM,
        TRAINING_BYTES_PER_PARAM,
        "parameters",
    )
    return params


_PARAM_COUNTS: dict[tuple, int] = {}  # a sweep checks hundreds of points with a handful of models


def _count_params(name: str, num_classes: int, in_shape: tuple[int, ...], model_args: dict[str, Any]) -> int:
    import torch

    from .models import MODELS, build_model, num_params

    key = (MODELS.get(name), num_classes, in_shape, repr(sorted(model_args.items())))
    if key in _PARAM_COUNTS:
        return _PARAM_COUNTS[key]
    try:
        # Meta tensors have shapes and no storage. Warnings (e.g. "Initializing zero-element tensors"
        # for inputs too small for the net) are prepare's forward pass's to report, with the reason.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(name, num_classes, in_shape, model_args)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        args_text = "".join(f" {k}={v}" for k, v in model_args.items())
        raise SplitfedError(
            f"model {name}{args_text} cannot be built for inputs {list(in_shape)}: {first}"
        ) from None
    _PARAM_COUNTS[key] = num_params(model)
    return _PARAM_COUNTS[key]


def check_batches(batch_size: int, batch_alloc: str, client_sizes: list[int]) -> None:
    """Refuse a batch size no client can fill: b above every client's data (equal batches), or above
    the mean client's (proportional batches, b_n = b·N·|D_n|/Σ|D|). A batch is then the client's data
    repeated within the batch, a silent change of the algorithm rather than a larger batch.

    A client smaller than b is fine (non-IID partitions make some): its batches cross epochs.
    """
    if not client_sizes:
        return
    if batch_alloc == "proportional":
        limit, of = sum(client_sizes) // len(client_sizes), "the mean client's"
    else:
        limit, of = max(client_sizes), "the largest client's"
    if batch_size > limit:
        raise SplitfedError(
            f"batch_size={batch_size} exceeds {of} {limit} training samples "
            f"({len(client_sizes)} clients): no client can fill a batch; use batch_size <= {limit}"
        )


def preflight(cfg: "Config", check_out: bool = True) -> None:
    """Everything about ``cfg`` that can be checked against this machine before any data are read or
    files written: the output directory, the synthetic data's size, the model's size, and batch and
    client counts against a training set whose size the config fixes (synthetic). Writes nothing."""
    from .data.datasets import SYNTHETIC_SAMPLES, SYNTHETIC_SHAPE, check_synthetic_fits, known_shape

    if check_out:
        check_output_dir(cfg.out or "runs")
    known = known_shape(cfg.dataset, cfg.synthetic_shape)
    if cfg.dataset == "synthetic":
        samples = cfg.synthetic_samples or SYNTHETIC_SAMPLES
        check_synthetic_fits(tuple(cfg.synthetic_shape or SYNTHETIC_SHAPE), samples)
        # the partition's own checks need the data; these two need only the count, known already
        for name in ("clients", "batch_size"):
            if getattr(cfg, name) > samples:
                raise SplitfedError(f"{name}={getattr(cfg, name)} exceeds the {samples} training samples")
    if known is None:  # a registered data set: its shape is known once loaded
        return
    shape, num_classes = known
    per_sample = 4 * math.prod(shape)
    # a batch is gathered, augmented and sent through the model: a few float32 copies of it at once
    check_fits(
        f"batch_size={cfg.batch_size} (samples of {list(shape)})",
        4 * cfg.batch_size * per_sample,
        4 * per_sample,
        "samples per batch",
    )
    from .setup import DEFAULT_MODEL  # the setup's choice of model per data set, not a copy of it

    model = cfg.model or DEFAULT_MODEL.get(cfg.dataset, "cnn4")
    if ":" not in model:  # a user's builder (pkg.module:name) is built once, in prepare, which reports it
        check_model(model, num_classes, shape, cfg.model_args)
