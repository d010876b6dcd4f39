"""A run as one rank of a torch.distributed job: which algorithms spread their clients over the ranks,
the check that every rank was started alike, and rank 0's result handed to every rank."""

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from .algorithms import create
from .config import Config
from .errors import SplitfedError
from .executors.distributed import check_distributable, leave, share
from .results import RunResult


def distributing(cfg: Config) -> list[str]:
    """The algorithms of ``cfg`` that spread their clients over torch.distributed ranks; the others run
    in rank 0 alone. A job where none spreads is refused (the first one's reason)."""
    spread, reasons = [], []
    for name in cfg.algorithm:
        try:
            check_distributable(create(cfg, name))
            spread.append(name)
        except SplitfedError as e:
            reasons.append(str(e))
    if not spread:
        raise SplitfedError(reasons[0])
    return spread


def same_on_every_rank(cfg: Config) -> None:
    """In a torch.distributed job every rank is started with its own command line (torchrun) and calls
    run() with its own objects: a rank with another learning rate or seed would train its clients with it
    and the job would end well with mixed numbers; another client count or rounds, abort or hang deep
    inside gloo. Every rank's resolved config (model and data by their fingerprints) is compared with rank
    0's before any work; every rank refuses alike, naming what differs."""
    import torch.distributed as dist

    configs: list[Any] = [None] * dist.get_world_size()
    # threads may differ (machines with other core counts): it changes the last bits, not the run
    dist.all_gather_object(configs, {k: v for k, v in cfg.to_dict().items() if k != "threads"})
    first = configs[0]
    for rank, other in enumerate(configs):
        differ = [k for k in dict.fromkeys([*first, *other]) if other.get(k) != first.get(k)]
        if {"model", "dataset"} & set(differ):
            raise SplitfedError(
                f"rank {rank} was given another model or data than rank 0 ({other.get('model')}, "
                f"{other.get('dataset')} against {first.get('model')}, {first.get('dataset')}): build them "
                "the same way on every rank (seed a module's construction, or pass a builder)"
            )
        if differ:
            shown = ", ".join(f"{k} = {other.get(k)!r} against {first.get(k)!r}" for k in differ[:3])
            raise SplitfedError(
                f"rank {rank} was started with another config than rank 0 ({shown}"
                f"{', ...' if len(differ) > 3 else ''}): start every rank with the same settings"
            )


def share_result(
    group: Any, result: RunResult | None, models: dict[str, nn.Module], model: nn.Module
) -> RunResult:
    """Every rank returns rank 0's result, models included (sent as state_dicts, loaded into copies of
    ``model`` on the other ranks); the job's group is left."""
    leader = group.leader
    states = {name: m.state_dict() for name, m in models.items()} if leader else None
    light = dataclasses.replace(result, models={}) if result is not None else None
    shared = share(group, (light, states) if leader else None, patient=True)
    leave(group)
    if not leader:
        result, states = shared
        result.models = {name: _with_state(model, state) for name, state in states.items()}
    assert result is not None
    return result


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out
