"""The normalisation layers a model may be built with: ``norm = "batch" | "group"``."""

import math

from torch import nn

NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """BatchNorm, or GroupNorm in up to 32 groups, over ``channels`` of images (dims 2) or features (1)."""
    # GroupNorm keeps each sample's forward independent of the rest of the batch, which is what makes
    # split training with BatchNorm-free client sides exactly equal to centralized SGD (spec §2).
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    # images: up to 32 groups, as ResNet's GroupNorm has it (a width they do not divide is refused, by
    # torch); features: the largest count up to 32 that divides them (fc1's 1000 in 8)
    groups = min(32, channels) if dims == 2 else math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)
