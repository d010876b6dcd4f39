"""ResNet-18, CIFAR style (spec §5): 3x3 stem without max-pool, four stages of two BasicBlocks."""

from collections import OrderedDict

import torch
from torch import nn

from ..errors import SplitfedError
from ._cut import CutModel
from ._norm import NORMS, norm_layer
from ._registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@MODELS.register("resnet18")
def resnet18(
    num_classes: int, in_shape: tuple[int, int, int], norm: str = "batch", width: int = 64
) -> CutModel:
    """ResNet-18 for 32x32 inputs; 11,173,962 parameters at width 64 with 10 classes.

    ``norm``: "batch" or "group"; ``width``: channels of the stem and stage 1 (stages double it).
    Cut Lc in 1..4: the client holds the stem and stages 1..Lc.
    """
    if norm not in NORMS:
        raise SplitfedError(f"resnet18 norm must be 'batch' or 'group', got {norm!r}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise SplitfedError(f"resnet18 width must be a positive integer, got {width!r}")
    widths = [width, 2 * width, 4 * width, 8 * width]
    blocks: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(
            nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), norm_layer(norm, width), nn.ReLU()
        )
    )
    c_in = width
    for i, c_out in enumerate(widths):
        stride = 1 if i == 0 else 2
        blocks[f"layer{i + 1}"] = nn.Sequential(
            BasicBlock(c_in, c_out, stride, norm), BasicBlock(c_out, c_out, 1, norm)
        )
        c_in = c_out
    blocks["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
    return CutModel(blocks, {1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"})
