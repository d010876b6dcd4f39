"""The config's sections: settings that belong to one algorithm or one mode, each a small frozen table
(``[sfl_v2] schedule``, ``cfg.sfl_v2.schedule``), and the flat names they had before (``sflv2_schedule``).

A flat old name is still accepted wherever a config is written (a file, a grid, ``Config(**kwargs)``, a
flag), with a one-line note per name (a warning of the "splitfed" logger) naming the new spelling; a run
directory's own config.toml, which splitfed wrote itself, is read without one. Run ids, runs.csv's settings
columns and checkpoints keep the flat names (``FLAT``): a run's id is the same whichever spelling set it.
"""

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import SplitfedError
from .typed import CUT, coerce


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A config field: its default, and its flag's help (``metavar``, ``flag`` among ``kw``)."""
    meta = {"help": help, **kw}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """A section's values, typed as its fields say (Python callers skip the TOML and CLI parsing)."""

    name: ClassVar[str] = ""  # its key in the config (set by ``SECTIONS``)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            where = f"{self.name}.{f.name}"
            object.__setattr__(self, f.name, coerce(f, getattr(self, f.name), where))


@dataclass(frozen=True)
class SflV2(Section):
    """SFL-V2 (algorithms/sfl_v2.py)."""

    schedule: str = setting("client_sequential", "the order of clients at the main server (spec §3)")


@dataclass(frozen=True)
class MinibatchSfl(Section):
    """MiniBatch-SFL (algorithms/minibatch_sfl.py)."""

    client_grad_scale: str = setting("local_mean", "the gradient sent back to a client's side (spec §2)")


@dataclass(frozen=True)
class UshapedSl(Section):
    """U-shaped split learning (algorithms/ushaped_sl.py)."""

    tail_cut: CUT | None = setting(  # type: ignore[valid-type]  # noqa: RUF009 (builds the field)
        None,
        "the second cut (a number, or a module's name, as cut_layer), after which the tail (and the "
        "loss) stay on the client; default: the model's last cut",
        metavar="LC|NAME",
    )


@dataclass(frozen=True)
class FedOptimizer(Section):
    """The fed server's own optimizer on the averaged update (algorithms/fedopt.py, scaffold.py)."""

    lr: float | None = setting(
        None, "its rate η_g (fedavgm, scaffold: 1; fedadam, fedyogi, fedadagrad: 0.01)"
    )
    momentum: float | None = setting(None, "fedavgm's server momentum β; default 0.9")
    betas: tuple[float, ...] | None = setting(None, "fedadam's β1,β2; default 0.9,0.99", metavar="B1,B2")
    eps: float | None = setting(None, "fedadam's τ (adaptivity); default 1e-3")


@dataclass(frozen=True)
class Correction(Section):
    """Drift corrections any algorithm takes on its client parts (algorithms/fedprox.py, scaffold.py)."""

    prox_mu: float | None = setting(
        None,
        "proximal term μ/2·‖w − w^r‖² on every client part (FedProx's); fedprox's default 0.01; set for any "
        "other algorithm to add it",
        metavar="MU",
    )
    control_variates: bool = setting(
        False, "SCAFFOLD's control variates on the client parts of any algorithm (scaffold: always)"
    )


@dataclass(frozen=True)
class LrDecay(Section):
    """The knobs of lr_schedule's named schedules (engine/optim.py)."""

    step_size: int | None = setting(None, "lr_schedule=step: rounds between decays (required)")
    gamma: float | None = setting(
        None, "lr_schedule=step, exponential: factor per decay (step's default 0.1; exponential: required)"
    )
    min_lr: float | None = setting(None, "lr_schedule=cosine: the final rate η_min; default 0")
    cosine_rounds: int | None = setting(
        None, "lr_schedule=cosine: rounds T_max to reach min_lr; default: rounds"
    )


@dataclass(frozen=True)
class Synthetic(Section):
    """dataset = synthetic (data/datasets.py)."""

    shape: tuple[int, ...] | None = setting(None, "C,H,W; default 1,28,28", metavar="C,H,W")
    samples: int | None = setting(None, "training samples; default 2000")


@dataclass(frozen=True)
class Divergence(Section):
    """The gradient divergence measured at the round-start model (spec §6)."""

    every: int = setting(5, "every K rounds, from round 1 (0: never); it costs a gradient pass")
    samples: int = setting(1000, "samples per client for its gradients")
    clients: int | None = setting(
        None, "clients it is measured over: a fixed random draw of this many; default all"
    )


SECTIONS: dict[str, type[Section]] = {
    "sfl_v2": SflV2,
    "minibatch_sfl": MinibatchSfl,
    "ushaped_sl": UshapedSl,
    "fed_optimizer": FedOptimizer,
    "correction": Correction,
    "lr_decay": LrDecay,
    "synthetic": Synthetic,
    "divergence": Divergence,
}
for _name, _cls in SECTIONS.items():
    _cls.name = _name

# The flat names the sections' keys had (and keep in run ids, runs.csv's columns and checkpoints).
LEGACY = {
    "sflv2_schedule": "sfl_v2.schedule",
    "client_grad_scale": "minibatch_sfl.client_grad_scale",
    "tail_cut": "ushaped_sl.tail_cut",
    "fed_lr": "fed_optimizer.lr",
    "fed_momentum": "fed_optimizer.momentum",
    "fed_betas": "fed_optimizer.betas",
    "fed_eps": "fed_optimizer.eps",
    "prox_mu": "correction.prox_mu",
    "control_variates": "correction.control_variates",
    "lr_step_size": "lr_decay.step_size",
    "lr_gamma": "lr_decay.gamma",
    "lr_min": "lr_decay.min_lr",
    "lr_cosine_rounds": "lr_decay.cosine_rounds",
    "synthetic_shape": "synthetic.shape",
    "synthetic_samples": "synthetic.samples",
    "divergence_every": "divergence.every",
    "divergence_samples": "divergence.samples",
    "divergence_clients": "divergence.clients",
}
FLAT = {path: flat for flat, path in LEGACY.items()}  # "sfl_v2.schedule" -> "sflv2_schedule"
# Every section's key by its path, "sfl_v2.schedule" -> its field (its type, default and help).
SETTINGS = {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
log = logging.getLogger("splitfed")
_NOTED: set[str] = set()  # the flat names a deprecation note was given for, in this process


def note_legacy(name: str) -> None:
    """The one-line note for a flat old name, once per name."""
    if name not in _NOTED:
        _NOTED.add(name)
        path = LEGACY[name]
        section, key = path.split(".")
        log.warning(
            f"note: config key {name} is deprecated: it is now {path} (in a file, [{section}] {key} = ...; "
            f"the flag --{flag(path)})",
            extra={"before_checks": True},  # not the first line of a run: warnings stay held (_log.py)
        )


def flag(path: str) -> str:
    """A section key's flag: ``sfl_v2.schedule`` is --sfl-v2.schedule."""
    return path.replace("_", "-")


def lift(values: Mapping[str, Any], *, note: bool = True) -> dict[str, Any]:
    """``values`` with every flat old name (noted, unless ``note`` is off) and every ``section.key`` moved
    into its section: a section given as a table or an instance takes them on top of its own keys."""
    out = dict(values)
    moved: dict[str, dict[str, Any]] = {}
    named: dict[str, str] = {}  # a path: the name it was given by
    for name in list(out):
        path = LEGACY.get(name, name)
        if path not in SETTINGS:
            continue
        if note and name in LEGACY:
            note_legacy(name)
        if path in named:
            raise SplitfedError(f"{path} is given twice: as {named[path]} and as {name}")
        section, key = path.split(".")
        moved.setdefault(section, {})[key] = out.pop(name)
        named[path] = name
    for section, keys in moved.items():
        given = out.get(section)
        if given is None:
            out[section] = keys
        elif isinstance(given, Section):
            out[section] = dataclasses.replace(given, **keys)
        elif isinstance(given, Mapping):
            twice = [f"{section}.{k}" for k in keys if k in given]
            if twice:
                raise SplitfedError(f"{twice[0]} is given twice: in [{section}] and as {named[twice[0]]}")
            out[section] = {**given, **keys}
        else:
            raise SplitfedError(f"{section} must be a table of {', '.join(keys)}, got {given!r}")
    return out


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config's values with each section spread out under its keys' flat names (``sflv2_schedule``):
    what run ids, runs.csv's columns and checkpoints hold. A section may be an instance or a table (a
    config.toml read as TOML); a key a table lacks is left out."""
    out = {}
    for name, value in values.items():
        if name not in SECTIONS:
            out[name] = value
            continue
        table = dataclasses.asdict(value) if isinstance(value, Section) else value
        if not isinstance(table, Mapping):  # a config.toml edited wrongly: its flat keys only
            continue
        out |= {FLAT[f"{name}.{key}"]: v for key, v in table.items() if f"{name}.{key}" in FLAT}
    return out


def by_path(table: Any) -> Any:
    """A [[grid]] table with a section's keys by their path: ``sfl_v2.schedule = [...]`` (a TOML dotted key,
    a table in the table) is ``"sfl_v2.schedule" = [...]``."""
    if not isinstance(table, dict):
        return table
    out = {}
    for key, values in table.items():
        if key in SECTIONS and isinstance(values, dict):
            out |= {f"{key}.{k}": v for k, v in values.items()}
        else:
            out[key] = values
    return out
