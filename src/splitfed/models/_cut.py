"""The one seam every model exposes: an ordered list of named blocks and the cut layers between them."""

import itertools
from collections import OrderedDict

from torch import nn

from ..errors import SplitfedError


class CutModel(nn.Sequential):
    """An ``nn.Sequential`` of named blocks plus its cut points.

    ``cut_points[Lc]`` names the last block the client holds when the model is cut at layer ``Lc``; the
    paper's numbering (e.g. ResNet-18's Lc = 1..4 after stages 1..4) stays separate from block indices.
    """

    def __init__(self, blocks: "OrderedDict[str, nn.Module]", cut_points: dict[int, str]) -> None:
        super().__init__(blocks)
        names = list(blocks)
        for lc, name in cut_points.items():
            if name not in blocks or name == names[-1]:
                raise ValueError(f"cut point {lc} -> {name!r} is not an inner block boundary")
        self.cut_points = dict(sorted(cut_points.items()))

    @classmethod
    def from_sequential(cls, model: nn.Sequential) -> "CutModel":
        """Any user ``nn.Sequential``: cut layer k puts the first k children on the client."""
        if isinstance(model, CutModel):
            return model
        blocks = OrderedDict(model.named_children())
        if len(blocks) < 2:
            raise SplitfedError("a model to split needs at least 2 top-level blocks")
        names = list(blocks)
        return cls(blocks, {k: names[k - 1] for k in range(1, len(names))})

    def __getitem__(self, idx: int | slice) -> nn.Module:
        # A slice of blocks is a plain Sequential: its cut points would not carry over.
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    @property
    def middle_cut(self) -> int:
        cuts = list(self.cut_points)
        return cuts[(len(cuts) - 1) // 2]

    def check_cut(self, cut_layer: int) -> None:
        if cut_layer not in self.cut_points:
            lo, hi = min(self.cut_points), max(self.cut_points)
            raise SplitfedError(f"cut_layer {cut_layer} is outside this model's range {lo}..{hi}")


def split(model: nn.Sequential, cut_layer: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Client-side and server-side halves at ``cut_layer``; they share the model's modules (no copies)."""
    model = CutModel.from_sequential(model)
    model.check_cut(cut_layer)
    names = list(model._modules)
    last = names.index(model.cut_points[cut_layer]) + 1
    blocks = list(model.named_children())
    return nn.Sequential(OrderedDict(blocks[:last])), nn.Sequential(OrderedDict(blocks[last:]))


def split_at(model: nn.Sequential, cuts: list[int]) -> list[nn.Sequential]:
    """The model cut at each of ``cuts`` (increasing cut layers): len(cuts) + 1 consecutive pieces that
    share the model's modules; ``split_at(m, [c])`` is ``split(m, c)``."""
    model = CutModel.from_sequential(model)
    for c in cuts:
        model.check_cut(c)
    if sorted(set(cuts)) != list(cuts):
        raise SplitfedError(f"cuts must increase, got {cuts}")
    names = list(model._modules)
    bounds = [0, *(names.index(model.cut_points[c]) + 1 for c in cuts), len(names)]
    blocks = list(model.named_children())
    return [nn.Sequential(OrderedDict(blocks[a:b])) for a, b in itertools.pairwise(bounds)]
