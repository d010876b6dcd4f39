"""The run configuration: one frozen dataclass, defaults in one place, TOML file plus flag overrides.

Every field is a CLI flag of the same name (``cut_layer`` is ``--cut-layer``); an unknown key, a value of
the wrong type or out of range is a SplitfedError naming the key and what is accepted.
"""

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._limits import check_threads
from .errors import SplitfedError
from .registry import given_name, object_label

# A cut: a block number of an nn.Sequential / CutModel, or the qualified name of any module (a traced graph).
CUT = int | str

ALL_ALGORITHMS = ("minibatch_sfl", "sfl_v1", "sfl_v2", "sl", "fedavg", "centralized")

# Fields with a fixed set of values: what _validate accepts and what `splitfed run --help` lists.
CHOICES = {
    "batch_alloc": ("equal", "proportional"),
    "client_grad_scale": ("local_mean", "global_mean"),
    "sflv2_schedule": ("client_sequential", "interleaved"),
    "execution": ("auto", "sequential", "batched"),
    "wire_dtype": ("float32", "float16", "bfloat16"),
    "optimizer": ("sgd", "adam", "adamw"),
    "client_optimizer": ("sgd", "adam", "adamw"),  # or none: optimizer's
    "server_optimizer": ("sgd", "adam", "adamw"),
    "lr_schedule": ("none", "step", "cosine", "exponential"),
    "client_lr_schedule": ("none", "step", "cosine", "exponential"),  # or none: lr_schedule's
    "server_lr_schedule": ("none", "step", "cosine", "exponential"),
    "precision": ("fp32", "bf16"),
}
# Fields that also take a Python object (an optimizer class or factory, a scheduler factory), which the
# config records as its ``pkg.module:name`` or ``python:<name>@<hash>`` (registry.object_label), and that
# the CLI and TOML name as ``pkg.module:name``; engine/optim.py resolves them.
OBJECT_FIELDS = (
    "optimizer",
    "client_optimizer",
    "server_optimizer",
    "lr_schedule",
    "client_lr_schedule",
    "server_lr_schedule",
)
OBJECT_HINT = {
    "optimizer": "a torch.optim.Optimizer class or a factory (named parameters) -> Optimizer",
    "lr_schedule": "a factory Optimizer -> torch.optim.lr_scheduler.LRScheduler",
}
# Fields that say where and how a party runs and what it writes, not what it computes (a device or a
# thread count moves only the last bits): the parties of one deployment may differ in them.
MACHINE_FIELDS = frozenset(
    {"data_dir", "device", "threads", "processes", "execution", "cuda_graphs", "deterministic"}
    | {"out", "resume", "model_every", "figures"}
)
# Fields whose values name entries of a registry (extensible, so checked when a run is prepared); the
# help lists the registry's names.
REGISTRY_FIELDS = ("algorithm", "dataset", "model", "partition")

# Knobs that belong to one partition: (partition, field, default).
PARTITION_OPTIONS = {
    "non_iid_ratio": ("non_iid_ratio", 0.8),
    "dirichlet": ("dirichlet_alpha", 0.5),
    "shards": ("shards_per_client", 2),
}


def _f(default: Any, help: str, **kw: Any) -> Any:
    meta = {"help": help, **kw}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Defaults: the embedded demo (digits, 10 clients, p = 0.8)."""

    # what to run
    algorithm: tuple[str, ...] = _f(ALL_ALGORITHMS, "algorithms to run, in order (comma-separated)")
    dataset: str = _f(
        "digits", "data set, PATH.pt (a torch.save'd dict of tensors) or DIR of client_<i>.pt (docs/api.md)"
    )
    data_dir: str | None = _f(None, "folder holding the data set's files (fmnist, cifar10)", metavar="DIR")
    model: str | None = _f(
        None,
        "model name, or pkg.module:builder (imported from the current directory or PYTHONPATH); "
        "default: the data set's (digits_cnn, cnn4, resnet18)",
    )
    model_args: dict = _f(  # noqa: RUF009 (_f builds a default_factory)
        {}, "extra model arguments, e.g. norm=group width=16", flag="model-arg"
    )
    cut_layer: int | str | None = _f(
        None,
        "cut layer Lc (a block number), or the name of the module the client side ends with (e.g. layer2); "
        "default: the model's middle cut",
        metavar="LC|NAME",
    )
    # clients and their data
    clients: int = _f(10, "number of clients N")
    clients_per_round: int | None = _f(None, "clients sampled per round; default: all (full participation)")
    partition: str = _f("non_iid_ratio", "how the training set is dealt to the clients")
    non_iid_ratio: float | None = _f(None, "non-IID ratio p in [0, 1] (spec §4); default 0.8", metavar="P")
    dirichlet_alpha: float | None = _f(None, "Dirichlet concentration for partition=dirichlet; default 0.5")
    shards_per_client: int | None = _f(None, "label shards per client for partition=shards; default 2")
    batch_size: int = _f(32, "per-client batch size b")
    batch_alloc: str = _f("equal", "client batch sizes: equal b_n = b, or proportional b_n ∝ |D_n| (B = N·b)")
    # schedule and optimizer
    rounds: int = _f(20, "rounds (fed-server aggregations)")
    local_epochs: int = _f(5, "local epochs E per round: τ = E·⌈mean |D_n| / b⌉ iterations")
    local_iters: int | None = _f(None, "local iterations τ per round; replaces local_epochs when set")
    # optimizer, per side: torch.optim's arithmetic; its state is kept per side and averaged with the
    # weights wherever they are averaged (engine/optim.py has the table per algorithm)
    optimizer: str = _f(
        "sgd",
        "optimizer of both sides: torch.optim's SGD, Adam, AdamW by name, or any torch.optim.Optimizer "
        "class or factory (named parameters) -> Optimizer, in Python or as pkg.module:name",
    )
    client_optimizer: str | None = _f(None, "client-side optimizer; default: optimizer")
    server_optimizer: str | None = _f(None, "server-side optimizer; default: optimizer")
    lr: float = _f(0.01, "learning rate of both sides")
    client_lr: float | None = _f(None, "client-side learning rate η_c; default: lr")
    server_lr: float | None = _f(None, "server-side learning rate η_s; default: lr")
    momentum: float = _f(0.0, "SGD momentum")
    dampening: float = _f(0.0, "SGD dampening, in [0, 1)")
    nesterov: bool = _f(False, "SGD Nesterov momentum (needs momentum > 0 and dampening 0)")
    weight_decay: float = _f(0.0, "weight decay: L2 added to the gradient (sgd, adam), decoupled (adamw)")
    betas: tuple[float, ...] = _f((0.9, 0.999), "Adam/AdamW coefficients β1,β2", metavar="B1,B2")
    eps: float = _f(1e-8, "Adam/AdamW ε")
    amsgrad: bool = _f(False, "Adam/AdamW: the AMSGrad variant")
    lr_schedule: str = _f(
        "none",
        "learning rate per round, as torch.optim.lr_scheduler's StepLR, CosineAnnealingLR, ExponentialLR; "
        "or any factory Optimizer -> LRScheduler, in Python or as pkg.module:name (stepped once a round)",
    )
    client_lr_schedule: str | None = _f(None, "client-side lr_schedule; default: lr_schedule")
    server_lr_schedule: str | None = _f(None, "server-side lr_schedule; default: lr_schedule")
    lr_step_size: int | None = _f(None, "lr_schedule=step: rounds between decays (required)")
    lr_gamma: float | None = _f(
        None, "lr_schedule=step, exponential: factor per decay (step's default 0.1; exponential: required)"
    )
    lr_min: float | None = _f(None, "lr_schedule=cosine: the final rate η_min; default 0")
    lr_cosine_rounds: int | None = _f(
        None, "lr_schedule=cosine: rounds T_max to reach lr_min; default: rounds"
    )
    clip_grad_norm: float | None = _f(
        None,
        "clip each copy's gradient to this L2 norm, per side (the whole model where it is not split); "
        "default: no clipping",
    )
    precision: str = _f("fp32", "training forward passes in fp32, or bf16 autocast (weights stay fp32)")
    client_grad_scale: str = _f("local_mean", "the gradient sent back to a client's side (spec §2)")
    sflv2_schedule: str = _f("client_sequential", "SFL-V2's order of clients at the main server (spec §3)")
    # drift corrections any algorithm takes on its client parts (algorithms/fedprox.py, scaffold.py)
    prox_mu: float | None = _f(
        None,
        "proximal term μ/2·‖w − w^r‖² on every client part (FedProx's); fedprox's default 0.01; set for "
        "any other algorithm to add it",
        metavar="MU",
    )
    control_variates: bool = _f(
        False, "SCAFFOLD's control variates on the client parts of any algorithm (scaffold: always)"
    )
    # the fed server's own optimizer (algorithms/fedopt.py, scaffold.py)
    fed_lr: float | None = _f(
        None, "the fed server's rate η_g on the averaged update (fedavgm, scaffold: 1; fedadam: 0.01)"
    )
    fed_momentum: float | None = _f(None, "fedavgm's server momentum β; default 0.9")
    fed_betas: tuple[float, ...] | None = _f(
        None, "fedadam's server β1,β2; default 0.9,0.99", metavar="B1,B2"
    )
    fed_eps: float | None = _f(None, "fedadam's server τ (adaptivity); default 1e-3")
    tail_cut: int | str | None = _f(
        None,
        "ushaped_sl: the second cut (a number, or a module's name, as cut_layer), after which the tail "
        "(and the loss) stay on the client; default: the model's last cut",
        metavar="LC|NAME",
    )
    client_state_mb: float = _f(
        1024.0,
        "algorithms with per-client state (scaffold's c_i, fedbn's norm layers): MB held in memory; "
        "beyond, the least recently used go to files beside the checkpoint",
    )
    wire_dtype: str = _f("float32", "smashed data and their gradients as sent")
    execution: str = _f(
        "auto",
        "auto | sequential | batched: clients one at a time, or independent ones vectorised "
        "(auto: batched on CUDA, sequential on the CPU); see docs/performance.md",
    )
    cuda_graphs: bool = _f(True, "on CUDA, replay each recurring step as a captured CUDA graph")
    deterministic: bool = _f(
        False,
        "on CUDA, deterministic kernels only and no TF32: a run repeats bit for bit on the same GPU and "
        "software, somewhat slower (the CPU repeats already)",
    )
    # measurement
    divergence_every: int = _f(
        5, "measure gradient divergence every K rounds, from round 1 (0: never); it costs a gradient pass"
    )
    divergence_samples: int = _f(1000, "samples per client for the divergence gradients")
    divergence_clients: int | None = _f(
        None, "clients the divergence is measured over: a fixed random draw of this many; default all"
    )
    eval_every: int = _f(1, "evaluate on the test set every K rounds (the last round always)")
    eval_batch_size: int = _f(
        0, "samples per evaluation forward; 0: as many as fit (CUDA: all, halved on out-of-memory; CPU: 1000)"
    )
    validation_samples: int = _f(
        0,
        "training samples held out as a validation set before partitioning (one fixed draw for every run "
        "seed; 0: none); its accuracy is recorded each round as val_accuracy, for choosing hyper-parameters",
    )
    synthetic_shape: tuple[int, ...] | None = _f(
        None, "synthetic data: C,H,W; default 1,28,28", metavar="C,H,W"
    )
    synthetic_samples: int | None = _f(None, "synthetic data: training samples; default 2000")
    # reproducibility and output
    seed: int = _f(0, "seed of partition, init and sampling")
    partition_seed: int | None = _f(None, "seed of the partition alone; default: seed")
    init_seed: int | None = _f(None, "seed of the initial model alone; default: seed")
    sampling_seed: int | None = _f(None, "seed of batches, client order and augmentation; default: seed")
    device: str = _f("auto", "cpu | cuda | cuda:N | auto (cuda when available)", metavar="DEVICE")
    threads: int | None = _f(
        None, "CPU threads for torch; default: torch's. Results repeat bit for bit at equal threads"
    )
    processes: int = _f(
        1,
        "processes that share the clients (torch.distributed ranks; --processes K starts them here, or "
        "launch with torchrun). Results repeat bit for bit at equal processes and threads",
    )
    out: str | None = _f(None, "run directory; default: runs/<date>-<time>", metavar="DIR")
    model_every: int = _f(
        0,
        "also save each algorithm's model every K rounds, as models/<algorithm>/round-<R>.pt (0: only the "
        "final models/<algorithm>.pt); each file is the model's size",
    )
    figures: bool = _f(
        True,
        "draw the run's figures (png and svg) into its directory at the end; off, `splitfed report RUN` "
        "draws them later from metrics.jsonl",
    )
    resume: bool = _f(False, "continue the run in --out from its last checkpoint")

    def __post_init__(self) -> None:
        # An algorithm class given in Python: its import path names it (config.toml records that).
        names = self.algorithm if isinstance(self.algorithm, list | tuple) else (self.algorithm,)
        if any(isinstance(a, type) for a in names):
            given = tuple(given_name(a) if isinstance(a, type) else a for a in names)
            object.__setattr__(self, "algorithm", given)
        for name in OBJECT_FIELDS:  # an optimizer or schedule given as an object: recorded by its label
            value = getattr(self, name)
            if value is None or isinstance(value, str):
                continue
            if not callable(value):  # e.g. an optimizer built already: one instance cannot serve K copies
                hint = OBJECT_HINT["lr_schedule" if name.endswith("lr_schedule") else "optimizer"]
                raise SplitfedError(
                    f"{name} is a {type(value).__name__} instance; give a name or {hint}, which splitfed "
                    "calls for each side"
                )
            object.__setattr__(self, name, object_label(value))
        for f in dataclasses.fields(self):  # types first (Python callers skip the TOML/CLI parsing)
            object.__setattr__(self, f.name, coerce(f, getattr(self, f.name), f.name))
        _validate(self)

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise SplitfedError(f"unknown config key {key!r} in {source}; valid keys: {', '.join(known)}")
            kwargs[key] = coerce(known[key], value, f"{key} in {source}")
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Config":
        return cls.from_dict(read_toml(path), source=str(path))

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def run_identity(self) -> dict[str, Any]:
        """The fields that decide the run's numbers (all but MACHINE_FIELDS): every party of a deployment
        must agree on them, and checks that it does before any work."""
        return {k: v for k, v in self.to_dict().items() if k not in MACHINE_FIELDS}

    def to_toml(self) -> str:
        return dump_toml({k: v for k, v in self.to_dict().items() if v is not None})

    # --- derived values -----------------------------------------------------------------------------
    @property
    def partition_option(self) -> float | int | None:
        opt = PARTITION_OPTIONS.get(self.partition)
        return None if opt is None else getattr(self, opt[0])

    def seed_for(self, purpose: str) -> int:
        own = {"partition": self.partition_seed, "init": self.init_seed, "sampling": self.sampling_seed}[
            purpose
        ]
        return self.seed if own is None else own


# A config is a few dozen lines; anything near this is not one, and parsing it would take a while.
MAX_CONFIG_BYTES = 1 << 20
FLOAT32_MAX = 3.4028234663852886e38  # rates and decays are float32 in every optimizer step


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's table; any way the file can be unreadable is one SplitfedError naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise SplitfedError(f"cannot read config file {path}: {e.strerror or e}") from None
    except ValueError:  # open() refuses a NUL byte in a path with ValueError
        raise SplitfedError(f"config file path {str(path)!r} contains a NUL byte") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise SplitfedError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SplitfedError(
            f"config file {path} is not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}); TOML must be"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise SplitfedError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise SplitfedError(f"config file {path} nests arrays or tables too deeply to be a config") from None


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def coerce(f: dataclasses.Field, value: Any, where: str, *, from_cli: bool = False) -> Any:
    """Check and convert a value to the field's type.

    ``from_cli`` says the value is the text of a command-line flag, to be parsed ("3" -> 3, "none" ->
    None, "3x32x32" -> (3, 32, 32)). Every other source (a TOML file, a grid file, a Python caller) has
    typed values and gets no parsing: ``rounds = "1"`` in a file is a mistake that would otherwise hide
    another (a quoted number usually means the file was generated or edited wrongly), so it is refused.
    ``where`` names the value in the error, e.g. "rounds in exp.toml" or "--rounds".
    """
    tp, optional = _base_type(f.type)
    if from_cli and not isinstance(value, str):
        raise TypeError(f"{where}: a command-line value must be a string, got {value!r}")
    if optional and (value is None or (from_cli and value.lower() == "none")):
        return None
    try:
        if tp is bool:
            if from_cli and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
        elif tp is int:
            if from_cli:
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if from_cli:
                return float(value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif tp is str:
            if isinstance(value, str):
                return value
        elif tp == CUT:  # a block number, or a module's qualified name ("3" on the command line is 3)
            if from_cli:
                return int(value) if value.strip().isdigit() else value
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and not value.isdigit():  # "3" in a file is a quoted number
                return value
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            if from_cli:  # "a,b,c"; integer lists may also be written 3x32x32
                text = value.replace("x", ",") if item is int else value
                return tuple(item(v.strip()) for v in text.split(","))
            if isinstance(value, str) and item is str:  # one name for a list of names
                return (value,)
            kinds = (int, float) if item is float else item  # a list of numbers may hold integers
            if isinstance(value, list | tuple) and all(
                isinstance(v, kinds) and not isinstance(v, bool) for v in value
            ):
                return tuple(item(v) for v in value)
        elif (
            tp is dict
            and isinstance(value, dict)
            and all(isinstance(v, int | float | str | bool) for v in value.values())
        ):
            return dict(value)
    except ValueError:
        pass
    hint = ""
    if isinstance(value, str) and not from_cli and tp is not str:
        hint = " (a string: in a file, write numbers, booleans and lists without quotes)"
    raise SplitfedError(f"{where} must be {_type_name(f.type)}, got {value!r}{hint}")


def _type_name(tp: Any) -> str:
    base, optional = _base_type(tp)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    names[CUT] = "an integer or a module's name"
    lists = {int: "a list of integers", float: "a list of numbers"}
    name = names.get(base) or lists.get(typing.get_args(base)[0], "a list of names")
    return name + (" or none" if optional else "")


def _validate(c: Config) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise SplitfedError(msg)

    need(c.validation_samples >= 0, f"validation_samples must be >= 0, got {c.validation_samples}")
    positive = (
        "clients",
        "batch_size",
        "rounds",
        "local_epochs",
        "divergence_samples",
        "processes",
        "eval_every",
    )
    for name in positive:
        need(getattr(c, name) >= 1, f"{name} must be a positive integer, got {getattr(c, name)}")
    for name in (
        "clients_per_round",
        "divergence_clients",
        "local_iters",
        "shards_per_client",
        "synthetic_samples",
        "threads",
    ):
        v = getattr(c, name)
        need(v is None or v >= 1, f"{name} must be a positive integer, got {v}")
    if c.threads is not None:
        check_threads(c.threads)
    _check_text(c)
    for name in ("lr", "client_lr", "server_lr", "dirichlet_alpha", "fed_lr", "fed_eps", "client_state_mb"):
        v = getattr(c, name)
        need(
            v is None or (math.isfinite(v) and 0 < v <= FLOAT32_MAX),
            f"{name} must be a positive number up to {FLOAT32_MAX:.3g} (float32), got {v}",
        )
    need(
        c.prox_mu is None or (math.isfinite(c.prox_mu) and c.prox_mu >= 0),
        f"prox_mu must be >= 0, got {c.prox_mu}",
    )
    fm = c.fed_momentum
    need(fm is None or (math.isfinite(fm) and 0 <= fm < 1), f"fed_momentum must be in [0, 1), got {fm}")
    need(
        c.fed_betas is None
        or (len(c.fed_betas) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in c.fed_betas)),
        f"fed_betas must be two numbers in [0, 1), got {c.fed_betas}",
    )
    for name in ("cut_layer", "tail_cut"):
        v = getattr(c, name)
        need(
            v is None or (v >= 1 if isinstance(v, int) else bool(v.strip())),
            f"{name} must be a positive integer or a module's name, got {v!r}",
        )
    need(c.divergence_every >= 0, f"divergence_every must be >= 0, got {c.divergence_every}")
    need(c.model_every >= 0, f"model_every must be >= 0 (0: final models only), got {c.model_every}")
    need(c.eval_batch_size >= 0, f"eval_batch_size must be >= 0 (0: automatic), got {c.eval_batch_size}")
    p = c.non_iid_ratio
    need(p is None or 0.0 <= p <= 1.0, f"non_iid_ratio must be in [0, 1], got {p}")
    need(len(c.algorithm) > 0, "algorithm must name at least one algorithm")
    need(len(set(c.algorithm)) == len(c.algorithm), f"algorithm lists a name twice: {','.join(c.algorithm)}")
    if c.clients_per_round is not None:
        need(
            c.clients_per_round <= c.clients,
            f"clients_per_round ({c.clients_per_round}) exceeds clients ({c.clients})",
        )
    for name, allowed in CHOICES.items():
        v = getattr(c, name)
        optional = _base_type(FIELDS[name].type)[1]
        if name in OBJECT_FIELDS:
            hint = OBJECT_HINT["lr_schedule" if name.endswith("lr_schedule") else "optimizer"]
            need(
                v in allowed or (optional and v is None) or ":" in v,
                f"{name} must be one of {', '.join(allowed)}, or {hint} (in Python, or as pkg.module:name); "
                f"got {v!r}",
            )
            continue
        need(
            v in allowed or (optional and v is None), f"{name} must be one of {', '.join(allowed)}; got {v!r}"
        )
    _validate_optimizer(c)
    for part, (knob, _) in PARTITION_OPTIONS.items():
        if getattr(c, knob) is not None and c.partition != part:
            raise SplitfedError(f"{knob} applies to partition={part} only (partition is {c.partition})")
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
        for knob in ("synthetic_shape", "synthetic_samples"):
            need(getattr(c, knob) is None, f"{knob} applies to dataset=synthetic only")
    if c.synthetic_shape is not None:
        need(
            len(c.synthetic_shape) == 3 and min(c.synthetic_shape) >= 1,
            f"synthetic_shape must be three positive integers C,H,W; got {c.synthetic_shape}",
        )
    need(
        re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,4})?", c.device) is not None,
        f"device must be cpu, cuda, cuda:N or auto; got {c.device!r}",
    )


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
SGD_ONLY = {"momentum": 0.0, "dampening": 0.0, "nesterov": False}
ADAM_ONLY = {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}
# The schedule knobs and the schedules that read them.
SCHEDULE_OPTIONS = {
    "lr_step_size": ("step",),
    "lr_gamma": ("step", "exponential"),
    "lr_min": ("cosine",),
    "lr_cosine_rounds": ("cosine",),
}


def _validate_optimizer(c: Config) -> None:
    """The optimizer, schedule, clipping knobs: in range, and none set that no side's optimizer reads."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise SplitfedError(msg)

    def number(name: str, ok: bool, what: str) -> None:
        v = getattr(c, name)
        # a rate or a decay beyond float32 turns inf inside the optimizer, whatever its sign
        fits = v is None or (math.isfinite(v) and abs(v) <= FLOAT32_MAX)
        need(fits and ok, f"{name} must be {what} (and within float32, {FLOAT32_MAX:.3g}), got {v}")

    number("momentum", 0 <= c.momentum < 1, "in [0, 1)")
    number("dampening", 0 <= c.dampening < 1, "in [0, 1)")
    number("weight_decay", c.weight_decay >= 0, ">= 0")
    number("eps", c.eps >= 0, ">= 0")
    number("clip_grad_norm", c.clip_grad_norm is None or c.clip_grad_norm > 0, "a positive number")
    number("lr_gamma", c.lr_gamma is None or c.lr_gamma > 0, "a positive number")
    number("lr_min", c.lr_min is None or c.lr_min >= 0, ">= 0")
    for name in ("lr_step_size", "lr_cosine_rounds"):
        v = getattr(c, name)
        need(v is None or v >= 1, f"{name} must be a positive integer, got {v}")
    need(
        len(c.betas) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in c.betas),
        f"betas must be two numbers in [0, 1), got {','.join(map(str, c.betas))}",
    )
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
        if getattr(c, name) is not None and not kinds & set(schedules):
            raise SplitfedError(
                f"{name} applies to lr_schedule={' or '.join(schedules)} only "
                f"(it is {' and '.join(sorted(kinds))})"
            )
    need("step" not in kinds or c.lr_step_size is not None, "lr_schedule=step needs lr_step_size")
    need("exponential" not in kinds or c.lr_gamma is not None, "lr_schedule=exponential needs lr_gamma")


def _check_text(c: Config) -> None:
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


def dump_toml(values: dict[str, Any]) -> str:
    """A flat TOML document (scalars, lists, and inline tables) for the resolved config."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            # Every character TOML forbids raw in a basic string is escaped (a newline in --out would
            # otherwise write a config.toml that --resume cannot read).
            return '"' + "".join(_TOML_ESCAPES.get(ch) or _escape_control(ch) for ch in v) + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {fmt(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else fmt(k)

    return "".join(f"{k} = {fmt(v)}\n" for k, v in values.items())


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape_control(ch: str) -> str:
    return f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch
