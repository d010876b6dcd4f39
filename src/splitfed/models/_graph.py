"""Cutting a model that is not an ``nn.Sequential``: trace its ``forward`` with torch.fx and split the graph
after a named module.

The client side is every node that runs up to and including the last node made inside the named module
(its functional calls too: a block's ``out + identity``); the rest is the server side. Values that depend
only on the weights (a position table, a parameter read with ``self.pos``) go to the side that uses
them, so they never cross. Where several tensors cross the cut (a skip connection around the cut module,
a block's identity path), the engine still sees ONE smashed tensor per batch: the client piece flattens
each crossing tensor to [n, -1] and concatenates them along dim 1, and the next piece slices them back
into their recorded shapes. Bytes are then counted by the existing link code, and autograd carries the
smashed gradient back through the slices.

The pieces are ``fx.GraphModule``s holding the original model's own submodules and parameters (no
copies): training the pieces trains the model, and the model loads into plain PyTorch as it is.
"""

import math
import operator
import os
import traceback
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import SplitfedError

WAY_OUT = "pass the two halves as model=(client, server), or an nn.Sequential / CutModel"


@dataclass(frozen=True)
class Crossing:
    """One tensor that crosses a cut: the node producing it and one sample's shape."""

    node: fx.Node
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def top_level_order(model: nn.Module, name: str = "") -> list[str]:
    """The model's top-level children in the order its forward first calls them: the cut points listed
    in messages, and the default cut's candidates."""
    graph = trace(model, name)
    order: list[str] = []
    for node in graph.nodes:
        top = str(node.target).split(".")[0]
        if node.op == "call_module" and top not in order:
            order.append(top)
    return order


def trace(model: nn.Module, name: str = "") -> fx.Graph:
    """The model's forward as a graph; a forward torch.fx cannot trace is one line naming the construct
    (torch.fx's own words) and the user's line that holds it."""
    try:
        tracer = fx.Tracer()
        tracer.proxy_buffer_attributes = True  # a buffer sliced by a size (a causal mask) stays in the graph
        return tracer.trace(model)
    except Exception as e:  # any construct fx refuses raises its own type: all are the user's model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SplitfedError(
            f"model {name or type(model).__name__} cannot be traced by torch.fx{_user_line(e)}: {first}; "
            f"to cut it anyway, {WAY_OUT}"
        ) from None


def _user_line(e: BaseException) -> str:
    """`` at file.py:42 (`if x.sum() > 0:`)`` for the last frame outside torch, if any."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(torch_dir)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno} (`{(f.line or '').strip()}`)"


def split_graph(model: nn.Module, cuts: list[str], example: torch.Tensor, name: str = "") -> list[nn.Module]:
    """``model`` cut after each module of ``cuts`` (in the order the forward calls them): len(cuts) + 1
    GraphModules sharing the model's modules. ``example`` is a small input batch (its values do not
    matter): it gives the crossing tensors' shapes. The names are checked to be modules (``check_cut``)."""
    name = name or type(model).__name__
    graph = trace(model, name)
    gm = fx.GraphModule(model, graph, type(model).__name__)
    _propagate_shapes(gm, example)
    nodes = list(graph.nodes)
    from_input = _from_input(nodes)
    stage = _stages(nodes, cuts, from_input, name)
    batch = len(example)
    pieces = []
    incoming: list[Crossing] = []
    for k in range(len(cuts) + 1):
        outgoing = [] if k == len(cuts) else _crossings(nodes, stage, from_input, k, batch, cuts[k], name)
        pieces.append(_piece(gm, nodes, stage, k, incoming, outgoing, f"{type(model).__name__}_{k}"))
        incoming = outgoing
    _check_no_shared_parameters(pieces, cuts, name)
    return pieces


def _propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    # In eval mode and without gradients: BatchNorm's running statistics and the RNG stay as they were.
    modes = {m: m.training for m in gm.modules()}
    try:
        with torch.no_grad():
            ShapeProp(gm.eval()).propagate(example)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _from_input(nodes: list[fx.Node]) -> dict[fx.Node, bool]:
    """Whether each node's value depends on the model's input (else only on weights and constants)."""
    out: dict[fx.Node, bool] = {}
    for n in nodes:
        out[n] = n.op == "placeholder" or any(out[a] for a in n.all_input_nodes)
    return out


def _stages(
    nodes: list[fx.Node], cuts: list[str], from_input: dict[fx.Node, bool], name: str
) -> dict[fx.Node, int]:
    """Each node's piece: how many cut modules ran before it. Nodes that depend on no input (weights,
    constants) go to the first piece that uses them."""
    position = {}
    for c in cuts:
        calls = [i for i, n in enumerate(nodes) if c in _inside(n)]
        if not calls:
            raise SplitfedError(f"model {name}'s forward never calls module {c!r}: it cannot be cut after it")
        position[c] = calls[-1]
    order = [position[c] for c in cuts]
    if order != sorted(order) or len(set(order)) != len(order):
        raise SplitfedError(f"cuts {cuts} must name modules in the order model {name}'s forward calls them")
    stage = {n: sum(i > p for p in order) for i, n in enumerate(nodes)}
    for n in reversed(nodes):
        if not from_input[n] and n.op != "output" and n.users:
            stage[n] = min(stage[u] for u in n.users)
    return stage


def _inside(n: fx.Node) -> set[str]:
    """The modules (qualified names) whose forward was running when the tracer made this node."""
    return {path for path, _ in n.meta.get("nn_module_stack", {}).values()}


def _crossings(
    nodes: list[fx.Node],
    stage: dict[fx.Node, int],
    from_input: dict[fx.Node, bool],
    k: int,
    batch: int,
    cut: str,
    name: str,
) -> list[Crossing]:
    """The values made in pieces 0..k and used after piece k, in graph order; each must be a floating
    tensor with the batch first (it travels as smashed data)."""
    out = []
    for n in nodes:
        if stage[n] > k or not any(stage[u] > k for u in n.users):
            continue
        meta = n.meta.get("tensor_meta")
        what = f"model {name} cut after {cut!r}: {n.name} (made by {_made_by(n)}) crosses the cut"
        if not isinstance(meta, torch.fx.passes.shape_prop.TensorMetadata):
            raise SplitfedError(f"{what} and is not a tensor; cut where only tensors cross, or {WAY_OUT}")
        if not meta.dtype.is_floating_point:
            raise SplitfedError(
                f"{what} as {meta.dtype}; only floating tensors can cross (they carry a gradient back)"
            )
        if not from_input[n]:
            raise SplitfedError(
                f"{what}: it is made from weights alone and used on both sides (weights tied across the "
                f"cut); cut elsewhere, or {WAY_OUT}"
            )
        if len(meta.shape) == 0 or meta.shape[0] != batch:
            raise SplitfedError(
                f"{what} with shape {list(meta.shape)}, not one row per sample; only tensors with the "
                f"batch first can cross: cut elsewhere, or {WAY_OUT}"
            )
        out.append(Crossing(n, tuple(meta.shape[1:])))
    dtypes = {n.meta["tensor_meta"].dtype for n in (c.node for c in out)}
    if len(dtypes) > 1:
        raise SplitfedError(f"model {name} cut after {cut!r}: tensors of {sorted(map(str, dtypes))} cross")
    return out


def _made_by(n: fx.Node) -> str:
    target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    return f"{n.op} {target}"


def _piece(
    gm: fx.GraphModule,
    nodes: list[fx.Node],
    stage: dict[fx.Node, int],
    k: int,
    incoming: list[Crossing],
    outgoing: list[Crossing],
    name: str,
) -> fx.GraphModule:
    """Piece k as its own graph: unpack the incoming smashed tensor, run piece k's nodes, pack what
    crosses the next cut (the last piece returns the model's output)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if k == 0:
        for n in nodes:
            if n.op == "placeholder":
                env[n] = g.node_copy(n)
    else:
        smashed = g.placeholder("smashed")
        if len(incoming) == 1:  # one tensor crosses: it travels as it is, in its own shape
            env[incoming[0].node] = smashed
        else:
            start = 0
            for c in incoming:
                cols = g.call_function(
                    operator.getitem, (smashed, (slice(None), slice(start, start + c.numel)))
                )
                # contiguous: the kernels after the cut then see the memory layout they saw uncut (a
                # strided view takes other CPU code paths, which round differently)
                shaped = g.call_method("reshape", (cols, (-1, *c.shape)))
                env[c.node] = g.call_method("contiguous", (shaped,))
                start += c.numel
    for n in nodes:
        if stage[n] == k and n.op not in ("placeholder", "output"):
            env[n] = g.node_copy(n, lambda a: env[a])
    if outgoing:
        values = [env[c.node] for c in outgoing]
        if len(values) == 1:
            g.output(values[0])
        else:
            flat = [g.call_method("flatten", (v, 1)) for v in values]
            g.output(g.call_function(torch.cat, (flat, 1)))
    else:
        (out,) = (n for n in nodes if n.op == "output")
        g.output(fx.node.map_arg(out.args[0], lambda a: env[a]))
    return fx.GraphModule(gm, g, name)


def _check_no_shared_parameters(pieces: list[nn.Module], cuts: list[str], name: str) -> None:
    # A parameter in two pieces would be trained by two sides and averaged by two rules.
    owner: dict[int, int] = {}
    for k, piece in enumerate(pieces):
        for pname, p in piece.named_parameters():
            if owner.setdefault(id(p), k) != k:
                raise SplitfedError(
                    f"model {name} cut after {cuts}: parameter {pname} is used on both sides of the cut "
                    f"(weights tied across it); cut elsewhere, or {WAY_OUT}"
                )
