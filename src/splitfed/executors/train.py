"""The generic round loop: participants, training, evaluation, divergence, metrics, checkpoints.

The same for every algorithm and every in-process executor: the algorithm's definition and the executor
train a round; this loop measures it and makes it survive a restart.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..algorithms import create
from ..engine.checkpoint import load_run_checkpoint, save_run_checkpoint
from ..engine.context import Context
from ..engine.side import State
from ..setup import Setup
from .distributed import DistributedExecutor, Group, merged_streams, share
from .local import LocalExecutor, make_executor


def train(
    name: str,
    setup: Setup,
    checkpoint: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    group: Group | None = None,
    on_weights: Callable[[int, State, State], None] | None = None,
) -> tuple[LocalExecutor, list[dict[str, Any]], Context]:
    """Train algorithm ``name`` for cfg.rounds rounds, resuming from ``checkpoint`` if it exists.

    With a ``group`` (a torch.distributed job) every rank trains its clients; rank 0 alone reads and
    writes the checkpoint, evaluates, and reports rounds (the others return an empty history).
    ``on_weights(round, w_c, w_s)`` sees each round's model before its checkpoint is written (so a kill
    between the two repeats the round, and the call, rather than skip it).
    """
    cfg = setup.cfg
    ctx = setup.context()
    algo = create(cfg, name)
    if group is None:
        executor = make_executor(algo, ctx, cfg.execution, cfg.cuda_graphs)
    else:
        rounds = [setup.participants(r) for r in range(1, cfg.rounds + 1)]
        batched = cfg.execution == "batched" or (cfg.execution == "auto" and setup.device.type == "cuda")
        executor = DistributedExecutor(algo, ctx, group, batched, rounds)
    leader = group is None or group.leader
    split = setup.split_model()
    device = setup.device
    history: list[dict[str, Any]] = []
    saved = None
    if leader and checkpoint is not None and checkpoint.exists():
        saved = load_run_checkpoint(checkpoint, name, setup)  # checked whole against this run
    if group is not None:
        saved = share(group, saved)
    if saved is not None:
        executor.w_c = State.from_dict({k: v.to(device) for k, v in saved["w_c"].items()})
        executor.w_s = State.from_dict({k: v.to(device) for k, v in saved["w_s"].items()})
        ctx.streams.load_state_dict(saved["streams"])
        history = saved["history"][: cfg.rounds]
    elapsed = history[-1]["wall_time_s"] if history else 0.0
    for rnd in range(len(history) + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        record: dict[str, Any] = {"algorithm": name, "round": rnd}
        if leader and cfg.divergence_every and (rnd - 1) % cfg.divergence_every == 0:  # round-start model
            record |= setup.divergence(split, executor.w_c, executor.w_s)
        clients = setup.participants(rnd)
        ctx.meter.reset()
        ctx.link.reset()
        ctx.set_round(rnd)  # the round's learning rate (lr_schedule) on every side
        for side in ctx.sides:
            side.samples = side.steps = 0
        t1 = time.perf_counter()
        executor.run_round(rnd, clients)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        streams = ctx.streams.state_dict() if group is None else merged_streams(group, ctx.streams)
        if not leader:
            continue
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            w, batch = (executor.w_c, executor.w_s), cfg.eval_batch_size
            acc, loss, per_class = split.evaluate(*w, setup.data.test_x, setup.data.test_y, batch)
            record |= {"test_accuracy": acc, "test_loss": loss, "test_accuracy_per_class": per_class}
            if setup.data.val_x is not None:
                val = split.evaluate(*w, setup.data.val_x, setup.data.val_y, batch)
                record |= {"val_accuracy": val[0], "val_loss": val[1]}
        flops = {"client": 0.0, "main_server": 0.0}
        client_fps, server_fps = setup.flops_per_sample
        for side in ctx.sides:
            flops[side.location] += side.samples * (
                client_fps if side.module is setup.client_module else server_fps
            )
        server_sides = [s for s in ctx.sides if s.module is setup.server_module]
        round_time = time.perf_counter() - t0
        elapsed += round_time
        record |= {
            "train_loss": ctx.meter.train_loss,
            "participants": len(clients),
            "samples": sum(s.samples for s in server_sides),
            "server_steps": sum(s.steps for s in server_sides),
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
        if on_weights is not None:
            on_weights(rnd, executor.w_c, executor.w_s)
        if checkpoint is not None:
            save_run_checkpoint(checkpoint, name, cfg, rnd, executor.w_c, executor.w_s, streams, history)
        if on_round is not None:
            on_round(record)
    return executor, history, ctx
