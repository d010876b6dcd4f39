"""The run's model, a step of ``prepare``: built under its own seed for the loaded data, cut, and checked
where a user's mistake would otherwise surface far away (a builder that fails, NaN or inf in the inputs
or weights, an output or a loss that does not fit the data, a half with nothing to train); each refusal
is one line naming what was wrong."""

from typing import Any

import torch
from torch import nn

from ._rng import derive_seed
from .config import Config
from .data import Dataset
from .engine.optim import LossFn
from .errors import SplitfedError
from .models import (
    MODELS,
    ModelLike,
    check_cut,
    cut_points,
    default_cut,
    describe,
    make_model,
    model_label,
    resolve_model,
)
from .preflight import DEFAULT_MODEL, check_model


def builder_of(cfg: Config, model: ModelLike | None) -> tuple[str, ModelLike]:
    """The model's name and what builds it: config.model's (or the data set's default), or ``model``."""
    if model is None:
        name = cfg.model or DEFAULT_MODEL.get(cfg.dataset, "cnn4")
        return name, resolve_model(name)
    return describe(model), model


def run_model(
    cfg: Config, model: ModelLike | None, name: str, builder: ModelLike, data: Dataset, loss: LossFn | None
) -> tuple[nn.Module, str, int | str]:
    """The initial model, checked on the data, its name as the config records it, and its cut."""
    if model is None and name in MODELS:  # a registered model fits in memory, or one line
        check_model(name, data.num_classes, data.in_shape, cfg.model_args)
    # The initial model: its own seed, and the global RNG left as it was. A module given as an object
    # keeps its own weights; the seed is for builders.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed_for("init"), "init"))
        built = build(builder, name, data.num_classes, data.in_shape, cfg.model_args)
    if model is not None:
        name = model_label(model, built)
    cut_layer = cfg.cut_layer if cfg.cut_layer is not None else default_cut(built, name)
    check_cut(built, cut_layer, name)
    check_finite(built, name, data)
    check_forward(built, name, cfg.dataset, data, loss)
    return built, name, cut_layer


def build(
    builder: ModelLike, name: str, num_classes: int, in_shape: tuple[int, ...], model_args: dict[str, Any]
) -> nn.Module:
    """The model for this data; a builder that fails on them is one line (registered ones were checked
    on the meta device already, so this is in practice a user's builder)."""
    try:
        return make_model(builder, num_classes, in_shape, model_args, name)
    except SplitfedError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SplitfedError(  # noqa: B904 (the cause is in the message; no traceback for a user mistake)
            f"model {name} cannot be built for inputs {list(in_shape)}: {first}"
        )
    except SystemExit as e:  # left to propagate, the command would exit as the builder said, 0 included
        raise SplitfedError(
            f"model {name}'s builder called sys.exit({e.code!r}); a builder returns the model"
        ) from None


def check_finite(model: nn.Module, name: str, data: Dataset) -> None:
    """NaN or inf in the inputs or the initial weights would train into NaN metrics that say nothing of
    where they came from: refused where they enter, naming them."""
    for subset, x in (("training", data.train_x), ("test", data.test_x), ("validation", data.val_x)):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and len(x):
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
            if bool(bad.any()):
                raise SplitfedError(
                    f"the {subset} inputs hold NaN or inf in {int(bad.sum())} of {len(x)} samples (the "
                    f"first: sample {int(bad.nonzero()[0])}); drop or repair them before training"
                )
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for tensor_name, t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise SplitfedError(
                    f"model {name}'s initial {kind} {tensor_name} holds NaN or inf; initialise it with "
                    "finite values"
                )


def check_forward(model: nn.Module, name: str, dataset: str, data: Dataset, loss: LossFn | None) -> None:
    """Two training samples through the model (and the loss): the shapes fit, or one line says why."""
    x, y = data.train_x[:2], data.train_y[:2]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        kind = "" if x.dtype == torch.float32 else f" of {x.dtype}"  # integer inputs: say so
        raise SplitfedError(  # noqa: B904 (the cause is in the message; no traceback for a user mistake)
            f"model {name} cannot take {dataset} inputs {list(data.in_shape)}{kind}: {first}"
        )
    if not isinstance(out, torch.Tensor) or out.shape != (len(x), data.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SplitfedError(
            f"model {name} outputs {got} for {len(x)} samples; it must output [{len(x)}, "
            f"{data.num_classes}], one score per class"
        )
    if not out.is_floating_point():
        raise SplitfedError(f"model {name} outputs {out.dtype} scores; they must be floating point")
    if not bool(torch.isfinite(out).all()):
        raise SplitfedError(
            f"model {name} outputs NaN or inf for the first training samples (finite inputs and weights); "
            "check its forward"
        )
    if loss is not None:
        check_loss(loss, out, y)


def check_loss(loss: LossFn, out: torch.Tensor, y: torch.Tensor) -> None:
    """The user's loss on a valid output and labels returns the batch's mean loss, a scalar float."""
    if not callable(loss):
        raise SplitfedError(f"loss must be a function loss(output, target); got {type(loss).__name__}")
    try:
        value = loss(out, y)
    except Exception as e:  # the user's function, on a valid output and labels: any error, one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SplitfedError(
            f"loss fails on the model's output and labels ({type(e).__name__}: {first})"
        ) from None
    if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point()):
        got = f"shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise SplitfedError(
            f"loss must return the batch's mean loss as a scalar float tensor; it returned {got}"
        )


def check_halves(model: nn.Module, name: str, cut_layer: int | str, halves: tuple[nn.Module, ...]) -> None:
    """Each half (client side, server side) has parameters to train: else the split is not a split."""
    for side, half in zip(("client", "server"), halves, strict=True):
        if not any(True for _ in half.parameters()):
            # a Sequential's blocks by type; a traced half's by name (its children are the model's paths)
            sequential = isinstance(half, nn.Sequential)
            blocks = ", ".join(type(m).__name__ if sequential else n for n, m in half.named_children())
            raise SplitfedError(
                f"cut_layer {cut_layer} leaves model {name}'s {side} side without parameters "
                f"({blocks}); choose a cut with trainable layers on both sides (cuts: "
                f"{', '.join(map(str, cut_points(model, named=isinstance(cut_layer, str))))})"
            )
