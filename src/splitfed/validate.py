"""What a Config's values must be, each alone (tables of rules) and together (which knobs go with which
choice); a mistake is one SplitfedError naming the field and what it accepts."""

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._limits import check_threads
from .choices import (
    ADAM_ONLY,
    CHOICES,
    OBJECT_FIELDS,
    PARTITION_OPTIONS,
    SCHEDULE_OPTIONS,
    SGD_ONLY,
    object_hint,
)
from .errors import SplitfedError
from .sections import SETTINGS
from .typed import base_type

if TYPE_CHECKING:
    from .config import Config

FLOAT32_MAX = 3.4028234663852886e38  # rates and decays are float32 in every optimizer step
_F32 = f" (and within float32, {FLOAT32_MAX:.3g})"


def _f32(v: float) -> bool:
    # a rate or a decay beyond float32 turns inf inside the optimizer, whatever its sign
    return math.isfinite(v) and abs(v) <= FLOAT32_MAX


def _unit(v: float) -> bool:
    return math.isfinite(v) and 0 <= v < 1


# (fields, what each value must pass, what that is in words[, how the value is shown]): "NAME must be
# WHAT, got VALUE". A field that is None (its default taken elsewhere) passes.
Rule = tuple[Any, ...]  # (tuple[str, ...], Callable[[Any], bool], str[, Callable[[Any], str]])
POSITIVE = (
    "clients",
    "batch_size",
    "rounds",
    "local_epochs",
    "divergence.samples",
    "processes",
    "eval_every",
)
OPTIONAL_POSITIVE = (
    "clients_per_round",
    "divergence.clients",
    "local_iters",
    "shards_per_client",
    "synthetic.samples",
    "threads",
)
RATES = (
    "lr",
    "client_lr",
    "server_lr",
    "dirichlet_alpha",
    "fed_optimizer.lr",
    "fed_optimizer.eps",
    "client_state_mb",
)
RULES: tuple[Rule, ...] = (
    (("validation_samples",), lambda v: v >= 0, ">= 0"),
    (POSITIVE + OPTIONAL_POSITIVE, lambda v: v >= 1, "a positive integer"),
)
VALUE_RULES: tuple[Rule, ...] = (
    (
        RATES,
        lambda v: math.isfinite(v) and 0 < v <= FLOAT32_MAX,
        f"a positive number up to {FLOAT32_MAX:.3g} (float32)",
    ),
    (("correction.prox_mu",), lambda v: math.isfinite(v) and v >= 0, ">= 0"),
    (("fed_optimizer.momentum",), _unit, "in [0, 1)"),
    (("fed_optimizer.betas",), lambda v: len(v) == 2 and all(map(_unit, v)), "two numbers in [0, 1)"),
    (
        ("cut_layer", "ushaped_sl.tail_cut"),
        lambda v: v >= 1 if isinstance(v, int) else bool(v.strip()),
        "a positive integer or a module's name",
        repr,
    ),
    (("divergence.every",), lambda v: v >= 0, ">= 0"),
    (("model_every",), lambda v: v >= 0, ">= 0 (0: final models only)"),
    (("eval_batch_size",), lambda v: v >= 0, ">= 0 (0: automatic)"),
    (("non_iid_ratio",), lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
)
OPTIMIZER_RULES: tuple[Rule, ...] = (
    (("momentum", "dampening"), lambda v: _f32(v) and 0 <= v < 1, "in [0, 1)" + _F32),
    (("weight_decay", "eps"), lambda v: _f32(v) and v >= 0, ">= 0" + _F32),
    (("clip_grad_norm", "lr_decay.gamma"), lambda v: _f32(v) and v > 0, "a positive number" + _F32),
    (("lr_decay.min_lr",), lambda v: _f32(v) and v >= 0, ">= 0" + _F32),
    (("lr_decay.step_size", "lr_decay.cosine_rounds"), lambda v: v >= 1, "a positive integer"),
    (
        ("betas",),
        lambda v: len(v) == 2 and all(map(_unit, v)),
        "two numbers in [0, 1)",
        lambda v: ",".join(map(str, v)),
    ),
)


def need(ok: bool, msg: str) -> None:
    if not ok:
        raise SplitfedError(msg)


def check_rules(c: "Config", rules: tuple[Rule, ...]) -> None:
    for names, ok, what, *show in rules:
        for name in names:
            v = c.get(name)
            need(v is None or ok(v), f"{name} must be {what}, got {(show or [str])[0](v)}")


def validate(c: "Config") -> None:
    """Every rule of a config, in order: values, then how they go together."""
    check_rules(c, RULES)
    if c.threads is not None:
        check_threads(c.threads)
    check_text(c)
    check_rules(c, VALUE_RULES)
    need(len(c.algorithm) > 0, "algorithm must name at least one algorithm")
    need(len(set(c.algorithm)) == len(c.algorithm), f"algorithm lists a name twice: {','.join(c.algorithm)}")
    if c.clients_per_round is not None:
        need(
            c.clients_per_round <= c.clients,
            f"clients_per_round ({c.clients_per_round}) exceeds clients ({c.clients})",
        )
    check_choices(c)
    check_rules(c, OPTIMIZER_RULES)
    check_optimizer_knobs(c)
    check_data(c)
    need(
        re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", c.device) is not None,
        f"device must be cpu, cuda, cuda:N or auto; got {c.device!r}",
    )


def check_choices(c: "Config") -> None:
    """Each CHOICES field one of its values (none where the field is optional; an object's label for
    OBJECT_FIELDS)."""
    fields = {f.name: f for f in dataclasses.fields(c)} | SETTINGS
    optional = {name for name, f in fields.items() if base_type(f.type)[1]}
    for name, allowed in CHOICES.items():
        v = c.get(name)
        if v is None and name in optional:  # the shared field's value (client_optimizer: optimizer's)
            continue
        if name in OBJECT_FIELDS:
            need(
                v in allowed or ":" in v,
                f"{name} must be one of {', '.join(allowed)}, or {object_hint(name)} (in Python, or as "
                f"pkg.module:name); got {v!r}",
            )
            continue
        need(v in allowed, f"{name} must be one of {', '.join(allowed)}; got {v!r}")


def check_optimizer_knobs(c: "Config") -> None:
    """No optimizer or schedule knob set that no side's optimizer or schedule reads."""
    used = {c.client_optimizer or c.optimizer, c.server_optimizer or c.optimizer}
    # An optimizer given as an object takes what its class takes: engine/optim.py checks it with the
    # model at hand (check_optimizer_knobs); the names are checked here.
    named = all(":" not in name for name in used)
    for knobs, owners in ((SGD_ONLY, {"sgd"}), (ADAM_ONLY, {"adam", "adamw"})):
        for name, default in knobs.items():
            need(
                getattr(c, name) == default or bool(used & owners) or not named,
                f"{name} applies to {'/'.join(sorted(owners))} only (optimizers: {', '.join(sorted(used))})",
            )
    if c.nesterov:
        need(
            c.momentum > 0 and c.dampening == 0,
            "nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD)",
        )
    kinds = {c.client_lr_schedule or c.lr_schedule, c.server_lr_schedule or c.lr_schedule}
    for name, schedules in SCHEDULE_OPTIONS.items():
        need(
            c.get(name) is None or bool(kinds & set(schedules)),
            f"{name} applies to lr_schedule={' or '.join(schedules)} only "
            f"(it is {' and '.join(sorted(kinds))})",
        )
    decay = c.lr_decay
    need("step" not in kinds or decay.step_size is not None, "lr_schedule=step needs lr_decay.step_size")
    need(
        "exponential" not in kinds or decay.gamma is not None, "lr_schedule=exponential needs lr_decay.gamma"
    )


def check_data(c: "Config") -> None:
    """The partition's and the synthetic data's knobs only with them; "given" only with data in clients."""
    for part, (knob, _) in PARTITION_OPTIONS.items():
        need(
            getattr(c, knob) is None or c.partition == part,
            f"{knob} applies to partition={part} only (partition is {c.partition})",
        )
    # "given" takes the clients from the data: a registered data set comes whole, so refuse it here, not
    # after loading it. Data given to run() are recorded as python:<fingerprint>; files are paths.
    need(
        c.partition != "given"
        or c.dataset.startswith("python:")
        or c.dataset.endswith((".pt", ".pth"))
        or Path(c.dataset).is_dir(),
        f"partition given takes the clients from the data, and dataset {c.dataset} is one data set; give "
        "data split into clients (run(data=[...]), --dataset FOLDER of client_<i>.pt) or name another "
        "partition",
    )
    if c.dataset != "synthetic":
        for knob in ("shape", "samples"):
            need(getattr(c.synthetic, knob) is None, f"synthetic.{knob} applies to dataset=synthetic only")
    shape = c.synthetic.shape
    if shape is not None:
        need(
            len(shape) == 3 and min(shape) >= 1,
            f"synthetic.shape must be three positive integers C,H,W; got {shape}",
        )


def check_text(c: "Config") -> None:
    """Strings config.toml can record and paths a file system can hold.

    A name from a non-UTF-8 command line (a lone surrogate) cannot be written to config.toml, which would
    fail after the run directory was made; a NUL byte cannot be in any path.
    """
    for name, value in c.to_dict().items():
        if isinstance(value, dict):
            value = [*value, *value.values()]
        for text in value if isinstance(value, tuple | list) else [value]:
            if isinstance(text, str) and not _is_utf8(text):
                raise SplitfedError(f"{name} {text!r} is not valid UTF-8 text; config.toml cannot hold it")
    for name in ("data_dir", "out"):
        v = getattr(c, name)
        if v is not None and "\0" in v:
            raise SplitfedError(f"{name} {v!r} contains a NUL byte, which no file name can hold")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
