"""The generic round loop: participants, training, evaluation, divergence, metrics, checkpoints.

It is the same for every algorithm; an algorithm only supplies ``run_round``.
"""

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._rng import generator
from ..algorithms import ALGORITHMS, Algorithm
from ..config import Config
from ..data import ClientStreams, Dataset
from ..errors import SplitfedError
from .context import Context
from .link import Link
from .metrics import SplitModel, divergence
from .side import State

CHECKPOINT_VERSION = 1


@dataclass
class Setup:
    """Everything shared by the algorithms of one run: same data, partition, model and initial weights."""

    cfg: Config  # resolved: model, cut layer and partition option filled in
    data: Dataset  # on the run's device
    parts: list[torch.Tensor]  # training-set indices per client
    model: nn.Module  # the full CutModel, holding the initial weights
    client_module: nn.Module
    server_module: nn.Module
    init_c: State
    init_s: State
    flops_per_sample: tuple[float, float]  # training FLOPs per sample: client side, server side
    divergence_idx: list[torch.Tensor]  # the fixed per-client samples for divergence

    @property
    def data_sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    def tau(self) -> int:
        """Local iterations per round: local_iters, else E·⌈mean |D_n| / b⌉ (the same for every client,
        since MiniBatch-SFL's clients step in lockstep)."""
        if self.cfg.local_iters:
            return self.cfg.local_iters
        mean_size = sum(self.data_sizes) / len(self.parts)
        return self.cfg.local_epochs * math.ceil(mean_size / self.cfg.batch_size)

    def batch_sizes(self) -> list[int]:
        """b_n: b for every client, or ∝ |D_n| with Σ b_n = N·b (largest remainders; at least 1)."""
        n, b = len(self.parts), self.cfg.batch_size
        if self.cfg.batch_alloc == "equal":
            return [b] * n
        sizes = self.data_sizes
        exact = [n * b * s / sum(sizes) for s in sizes]
        alloc = [math.floor(e) for e in exact]
        by_remainder = sorted(range(n), key=lambda i: alloc[i] - exact[i])
        for i in by_remainder[: n * b - sum(alloc)]:
            alloc[i] += 1
        return [max(1, a) for a in alloc]

    def context(self) -> Context:
        # A fresh sampler per algorithm: every algorithm sees the same batch sequence from the same seed.
        union = torch.cat(self.parts)  # stream N: the union, in client order
        streams = ClientStreams(self.data, [*self.parts, union], self.cfg.seed_for("sampling"))
        return Context(
            self.cfg,
            streams,
            self.client_module,
            self.server_module,
            self.init_c,
            self.init_s,
            self.tau(),
            self.batch_sizes(),
            self.data_sizes,
            Link(len(self.parts), self.cfg.wire_dtype),
        )


def participants(cfg: Config, rnd: int) -> list[int]:
    """The clients of round ``rnd``: all, or ``clients_per_round`` drawn without replacement."""
    if cfg.clients_per_round is None:
        return list(range(cfg.clients))
    perm = torch.randperm(cfg.clients, generator=generator(cfg.seed_for("sampling"), "clients", rnd))
    return sorted(perm[: cfg.clients_per_round].tolist())


def measure_divergence(setup: Setup, split: SplitModel, w_c: State, w_s: State) -> dict[str, float]:
    """Client-side and server-side average gradient divergence at (w_c, w_s) (spec §6)."""
    grads_c, grads_s = [], []
    for idx in setup.divergence_idx:
        gc, gs = split.gradients(w_c, w_s, setup.data.train_x[idx], setup.data.train_y[idx])
        grads_c.append(gc)
        grads_s.append(gs)
    sizes = torch.tensor(setup.data_sizes, dtype=torch.float64)
    weights = sizes / sizes.sum()
    out = {}
    for side, grads in (("client", grads_c), ("server", grads_s)):
        for form, value in divergence(grads, weights).items():
            out[f"divergence_{side}" + ("" if form == "raw" else f"_{form}")] = value
    return out


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file: say which, and how to go on without it
        raise SplitfedError(
            f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to retrain that algorithm"
        ) from None
    if not isinstance(saved, dict) or saved.get("version") != CHECKPOINT_VERSION:
        raise SplitfedError(f"checkpoint {path} is not a splitfed v{CHECKPOINT_VERSION} checkpoint")
    return saved


def train(
    name: str,
    setup: Setup,
    checkpoint: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Algorithm, list[dict[str, Any]], Context]:
    """Train algorithm ``name`` for cfg.rounds rounds, resuming from ``checkpoint`` if it exists."""
    cfg = setup.cfg
    ctx = setup.context()
    algo = ALGORITHMS.get(name)(ctx)
    split = SplitModel(setup.client_module, setup.server_module)
    device = setup.init_c.params.device
    history: list[dict[str, Any]] = []
    if checkpoint is not None and checkpoint.exists():
        saved = load_checkpoint(checkpoint)
        algo.w_c = State.from_dict({k: v.to(device) for k, v in saved["w_c"].items()})
        algo.w_s = State.from_dict({k: v.to(device) for k, v in saved["w_s"].items()})
        ctx.streams.load_state_dict(saved["streams"])
        history = saved["history"][: cfg.rounds]
    elapsed = history[-1]["wall_time_s"] if history else 0.0
    for rnd in range(len(history) + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        record: dict[str, Any] = {"algorithm": name, "round": rnd}
        if cfg.divergence_every and (rnd - 1) % cfg.divergence_every == 0:
            record |= measure_divergence(setup, split, algo.w_c, algo.w_s)  # at the round-start model
        clients = participants(cfg, rnd)
        ctx.meter.reset()
        ctx.link.reset()
        for side in ctx.sides:
            side.samples = side.steps = 0
        t1 = time.perf_counter()
        algo.run_round(rnd, clients)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        acc, loss = split.evaluate(algo.w_c, algo.w_s, setup.data.test_x, setup.data.test_y)
        flops = {"client": 0.0, "main_server": 0.0}
        for side, per_sample in zip(ctx.sides, _side_flops(ctx, setup), strict=True):
            flops[side.location] += side.samples * per_sample
        round_time = time.perf_counter() - t0
        elapsed += round_time
        record |= {
            "test_accuracy": acc,
            "test_loss": loss,
            "train_loss": ctx.meter.train_loss,
            "participants": len(clients),
            "samples": sum(s.samples for s in ctx.sides if s.module is setup.server_module),
            "server_steps": sum(s.steps for s in ctx.sides if s.module is setup.server_module),
            "client_flops": flops["client"],
            "server_flops": flops["main_server"],
            "bytes_up_per_client": sum(ctx.link.sent) / len(clients),
            "bytes_down_per_client": sum(ctx.link.received) / len(clients),
            "bytes": dict(sorted(ctx.link.by_kind.items())),
            "client_bytes_up": list(ctx.link.sent),
            "client_bytes_down": list(ctx.link.received),
            "train_time_s": t2 - t1,
            "round_time_s": round_time,
            "wall_time_s": elapsed,
        }
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "version": CHECKPOINT_VERSION,
                    "algorithm": name,
                    "round": rnd,
                    "w_c": algo.w_c.to_dict(),
                    "w_s": algo.w_s.to_dict(),
                    "streams": ctx.streams.state_dict(),
                    "history": history,
                },
            )
        if on_round is not None:
            on_round(record)
    return algo, history, ctx


def _side_flops(ctx: Context, setup: Setup) -> list[float]:
    client_fps, server_fps = setup.flops_per_sample
    return [client_fps if s.module is setup.client_module else server_fps for s in ctx.sides]
