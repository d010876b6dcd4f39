"""Small CNNs: the 4-layer (Fashion-)MNIST net of the spec (§5) and a net sized for 8x8 digits."""

from collections import OrderedDict

from torch import nn

from ..errors import SplitfedError
from ._cut import CutModel
from ._norm import NORMS, norm_layer
from ._registry import MODELS


def _normed(layer: nn.Module, norm: str, channels: int, dims: int) -> list[nn.Module]:
    # without a norm a block is the spec's, module for module (checkpoints and parameter order unchanged)
    return [layer] + ([norm_layer(norm, channels, dims)] if norm != "none" else [])


@MODELS.register("cnn4")
def cnn4(num_classes: int, in_shape: tuple[int, int, int], norm: str = "none") -> CutModel:
    """conv5x5(16)+pool, conv5x5(32)+pool, fc(1000), fc: 1,592,258 parameters on 28x28 inputs.

    Cuts: 1 after conv block 1 (16x14x14), 2 after conv block 2 (32x7x7), 3 after fc1 (1000).
    ``norm``: "none" (the spec's net), "batch" or "group": a normalisation after each hidden layer (conv1,
    conv2, fc1; 2,096 parameters more). A control, not the paper's model: at cut 2 the server side then
    normalises fc1's output, over the batch it is given (BatchNorm) or per sample (GroupNorm).
    """
    if norm not in ("none", *NORMS):
        raise SplitfedError(f"cnn4 norm must be 'none', 'batch' or 'group', got {norm!r}")
    c, h, w = in_shape
    conv1, conv2 = nn.Conv2d(c, 16, 5, padding=2), nn.Conv2d(16, 32, 5, padding=2)
    fc1 = nn.Linear(32 * (h // 4) * (w // 4), 1000)
    blocks = OrderedDict(
        conv1=nn.Sequential(*_normed(conv1, norm, 16, 2), nn.ReLU(), nn.MaxPool2d(2)),
        conv2=nn.Sequential(*_normed(conv2, norm, 32, 2), nn.ReLU(), nn.MaxPool2d(2)),
        fc1=nn.Sequential(nn.Flatten(), *_normed(fc1, norm, 1000, 1), nn.ReLU()),
        fc2=nn.Linear(1000, num_classes),
    )
    return CutModel(blocks, {1: "conv1", 2: "conv2", 3: "fc1"})


@MODELS.register("digits_cnn")
def digits_cnn(num_classes: int, in_shape: tuple[int, int, int]) -> CutModel:
    """conv3x3(16), conv3x3(32)+pool, fc(64), fc: a small net for scikit-learn's 8x8 digits.

    Cuts: 1 after conv1 (16x8x8), 2 after conv2 (32x4x4), 3 after fc1 (64).
    """
    c, h, w = in_shape
    blocks = OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU()),
        conv2=nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        fc1=nn.Sequential(nn.Flatten(), nn.Linear(32 * (h // 2) * (w // 2), 64), nn.ReLU()),
        fc2=nn.Linear(64, num_classes),
    )
    return CutModel(blocks, {1: "conv1", 2: "conv2", 3: "fc1"})
