"""Models with named cut points, created by name from a registry."""

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import SplitfedError
from ..registry import Registry
from ._cut import CutModel, split

# A builder takes (num_classes, in_shape=(C, H, W), **model_args) and returns a CutModel or nn.Sequential.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable:
    """Register a user model builder; a plain ``nn.Sequential`` is cut between its top-level children."""
    return MODELS.register(name)


def build_model(
    name: str, num_classes: int, in_shape: tuple[int, int, int], model_args: dict[str, Any] | None = None
) -> CutModel:
    builder = MODELS.get(name)
    model_args = dict(model_args or {})
    params = inspect.signature(builder).parameters
    accepted = list(params)[2:]
    for key in model_args:
        if key not in accepted:
            raise SplitfedError(
                f"model {name} has no argument {key!r}; it accepts: {', '.join(accepted) or 'none'}"
            )
    return CutModel.from_sequential(builder(num_classes, in_shape, **model_args))


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


from . import cnn, resnet, vit  # noqa: E402,F401  (fill the registry)

__all__ = ["MODELS", "CutModel", "build_model", "num_params", "register_model", "split"]
