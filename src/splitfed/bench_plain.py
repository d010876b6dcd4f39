"""The plain-PyTorch references of the speed benchmark (bench.py): the floor (the whole model on the giant
batch N·b) and centralized training written the usual way, each eager and, on CUDA, as captured graphs; a
ratio is taken against whichever way of a reference was faster in the same run."""

import copy
import statistics

import torch
import torch.nn.functional as F

from .engine.context import Context
from .engine.side import channels_last
from .setup import Setup

REFERENCES = ("floor", "torch")


def fastest(times: dict[str, list[float]], labels: list[str]) -> str | None:
    """The label of the fastest (lowest median round time) among the timed ``labels``."""
    timed = [label for label in labels if times.get(label)]
    return min(timed, key=lambda label: statistics.median(times[label])) if timed else None


class PlainTorch:
    """Training without the engine: the model's own modules and torch.optim.SGD, at the config's precision
    and memory format (``channels_last``: the module and its batches converted once, the usual way).
    ``giant``: τ steps on the union batch N·b (the floor); else τ·N steps of b (centralized written the usual
    way). ``graphed`` (CUDA only): each step (forward, backward, SGD update) captured once as a CUDA graph
    and replayed on new batches, the whole-network capture of the torch.cuda.graphs docs."""

    def __init__(self, setup: Setup, ctx: Context, giant: bool, graphed: bool = False) -> None:
        self.model = copy.deepcopy(setup.model).to(setup.device).train()
        self.channels_last = setup.cfg.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # 4-D weights only
        self.opt = torch.optim.SGD(self.model.parameters(), lr=setup.cfg.lr)
        self.ctx, self.giant = ctx, giant
        self.bf16 = setup.cfg.precision == "bf16"
        self.graphed = graphed and setup.device.type == "cuda"
        self.graph: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # set to None, also inside a capture: backward then allocates the gradients from the graph's pool
        self.opt.zero_grad(set_to_none=True)
        # as the engine does: the forward under bf16 autocast, the loss and the weights in float32
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            out = self.model(x)
        F.cross_entropy(out.float(), y).backward()
        self.opt.step()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        static_x, static_y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up steps on a side stream before capture (torch docs)
            for _ in range(3):
                self._step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(static_x, static_y)
        self.graph = (graph, static_x, static_y)

    def run_round(self, rnd: int, clients: list[int]) -> None:
        ctx, n = self.ctx, len(clients)
        steps, size = (ctx.tau, n * ctx.cfg.batch_size) if self.giant else (ctx.tau * n, ctx.cfg.batch_size)
        for _ in range(steps):
            x, y = ctx.streams.batch(ctx.num_clients, size)
            if self.channels_last:
                x = channels_last(x)
            if not self.graphed:
                self._step(x, y)
                continue
            if self.graph is None:
                self._capture(x, y)
            graph, static_x, static_y = self.graph
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
