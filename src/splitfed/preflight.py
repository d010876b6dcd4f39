"""Preflight: what a config asks of this machine, checked before any data are read or files written —
the model's size (built on the meta device), batch and client counts, the synthetic data's size and the
output directory. Part of the setup (it may use data, models and the machine's limits in ``_limits``);
``setup`` calls its checks again on the data once they are loaded."""

import math
import warnings
from typing import TYPE_CHECKING, Any

from ._limits import check_fits, check_output_dir
from .errors import SplitfedError

if TYPE_CHECKING:
    from .config import Config

# The model each built-in data set trains by default (``model`` unset).
DEFAULT_MODEL = {"digits": "digits_cnn", "fmnist": "cnn4", "cifar10": "resnet18", "synthetic": "cnn4"}

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
    if cfg.profile is not None:  # a bad profile is refused before any training, in one line
        from .engine.profiles import profiles

        profiles(cfg.profile)
        if cfg.processes > 1:
            raise SplitfedError(
                "profile: the edge-time model times a round run in one process (processes = 1)"
            )
    known = known_shape(cfg.dataset, cfg.synthetic.shape)
    if cfg.dataset == "synthetic":
        samples = cfg.synthetic.samples or SYNTHETIC_SAMPLES
        check_synthetic_fits(tuple(cfg.synthetic.shape or SYNTHETIC_SHAPE), samples)
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
    model = cfg.model or DEFAULT_MODEL.get(cfg.dataset, "cnn4")
    if ":" not in model:  # a user's builder (pkg.module:name) is built once, in prepare, which reports it
        check_model(model, num_classes, shape, cfg.model_args)
