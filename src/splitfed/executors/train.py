"""The generic round loop: participants, training, evaluation, divergence, metrics, checkpoints.

The same for every algorithm and every in-process executor: the algorithm's definition and the executor
train a round; this loop measures it and makes it survive a restart.
"""

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..algorithms import create
from ..engine.checkpoint import load_run_checkpoint, save_run_checkpoint
from ..engine.context import Context
from ..engine.profiles import Profile, profiles
from ..engine.record import SIMULATION, round_record
from ..engine.side import State
from ..engine.timeline import Party, RoundTiming
from ..errors import Diverged, StopAlgorithm
from ..setup import Setup
from .distributed import DistributedExecutor, Group, merged_streams, share
from .local import LocalExecutor, make_executor
from .parts import prepare_context
from .rounds import RoundClock, begin_round, model_on, on_device


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
    run = _Training(name, setup, checkpoint, group)
    history = run.resume()
    clock = RoundClock(history)
    last = len(history) if history and history[-1].get("stopped") else setup.cfg.rounds
    for rnd in range(len(history) + 1, last + 1):
        clock.start()
        divergence = run.divergence(rnd)
        clients = setup.participants(rnd)
        run.train_round(rnd, clients, clock)
        state = run.state()
        if not run.leader:  # rank 0 decides whether the round diverged and whether on_round stopped it
            if run.follow():
                break
            continue
        run.check_finite(rnd)
        record = run.record(rnd, clients, clock, divergence)
        history.append(record)
        if on_weights is not None:
            on_weights(rnd, run.executor.w_c, run.executor.w_s)
        if checkpoint is not None:
            run.save(rnd, state, history)
            run.executor.client_states.saved()
        if run.report(record, on_round):
            if checkpoint is not None:  # saved again with the mark: a resume must not train on
                run.save(rnd, state, history)
            break
    return run.executor, history, run.ctx


class _Training:
    """One algorithm's training on this process (alone, or one rank of a group): its definition, context
    and executor, and what the round loop does with them."""

    def __init__(self, name: str, setup: Setup, checkpoint: Path | None, group: Group | None) -> None:
        self.name, self.setup, self.cfg, self.checkpoint, self.group = (
            name,
            setup,
            setup.cfg,
            checkpoint,
            group,
        )
        self.algo = create(self.cfg, name)
        self.ctx = prepare_context(self.algo, setup)
        self.leader = group is None or group.leader
        self.split = setup.split_model()
        if group is None:
            self.executor = make_executor(self.algo, self.ctx, self.cfg.execution, self.cfg.cuda_graphs)
        else:
            rounds = [setup.participants(r) for r in range(1, self.cfg.rounds + 1)]
            cuda = setup.device.type == "cuda"
            batched = self.cfg.execution == "batched" or (self.cfg.execution == "auto" and cuda)
            self.executor = DistributedExecutor(self.algo, self.ctx, group, batched, rounds)
        # the devices and links of the edge-time model, drawn with the partition: a client keeps its device
        cfg = self.cfg
        self.device_seed = cfg.seed_for("partition")
        # by label, each profile and its devices: the first is the run's own, the others timed beside it
        self.profiles: dict[str, tuple[Profile, dict[str, Party]]] = {
            label: (p, p.draw(cfg.clients, self.device_seed))
            for label, p in (profiles(cfg.profile) if cfg.profile is not None else {}).items()
        }
        self.sim_time = 0.0

    def resume(self) -> list[dict[str, Any]]:
        """The rounds trained before (none without a checkpoint), their end state loaded to go on from."""
        executor, checkpoint, device = self.executor, self.checkpoint, self.setup.device
        saved = None
        if checkpoint is not None:  # per-client states beyond memory go beside the checkpoint
            executor.client_states.set_dir(checkpoint.with_suffix(".clients"))
        if self.leader and checkpoint is not None and checkpoint.exists():
            parts = {part: spec.init for part, spec in self.ctx.parts.items()}
            saved = load_run_checkpoint(checkpoint, self.name, self.setup, parts)  # checked whole
        if self.group is not None:
            saved = share(self.group, saved)
        if saved is None:
            return []
        executor.model = model_on(saved["model"], device)
        executor.fed.load_state_dict(on_device(saved["fed_server"], device))
        executor.client_states.load_state_dict(saved["client_states"])
        self.ctx.streams.load_state_dict(saved["streams"])
        history = saved["history"][: self.cfg.rounds]
        self.sim_time = history[-1].get("sim_time_s", 0.0) if history else 0.0
        return history

    def divergence(self, rnd: int) -> dict[str, float]:
        """The gradient divergence at the round-start model, on the rounds divergence_every says."""
        every = self.cfg.divergence.every
        if not (self.leader and every and (rnd - 1) % every == 0):
            return {}
        return self.setup.divergence(self.split, self.executor.w_c, self.executor.w_s)

    def train_round(self, rnd: int, clients: list[int], clock: RoundClock) -> None:
        begin_round(self.ctx, rnd)
        clock.train()
        self.executor.run_round(rnd, clients)
        if self.setup.device.type == "cuda":
            torch.cuda.synchronize(self.setup.device)
        clock.trained()

    def state(self) -> tuple[dict[str, Any], dict | None]:
        """The samplers and the clients' own states after the round (a collective under
        torch.distributed: every rank takes part, rank 0 alone gets the states)."""
        group = self.group
        streams = self.ctx.streams.state_dict() if group is None else merged_streams(group, self.ctx.streams)
        saving = self.checkpoint is not None or group is not None
        return streams, self.executor.checkpoint_client_states() if saving else None

    def follow(self) -> bool:
        """A rank other than 0: whether rank 0 stopped (raises Diverged if the round diverged)."""
        diverged, stop = share(self.group, None)
        if diverged is not None:
            raise Diverged(diverged)
        return stop

    def check_finite(self, rnd: int) -> None:
        """Raised before anything of this round is saved: the checkpoint stays good."""
        meter = self.ctx.meter
        bad = non_finite(meter.train_loss if meter.loss_count else None, self.executor.model)
        if bad is None:
            return
        kept = {1: "no round is kept", 2: "round 1 is kept"}.get(rnd, f"rounds 1-{rnd - 1} are kept")
        diverged = (
            f"{self.name} diverged in round {rnd}: {bad}; {kept}; lower the learning rate, or look for NaN "
            "or inf in the data or the model"
        )
        if self.group is not None:
            share(self.group, (diverged, False))
        raise Diverged(diverged)

    def evaluate(self, rnd: int) -> dict[str, Any]:
        """The round's model on the test set (and the validation split), on the rounds eval_every says."""
        cfg, data = self.cfg, self.setup.data
        if rnd % cfg.eval_every and rnd != cfg.rounds:
            return {}
        w, batch = (self.executor.w_c, self.executor.w_s), cfg.eval_batch_size
        acc, loss, per_class = self.split.evaluate(*w, data.test_x, data.test_y, batch)
        out = {"test_accuracy": acc, "test_loss": loss, "test_accuracy_per_class": per_class}
        if data.val_x is not None:
            val = self.split.evaluate(*w, data.val_x, data.val_y, batch)
            out |= {"val_accuracy": val[0], "val_loss": val[1]}
        return out

    def record(
        self, rnd: int, clients: list[int], clock: RoundClock, divergence: dict[str, float]
    ) -> dict[str, Any]:
        """The round's record (engine/record.py), as the simulation measures it."""
        ctx, chain = self.ctx, self.algo.chain
        evaluation = self.evaluate(rnd)
        flops = {"client": 0.0, "main_server": 0.0}
        for side in ctx.sides:
            flops[side.location] += side.samples * side.flops_per_sample
        return round_record(
            SIMULATION,
            algorithm=self.name,
            round=rnd,
            **divergence,
            **evaluation,
            train_loss=ctx.meter.train_loss,
            **ctx.rates(rnd),  # lr_client, lr_server: the round's rates (lr_schedule)
            participants=len(clients),
            samples=sum(s.samples for s in ctx.sides if s.part == chain[-1]),  # the output sees every one
            server_steps=sum(s.steps for s in ctx.sides if s.part == chain[1]),  # the part after the cut
            client_flops=flops["client"],
            server_flops=flops["main_server"],
            bytes=dict(sorted(ctx.link.by_kind.items())),
            client_bytes_up=list(ctx.link.sent),
            client_bytes_down=list(ctx.link.received),
            **clock.times(),
            **self.simulated(rnd),
        )

    def simulated(self, rnd: int) -> dict[str, Any]:
        """The round on the profile's devices and links (engine/timeline.py), when the config has one."""
        timeline = self.executor.timeline
        if not self.profiles or timeline is None:
            return {}

        def simulate(label: str) -> RoundTiming:
            profile, parties = self.profiles[label]
            return timeline.simulate(parties, profile.offline(self.cfg.clients, self.device_seed, rnd))

        first, *others = self.profiles
        timing = simulate(first)
        self.sim_time += timing.time_s
        clients = [str(n) for n in range(self.cfg.clients)]
        record = {
            "sim_round_s": timing.time_s,
            "sim_time_s": self.sim_time,
            "sim_client_compute_s": [timing.compute_s.get(n, 0.0) for n in clients],
            "sim_client_transfer_s": [timing.transfer_s.get(n, 0.0) for n in clients],
            "sim_client_idle_s": [timing.idle_s.get(n, timing.time_s) for n in clients],
            "sim_critical_s": timing.critical_share(),
        }
        if others:  # the same round on the other profiles
            by_profile = {first: timing.time_s} | {k: simulate(k).time_s for k in others}
            record["sim_round_s_by_profile"] = by_profile
        return record

    def save(self, rnd: int, state: tuple[dict[str, Any], dict | None], history: list) -> None:
        """The run's checkpoint after round ``rnd``: everything a resume goes on from."""
        executor, (streams, client_states) = self.executor, state
        assert self.checkpoint is not None and client_states is not None
        model, fed_state = executor.model, executor.fed.state_dict()
        save_run_checkpoint(
            self.checkpoint,
            self.name,
            self.cfg,
            rnd,
            model,
            self.algo.chain,
            fed_state,
            client_states,
            streams,
            history,
        )

    def report(self, record: dict[str, Any], on_round: Callable[[dict[str, Any]], None] | None) -> bool:
        """``on_round`` sees the record; whether it stopped the algorithm (every rank then stops)."""
        stop = False
        if on_round is not None:
            try:
                on_round(record)
            except StopAlgorithm:
                stop = True
        if self.group is not None:
            share(self.group, (None, stop))
        if stop:
            record["stopped"] = True
        return stop


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
