"""CUDA graphs for the per-slot computation: on a GPU, a small step is mostly kernel-launch overhead.

A slot's computation (client forward, the main server's step, client backward and optimizer updates, or a
whole-model step) has the same shapes every time it recurs with the same copies, so it can be captured once
as a CUDA graph and replayed with new input batches: one launch instead of hundreds. SFL-V2 and SL step
one client batch at a time and gain the most.

Python-side bookkeeping that a replay does not repeat (bytes on the link, samples and steps per side, the
loss meter's count) is recorded as a delta while capturing and added on every replay. Slot ``k`` of a
replay is charged to the participants of the current slot, position by position. On the CPU, or if a
capture fails, the computation runs eagerly (the reference path).
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

log = logging.getLogger("splitfed")

WARMUP = 2  # eager occurrences of a key before it is captured (lazy initialisation, allocator warm-up)


class Counted(Protocol):
    def counters(self, clients: Sequence[int]) -> dict[str, Any]: ...
    def add_counters(self, clients: Sequence[int], delta: dict[str, Any]) -> None: ...


def _diff(after: Any, before: Any) -> Any:
    if isinstance(after, dict):
        return {k: _diff(v, before.get(k, 0)) for k, v in after.items()}
    if isinstance(after, list):
        return [a - b for a, b in zip(after, before, strict=True)]
    return after - before


def _negate(delta: Any) -> Any:
    if isinstance(delta, dict):
        return {k: _negate(v) for k, v in delta.items()}
    if isinstance(delta, list):
        return [-v for v in delta]
    return -delta


class StepGraphs:
    """Runs ``fn(clients, copies, x, y, sizes)`` eagerly, or as a captured CUDA graph per key."""

    def __init__(self, enabled: bool, counted: Callable[[], list[Counted]] = list) -> None:
        self.enabled = enabled
        self.counted = counted
        self.seen: dict[tuple, int] = {}
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, list]] = {}
        self.pool = torch.cuda.graph_pool_handle() if enabled else None

    def run(
        self,
        fn: Callable[..., None],
        clients: list[int],
        copies: list[int],
        x: torch.Tensor,
        y: torch.Tensor,
        sizes: list[int],
    ) -> None:
        if not self.enabled:
            fn(clients, copies, x, y, sizes)
            return
        key = (tuple(copies), tuple(sizes), tuple(x.shape), x.dtype, tuple(y.shape))
        graph = self.graphs.get(key)
        if graph is not None:
            g, static_x, static_y, deltas = graph
            static_x.copy_(x)
            static_y.copy_(y)
            g.replay()
            for obj, delta in zip(self.counted(), deltas, strict=True):
                obj.add_counters(clients, delta)
            return
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= WARMUP:  # on a side stream, as before any capture (torch.cuda.graphs docs)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn(clients, copies, x, y, sizes)
            torch.cuda.current_stream().wait_stream(side)
            return
        self._capture(key, fn, clients, copies, x, y, sizes)

    def _capture(self, key: tuple, fn: Callable[..., None], clients, copies, x, y, sizes) -> None:
        objs = self.counted()
        before = [o.counters(clients) for o in objs]
        static_x, static_y = x.clone(), y.clone()
        g = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize()
            with torch.cuda.graph(g, pool=self.pool):
                fn(clients, copies, static_x, static_y, sizes)
        except Exception as e:  # the eager path is the reference: fall back to it, say so once
            for o, b in zip(objs, before, strict=True):
                o.add_counters(clients, _negate(_diff(o.counters(clients), b)))
            self.enabled = False
            log.warning(f"CUDA graph capture failed ({type(e).__name__}: {e}); running eagerly")
            fn(clients, copies, x, y, sizes)
            return
        deltas = [_diff(o.counters(clients), b) for o, b in zip(objs, before, strict=True)]
        self.graphs[key] = (g, static_x, static_y, deltas)
        g.replay()  # capturing recorded the step without running it: run it now
