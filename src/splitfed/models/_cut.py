"""The one seam every model exposes: an ordered list of named blocks and the cut layers between them.

A cut is a block number of an ``nn.Sequential`` / ``CutModel`` (cut between its top-level children), or
the qualified name of any module, after which the client side ends (the model's traced graph is split:
``_graph.py``); any model can be cut by name, only a Sequential by number.
"""

import itertools
from collections import OrderedDict

import torch
from torch import nn

from ..errors import SplitfedError
from ._graph import split_graph, top_level_order

Cut = int | str


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


def cut_points(model: nn.Module, named: bool = False) -> list[Cut]:
    """Where ``model`` can be cut, in order: a Sequential's block numbers (or, ``named``, the names of
    the blocks they end with); any other model's top-level children in the order its forward calls
    them (every module can be named; these are the ones listed and the default's candidates)."""
    if isinstance(model, nn.Sequential):
        cuts = CutModel.from_sequential(model).cut_points
        return list(cuts.values()) if named else list(cuts)
    return list(top_level_order(model)[:-1])


def default_cut(model: nn.Module, name: str = "") -> Cut:
    """A CutModel's middle cut. Any other model is cut where the user says: a guessed cut of a graph may
    split a position table from its batch or tie weights across the cut, and its halves are the
    experiment, so an unnamed cut is one line suggesting one."""
    if isinstance(model, nn.Sequential):
        return CutModel.from_sequential(model).middle_cut
    if not cut_points(model):
        raise SplitfedError(
            f"model {name or type(model).__name__} is a {type(model).__name__} whose forward calls fewer "
            "than two modules: there is nothing to cut between; give an nn.Sequential, two halves (client, "
            "server), or a module made of submodules"
        )
    raise SplitfedError(
        f"model {name or type(model).__name__} is not an nn.Sequential: name the module the client side ends "
        f"with, e.g. cut_layer = {_suggest(model)!r} (its modules in order: "
        f"{', '.join(map(str, cut_points(model)))})"
    )


def _suggest(model: nn.Module) -> str:
    """The middle one of the model's top-level children that hold weights (the forward's order)."""
    children = dict(model.named_children())
    weighted = [c for c in cut_points(model) if any(True for _ in children[str(c)].parameters())]
    points = weighted or cut_points(model) or ["<a module>"]
    return str(points[len(points) // 2])


def check_cut(model: nn.Module, cut_layer: Cut, name: str = "") -> None:
    """A number cuts a Sequential only; a name must be a module's (``split`` checks its place)."""
    name = name or type(model).__name__
    if isinstance(cut_layer, str):
        if not cut_layer or cut_layer not in dict(model.named_modules()):
            raise SplitfedError(
                f"model {name} has no module {cut_layer!r}; cut after one of its modules, e.g. "
                f"{', '.join(map(repr, cut_points(model, named=True)[:8]))}"
            )
        return
    if not isinstance(model, nn.Sequential):
        raise SplitfedError(
            f"model {name} is a {type(model).__name__}, not an nn.Sequential: cut it by a module's name, "
            f"e.g. cut_layer = {_suggest(model)!r} (its modules in order: "
            f"{', '.join(map(str, cut_points(model)))})"
        )
    CutModel.from_sequential(model).check_cut(cut_layer)


def split(
    model: nn.Module, cut_layer: Cut, example: torch.Tensor | None = None
) -> tuple[nn.Module, nn.Module]:
    """Client-side and server-side halves at ``cut_layer``; they share the model's modules (no copies).

    A name cuts the traced graph after that module; ``example`` (a small input batch) then gives the
    shapes of the tensors that cross."""
    if isinstance(cut_layer, str):
        client, server = split_at(model, [cut_layer], example)
        return client, server
    model = CutModel.from_sequential(model)
    model.check_cut(cut_layer)
    names = list(model._modules)
    last = names.index(model.cut_points[cut_layer]) + 1
    blocks = list(model.named_children())
    return nn.Sequential(OrderedDict(blocks[:last])), nn.Sequential(OrderedDict(blocks[last:]))


def split_at(model: nn.Module, cuts: list[Cut], example: torch.Tensor | None = None) -> list[nn.Module]:
    """The model cut at each of ``cuts`` (increasing cut layers, or module names in the order the
    forward calls them): len(cuts) + 1 consecutive pieces that share the model's modules;
    ``split_at(m, [c])`` is ``split(m, c)``."""
    if any(isinstance(c, str) for c in cuts):
        if not all(isinstance(c, str) for c in cuts):
            raise SplitfedError(f"cuts {cuts} mix numbers and module names; give all as names")
        if example is None:
            raise ValueError("a cut by name needs an example input (the crossing tensors' shapes)")
        for c in cuts:
            check_cut(model, c)
        return split_graph(model, [str(c) for c in cuts], example)
    model = CutModel.from_sequential(model)
    for c in cuts:
        model.check_cut(c)
    if sorted(set(cuts)) != list(cuts):
        raise SplitfedError(f"cuts must increase, got {cuts}")
    names = list(model._modules)
    bounds = [0, *(names.index(model.cut_points[c]) + 1 for c in cuts), len(names)]
    blocks = list(model.named_children())
    return [nn.Sequential(OrderedDict(blocks[a:b])) for a, b in itertools.pairwise(bounds)]
