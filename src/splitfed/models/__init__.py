"""Models with named cut points: created by name from a registry, imported as ``pkg.module:builder``, or
given to ``run()`` as Python objects (any ``nn.Module``, cut by a module's name; an ``nn.Sequential`` or
a ``CutModel``, also cut by number; two halves ``(client, server)``; or a builder)."""

import copy
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import registry
from ..errors import SplitfedError
from ._cut import CutModel, check_cut, cut_points, default_cut, split, split_at
from ._registry import MODELS, register_model

Builder = Callable[..., nn.Module]
Halves = tuple[nn.Module, nn.Module]  # (client side, server side), as the user split them
ModelLike = nn.Module | Halves | Builder  # what run(model=...) takes
PYTHON_MODEL = "python:"  # config.model of a model given to run() as an object: python:<name>@<fingerprint>


def resolve_model(name: str) -> ModelLike:
    """What config.model names: a registered builder, or the object at ``pkg.module:attr``."""
    if name.startswith(PYTHON_MODEL):
        raise SplitfedError(
            f"model {name} was given to run() as a Python object; pass it again: run(config, model=...)"
        )
    if ":" in name:
        return import_object(name)
    if name not in MODELS:
        raise SplitfedError(
            f"unknown model {name!r}; choose one of: {', '.join(MODELS)}, "
            "or name a builder as pkg.module:function"
        )
    return MODELS.get(name)


def import_object(spec: str) -> Any:
    """The builder or module at ``pkg.module:attr``, imported from the current directory or PYTHONPATH;
    any way that fails is one SplitfedError."""
    obj = registry.import_object(spec, "model", "a builder as pkg.module:function")
    if not (isinstance(obj, nn.Module) or callable(obj)):
        raise SplitfedError(
            f"model {spec} is a {type(obj).__name__}; it must be an nn.Module or a builder "
            "(num_classes, in_shape) -> nn.Module"
        )
    return obj


def make_model(
    obj: ModelLike,
    num_classes: int,
    in_shape: tuple[int, ...],
    model_args: dict[str, Any] | None = None,
    name: str = "",
) -> nn.Module:
    """The model to split, from a model object: a copy of a given module (its own weights; a Sequential
    as a CutModel), of two halves (a CutModel cut at 1), or what a builder returns for (num_classes,
    in_shape, **model_args). ``name`` says which model in errors."""
    name = name or describe(obj)
    model_args = dict(model_args or {})
    if isinstance(obj, tuple):
        return _halves(obj, name, model_args)
    if isinstance(obj, nn.Module):
        if model_args:
            raise SplitfedError(f"model {name} is a module, not a builder: model_args do not apply to it")
        return _cut_model(copy.deepcopy(obj), name)  # the caller's module stays untouched (and on its device)
    if not callable(obj):
        raise SplitfedError(
            f"model {name} is a {type(obj).__name__}; give an nn.Module, two halves (client, server) "
            "or a builder (num_classes, in_shape) -> nn.Module"
        )
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): the call itself will say
        params = None
    if params is not None:
        try:
            inspect.signature(obj).bind(num_classes, in_shape)
        except TypeError:
            signature = inspect.signature(obj)
            raise SplitfedError(
                f"model {name}: a builder must take (num_classes, in_shape); it takes {signature}"
            ) from None
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        accepted = list(params)[2:]
        for key in model_args:
            if key not in accepted and not takes_any:
                raise SplitfedError(
                    f"model {name} has no argument {key!r}; it accepts: {', '.join(accepted) or 'none'}"
                )
    return _cut_model(obj(num_classes, in_shape, **model_args), name)


def _cut_model(model: Any, name: str) -> nn.Module:
    # Only a Sequential's forward is the composition of its children, so only a Sequential is cut between
    # them by number; any other module is cut by a module's name, through its traced forward.
    if isinstance(model, nn.Sequential):
        return CutModel.from_sequential(model)
    if not isinstance(model, nn.Module):
        raise SplitfedError(
            f"model {name} built a {type(model).__name__}; a builder must return an nn.Module"
        )
    return model


def _halves(obj: tuple, name: str, model_args: dict[str, Any]) -> CutModel:
    """Two halves as the user split them: a CutModel of two blocks, client and server, cut at 1."""
    if len(obj) != 2 or not all(isinstance(m, nn.Module) for m in obj):
        kinds = ", ".join(type(m).__name__ for m in obj)
        raise SplitfedError(f"model halves must be two modules (client, server); got ({kinds})")
    if model_args:
        raise SplitfedError(f"model {name} is given as two modules: model_args do not apply to them")
    client, server = copy.deepcopy(obj)  # one copy of both: a module they share stays shared
    return CutModel(OrderedDict(client=client, server=server), {1: "client"})


def build_model(
    name: str, num_classes: int, in_shape: tuple[int, ...], model_args: dict[str, Any] | None = None
) -> nn.Module:
    """The model config.model names (registered, or ``pkg.module:builder``) for this data."""
    return make_model(resolve_model(name), num_classes, in_shape, model_args, name)


def describe(obj: ModelLike) -> str:
    """A model object's name for messages."""
    if isinstance(obj, nn.Module):
        return type(obj).__name__
    if isinstance(obj, tuple):
        return "+".join(describe(m) for m in obj)
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def import_name(obj: ModelLike) -> str | None:
    """``pkg.module:name`` if the builder ``obj`` can be imported by that name (not from __main__)."""
    if isinstance(obj, nn.Module | tuple):
        return None
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    spec = f"{module}:{qualname}"
    try:
        return spec if import_object(spec) is obj else None
    except SplitfedError:
        return None


def model_label(obj: ModelLike, built: nn.Module) -> str:
    """What config.toml records for a model given as an object: ``pkg.module:name`` for a builder that
    can be imported by that name (the CLI can then rebuild it), else ``python:<name>@<fingerprint>`` of
    the built model's architecture and initial weights (a resumed run refuses another model)."""
    spec = import_name(obj)
    if spec is not None:
        return spec
    h = hashlib.blake2b(repr(built).encode(), digest_size=4)
    for key, t in built.state_dict().items():
        h.update(f"{key}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return f"{PYTHON_MODEL}{describe(obj)}@{h.hexdigest()}"


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


from . import cnn, resnet, vit  # noqa: E402,F401  (fill the registry)

__all__ = [
    "MODELS",
    "CutModel",
    "ModelLike",
    "build_model",
    "check_cut",
    "cut_points",
    "default_cut",
    "import_name",
    "make_model",
    "model_label",
    "num_params",
    "register_model",
    "resolve_model",
    "split",
    "split_at",
]
