"""The generic round loop: participants, training, evaluation, divergence, metrics, checkpoints.

The same for every algorithm and every in-process executor: the algorithm's definition and the executor
train a round; this loop measures it and makes it survive a restart.
"""

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..algorithms import create
from ..engine.checkpoint import load_run_checkpoint, save_run_checkpoint
from ..engine.context import Context
from ..engine.side import State
from ..errors import Diverged, StopAlgorithm
from ..setup import Setup
from .distributed import DistributedExecutor, Group, merged_streams, share
from .local import LocalExecutor, make_executor
from .parts import prepare_context


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
    between the two repeats the round, and the call, rather than skip it). ``on_round`` may raise
    ``StopAlgorithm``: the round is then the last (marked ``"stopped"`` in its record and checkpoint, so a
    resumed run trains no more of it); every rank stops with rank 0.
    """
    cfg = setup.cfg
    algo = create(cfg, name)
    ctx = prepare_context(algo, setup)
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
    if checkpoint is not None:  # per-client states beyond memory go beside the checkpoint
        executor.client_states.set_dir(checkpoint.with_suffix(".clients"))
    if leader and checkpoint is not None and checkpoint.exists():
        parts = {part: spec.init for part, spec in ctx.parts.items()}
        saved = load_run_checkpoint(checkpoint, name, setup, parts)  # checked whole against this run
    if group is not None:
        saved = share(group, saved)
    if saved is not None:
        executor.model = {
            part: State.from_dict({k: v.to(device) for k, v in state.items()})
            for part, state in saved["model"].items()
        }
        executor.fed.load_state_dict({k: v.to(device) for k, v in saved["fed_server"].items()})
        executor.client_states.load_state_dict(saved["client_states"])
        ctx.streams.load_state_dict(saved["streams"])
        history = saved["history"][: cfg.rounds]
    elapsed = history[-1]["wall_time_s"] if history else 0.0
    last = len(history) if history and history[-1].get("stopped") else cfg.rounds
    for rnd in range(len(history) + 1, last + 1):
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
        # a collective under torch.distributed: every rank takes part, rank 0 alone gets the states
        saving = checkpoint is not None or group is not None
        client_states = executor.checkpoint_client_states() if saving else None
        if not leader:  # rank 0 decides whether the round diverged and whether on_round stopped it
            diverged, stop = share(group, None)
            if diverged is not None:
                raise Diverged(diverged)
            if stop:
                break
            continue
        bad = non_finite(ctx.meter.train_loss if ctx.meter.loss_count else None, executor.model)
        if bad is not None:  # raised before anything of this round is saved: the checkpoint stays good
            kept = {1: "no round is kept", 2: "round 1 is kept"}.get(rnd, f"rounds 1-{rnd - 1} are kept")
            diverged = (
                f"{name} diverged in round {rnd}: {bad}; {kept}; lower the learning rate, or look for NaN "
                "or inf in the data or the model"
            )
            if group is not None:
                share(group, (diverged, False))
            raise Diverged(diverged)
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            w, batch = (executor.w_c, executor.w_s), cfg.eval_batch_size
            acc, loss, per_class = split.evaluate(*w, setup.data.test_x, setup.data.test_y, batch)
            record |= {"test_accuracy": acc, "test_loss": loss, "test_accuracy_per_class": per_class}
            if setup.data.val_x is not None:
                val = split.evaluate(*w, setup.data.val_x, setup.data.val_y, batch)
                record |= {"val_accuracy": val[0], "val_loss": val[1]}
        flops = {"client": 0.0, "main_server": 0.0}
        for side in ctx.sides:
            flops[side.location] += side.samples * side.flops_per_sample
        output = [s for s in ctx.sides if s.part == algo.chain[-1]]  # the model's output: every sample
        after_cut = [s for s in ctx.sides if s.part == algo.chain[1]]  # the server side's steps
        round_time = time.perf_counter() - t0
        elapsed += round_time
        record |= {
            "train_loss": ctx.meter.train_loss,
            **ctx.rates(rnd),  # lr_client, lr_server: the round's rates (lr_schedule)
            "participants": len(clients),
            "samples": sum(s.samples for s in output),
            "server_steps": sum(s.steps for s in after_cut),
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
        saved_as = None
        if checkpoint is not None:
            fed_state = executor.fed.state_dict()
            saved_as = (checkpoint, name, cfg, rnd, executor.model, algo.chain, fed_state)
            save_run_checkpoint(*saved_as, client_states, streams, history)
            executor.client_states.saved()
        stop = False
        if on_round is not None:
            try:
                on_round(record)
            except StopAlgorithm:
                stop = True
        if group is not None:
            share(group, (None, stop))
        if stop:
            record["stopped"] = True
            if saved_as is not None:  # saved again with the mark: a resume must not train on
                save_run_checkpoint(*saved_as, client_states, streams, history)
            break
    return executor, history, ctx


def non_finite(train_loss: float | None, model: dict[str, State]) -> str | None:
    """What of a trained round is NaN or inf, the first found: the training loss, then each part's
    parameters and buffers. Checked every round, since an average or a server step spreads one NaN to
    every model it touches and the metrics would only say NaN."""
    if train_loss is not None and not math.isfinite(train_loss):
        return f"the training loss is {train_loss}"
    for part, state in model.items():
        for what, values in (("parameters", state.params), ("buffers", state.buffers)):
            if values.is_floating_point() and not bool(torch.isfinite(values).all()):
                return f"the {part} part's {what} hold NaN or inf"
    return None
