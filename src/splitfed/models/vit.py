"""A small vision transformer: patch embedding, pre-norm transformer blocks, mean-pooled head.

Attention is written with plain tensor ops (no ``nn.MultiheadAttention``) so that the engine can run the
blocks through ``torch.func.functional_call`` and ``torch.func.vmap`` over stacked parameter copies.
No dropout and no class token: the head averages the tokens.
"""

from collections import OrderedDict

import torch
from torch import nn

from ..errors import SplitfedError
from ._cut import CutModel
from ._registry import MODELS


class PatchEmbed(nn.Module):
    """Non-overlapping patches (conv with kernel = stride = patch) to tokens [B, T, D], plus positions."""

    def __init__(self, channels: int, patch: int, width: int, tokens: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, width, patch, stride=patch)
        self.pos = nn.Parameter(torch.empty(1, tokens, width))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of each sample."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        att = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Head(nn.Module):
    """LayerNorm, mean over the tokens, linear classifier."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).mean(dim=1))


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SplitfedError(f"vit {name} must be a positive integer, got {value!r}")
    return value


@MODELS.register("vit")
def vit(
    num_classes: int,
    in_shape: tuple[int, int, int],
    patch: int = 7,
    width: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2,
) -> CutModel:
    """Small ViT: patch embedding, pre-norm blocks, mean-pooled head; 138,890 parameters by default on 28x28.

    ``depth`` blocks of ``width`` channels on (H/patch)·(W/patch) tokens. Blocks: patch_embed,
    block1..block{depth}, head. Cut Lc in 1..depth: Lc = 1 puts only the patch embedding on the client,
    Lc = k + 1 also blocks 1..k (the last block always stays on the server). See docs/models.md.
    """
    for name, value in (("patch", patch), ("width", width), ("depth", depth), ("heads", heads)):
        _positive_int(name, value)
    c, h, w = in_shape
    if h % patch or w % patch:
        raise SplitfedError(f"vit patch {patch} must divide the image size {h}x{w}")
    if width % heads:
        raise SplitfedError(f"vit width {width} must be divisible by heads {heads}")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float) or mlp_ratio <= 0:
        raise SplitfedError(f"vit mlp_ratio must be a positive number, got {mlp_ratio!r}")
    if width * mlp_ratio != int(width * mlp_ratio):
        raise SplitfedError(f"vit width x mlp_ratio must be a whole number, got {width} x {mlp_ratio}")
    blocks: OrderedDict[str, nn.Module] = OrderedDict(
        patch_embed=PatchEmbed(c, patch, width, (h // patch) * (w // patch))
    )
    for k in range(1, depth + 1):
        blocks[f"block{k}"] = Block(width, heads, int(width * mlp_ratio))
    blocks["head"] = Head(width, num_classes)
    cuts = {1: "patch_embed"} | {k + 1: f"block{k}" for k in range(1, depth)}
    return CutModel(blocks, cuts)
