"""A run's models as plain PyTorch: ``splitfed export RUN --algorithm A --out model.pt [--round R]``.

The model is rebuilt from the run directory alone (config.toml and data.json: the builder, its arguments,
the inputs' shape and classes), given the weights of the algorithm's checkpoint (its last round) or of a
per-round file (``model_every``), and saved as ``torch.save(model.state_dict())``. Loading it needs only
PyTorch and a model built the same way: ``model.load_state_dict(torch.load("model.pt"))``.
"""

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._rng import derive_seed
from .config import Config
from .engine.checkpoint import read_run_checkpoint
from .engine.side import State
from .errors import SplitfedError
from .models import PYTHON_MODEL, ModelLike, resolve_model, split
from .report import read_metrics

log = logging.getLogger("splitfed")


def save_state_dict(model: nn.Module, path: Path) -> Path:
    """``torch.save(model.state_dict(), path)`` with every tensor on the CPU, written atomically."""
    state = model.state_dict()
    cpu = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    cpu._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]  # modules' versions
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(cpu, tmp)
    os.replace(tmp, path)
    return path


def load_model(
    run_dir: str | Path,
    algorithm: str | None = None,
    *,
    round: int | None = None,
    model: ModelLike | None = None,
) -> nn.Module:
    """Algorithm ``algorithm``'s model of a run (the only one if the run has one), after its last
    checkpointed round or after ``round`` (saved with ``model_every``), rebuilt as the run built it.

    ``model``: the run's model object, for a run that was given one in Python (config.toml then names it
    ``python:...``); a builder or module with the same architecture (its weights are replaced).
    """
    return _load(Path(run_dir), algorithm, round, model)[0]


def export_model(
    run_dir: str | Path,
    out: str | Path,
    algorithm: str | None = None,
    *,
    round: int | None = None,
    model: ModelLike | None = None,
) -> Path:
    """Write ``load_model(run_dir, algorithm, round=round, model=model)``'s state_dict to ``out``, as
    ``torch.save(model.state_dict(), out)`` (on the CPU); return its path."""
    loaded, algorithm, rnd = _load(Path(run_dir), algorithm, round, model)
    path = save_state_dict(loaded, Path(out))
    log.info(f"wrote {path}: the {algorithm} model after round {rnd} ({len(loaded.state_dict())} tensors)")
    return path


def _load(
    run: Path, algorithm: str | None, rnd: int | None, model: ModelLike | None
) -> tuple[nn.Module, str, int]:
    if not (run / "config.toml").is_file():
        raise SplitfedError(f"{run} is not a run directory: it has no config.toml")
    cfg = Config.from_toml(run / "config.toml")
    if algorithm is None:
        if len(cfg.algorithm) > 1:
            raise SplitfedError(
                f"{run} holds {len(cfg.algorithm)} algorithms ({', '.join(cfg.algorithm)}); choose one "
                "(--algorithm A, or algorithm=)"
            )
        algorithm = cfg.algorithm[0]
    if algorithm not in cfg.algorithm:
        raise SplitfedError(f"{run} has no algorithm {algorithm!r}; it ran: {', '.join(cfg.algorithm)}")
    built, example = _rebuild(run, cfg, model)
    checkpoint = run / "checkpoints" / f"{algorithm}.pt"
    saved = read_run_checkpoint(checkpoint) if checkpoint.is_file() else None
    if saved is not None and rnd in (None, saved["round"]):
        w_c, w_s = State.from_dict(saved["w_c"]), State.from_dict(saved["w_s"])
        _load_states(built, cfg, w_c, w_s, checkpoint, example)
        return built, algorithm, saved["round"]
    if rnd is None:  # no checkpoint: a deployment's run (its fed server keeps state elsewhere) has the model
        path = run / "models" / f"{algorithm}.pt"
        if not path.is_file():
            raise SplitfedError(f"{run} has no checkpoint of {algorithm}: it has not finished a round")
        metrics = run / "metrics.jsonl"
        records = read_metrics(metrics, cfg.algorithm) if metrics.is_file() else []
        rnd = max((r["round"] for r in records if r["algorithm"] == algorithm), default=0)
    else:
        path = run / "models" / algorithm / f"round-{rnd}.pt"
    if not path.is_file():
        rounds = sorted(int(p.stem.removeprefix("round-")) for p in path.parent.glob("round-*.pt"))
        saved_text = (
            f"the rounds saved are {', '.join(map(str, rounds))}"
            if rounds
            else "it saved none (model_every = 0: final models only)"
        )
        last = f"; its checkpoint holds round {saved['round']}" if saved is not None else ""
        raise SplitfedError(f"{run} has no model of {algorithm} after round {rnd}: {saved_text}{last}")
    try:
        built.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # a damaged file, or a model not built like the run's
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SplitfedError(
            f"{path} does not load into the run's model ({type(e).__name__}: {first})"
        ) from None
    return built, algorithm, rnd


def _rebuild(run: Path, cfg: Config, model: ModelLike | None) -> tuple[nn.Module, torch.Tensor]:
    """The run's model with its initial weights: its builder (or the given object) on the data's shape;
    and an input batch of zeros of that shape (where a model cut by name takes its crossing shapes)."""
    from .setup import build, load_data

    if model is None and cfg.model is not None and cfg.model.startswith(PYTHON_MODEL):
        raise SplitfedError(
            f"{run}'s model was given to run() as a Python object ({cfg.model}); export it from Python "
            "with splitfed.export_model(run_dir, out, algorithm, model=...)"
        )
    info = _data_info(run)
    if info is None:  # a run directory from before data.json: the shapes come from the data themselves
        data = load_data(cfg)
        info = {
            "in_shape": list(data.in_shape),
            "num_classes": data.num_classes,
            "input_dtype": data.train_x.dtype,
        }
    builder = model if model is not None else resolve_model(cfg.model or "")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed_for("init"), "init"))
        built = build(builder, cfg.model or "", info["num_classes"], tuple(info["in_shape"]), cfg.model_args)
    return built, torch.zeros(2, *info["in_shape"], dtype=info["input_dtype"])


def _data_info(run: Path) -> dict[str, Any] | None:
    path = run / "data.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        dtype = getattr(torch, info.get("input_dtype", "float32"))  # older runs: float inputs
        if not isinstance(dtype, torch.dtype):
            raise TypeError(dtype)
        return {
            "in_shape": [int(s) for s in info["in_shape"]],
            "num_classes": int(info["num_classes"]),
            "input_dtype": dtype,
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SplitfedError(
            f"{path} is damaged; it should hold the data's in_shape and num_classes"
        ) from None


def _load_states(
    model: nn.Module, cfg: Config, w_c: State, w_s: State, source: Path, example: torch.Tensor
) -> None:
    """The checkpoint's flat states into the rebuilt model's halves, once their sizes agree."""
    from .setup import assemble

    assert cfg.cut_layer is not None  # config.toml is resolved
    for half, state in zip(split(model, cfg.cut_layer, example), (w_c, w_s), strict=True):
        sizes = (sum(p.numel() for p in half.parameters()), sum(b.numel() for b in half.buffers()))
        if (state.params.numel(), state.buffers.numel()) != sizes:
            raise SplitfedError(
                f"{source} holds {state.params.numel()} parameters for a half of {sizes[0]}: the model "
                "given is not the run's"
            )
    assemble(model, cfg.cut_layer, w_c, w_s, example)
