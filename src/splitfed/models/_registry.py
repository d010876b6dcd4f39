"""The model registry, in a module of its own: the built-in models' modules register into it, and
``models/__init__`` imports them, so neither imports the other's package."""

from collections.abc import Callable

from torch import nn

from ..registry import Registry

# A builder takes (num_classes, in_shape, **model_args) and returns a module (a CutModel, an nn.Sequential
# or any module to cut by name); in_shape is one sample's shape: (C, H, W) for images, (d,) for rows.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable:
    """Register a user model builder; a plain ``nn.Sequential`` is cut between its top-level children."""
    return MODELS.register(name)
