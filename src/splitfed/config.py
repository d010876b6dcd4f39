"""The run configuration: one frozen dataclass, defaults in one place, TOML file plus flag overrides.

Every field is a CLI flag of the same name (``cut_layer`` is ``--cut-layer``); the settings of one
algorithm or mode are sections (sections.py: ``[sfl_v2] schedule``, ``--sfl-v2.schedule``,
``cfg.sfl_v2.schedule``). An unknown key, a value of the wrong type or out of range is a SplitfedError
naming the key and what is accepted. Reading and writing the values is typed.py's, their rules
validate.py's, the fixed lists of values choices.py's.
"""

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import CHOICES, OBJECT_FIELDS, PARTITION_OPTIONS, object_hint
from .errors import SplitfedError
from .registry import given_name, object_label
from .sections import (
    LEGACY,
    SECTIONS,
    SETTINGS,
    Correction,
    Divergence,
    FedOptimizer,
    LrDecay,
    MinibatchSfl,
    Section,
    SflV2,
    Synthetic,
    UshapedSl,
    flatten,
    lift,
    setting,
)
from .typed import CUT, NAMED_OR_TABLE, coerce, dump_toml, from_table, read_toml
from .validate import validate

# Importable from here as before: the lists are choices.py's, the readers typed.py's.
__all__ = [
    "ALL_ALGORITHMS",
    "CHOICES",
    "CUT",
    "DEFAULTS",
    "FIELDS",
    "MACHINE_FIELDS",
    "OBJECT_FIELDS",
    "PARTITION_OPTIONS",
    "REGISTRY_FIELDS",
    "RUN_CONFIG",
    "Config",
    "coerce",
    "dump_toml",
    "field_of",
    "read_toml",
]

ALL_ALGORITHMS = ("minibatch_sfl", "sfl_v1", "sfl_v2", "sl", "fedavg", "centralized")

# Fields that say where and how a party runs and what it writes, not what it computes (a device or a
# thread count moves only the last bits): the parties of one deployment may differ in them.
MACHINE_FIELDS = frozenset(
    {"data_dir", "device", "threads", "processes", "execution", "cuda_graphs", "deterministic"}
    | {"channels_last", "out", "resume", "model_every", "figures"}
)
# Fields whose values name entries of a registry (extensible, so checked when a run is prepared); the
# help lists the registry's names.
REGISTRY_FIELDS = ("algorithm", "dataset", "model", "partition")
# The file a run directory's resolved config is written to: splitfed wrote it, so its flat old keys (a
# run from before the sections) are read without a deprecation note.
RUN_CONFIG = "config.toml"

_f = setting


def section(cls: type[Section]) -> Any:
    """A section's field. It stands where its keys stood as flat fields: ``to_dict()`` lists their flat
    names in the order runs.csv's settings columns have always had them."""
    return field(default=cls(), metadata={"help": cls.__doc__})


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
    lr_decay: LrDecay = section(LrDecay)  # noqa: RUF009 (a frozen default)
    clip_grad_norm: float | None = _f(
        None,
        "clip each copy's gradient to this L2 norm, per side (the whole model where it is not split); "
        "default: no clipping",
    )
    precision: str = _f("fp32", "training forward passes in fp32, or bf16 autocast (weights stay fp32)")
    # the settings of one algorithm, and the drift corrections and fed-server optimizer some take
    minibatch_sfl: MinibatchSfl = section(MinibatchSfl)  # noqa: RUF009 (a frozen default)
    sfl_v2: SflV2 = section(SflV2)  # noqa: RUF009 (a frozen default)
    correction: Correction = section(Correction)  # noqa: RUF009 (a frozen default)
    fed_optimizer: FedOptimizer = section(FedOptimizer)  # noqa: RUF009 (a frozen default)
    ushaped_sl: UshapedSl = section(UshapedSl)  # noqa: RUF009 (a frozen default)
    profile: NAMED_OR_TABLE | None = _f(  # noqa: RUF009 (_f builds the field)
        None,
        "devices and links to time each round on (engine/profiles.py: phone-4g, phone-4g-mixed, sbc-wifi, "
        "datacenter; or a table of a profile's fields; or a list, timed at once): each round records its "
        "simulated seconds",
        metavar="NAME",
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
    channels_last: bool = _f(
        False,
        "run convolutions in channels-last memory order (a copy of each 4-D weight and input per forward): "
        "the same numbers up to the last bits; on the CPU ResNet-18 trains 1.1-1.2x and evaluates 1.3-1.5x "
        "faster, cnn4 is slower (docs/performance.md); not in vectorised calls (execution batched)",
    )
    deterministic: bool = _f(
        False,
        "on CUDA, deterministic kernels only and no TF32: a run repeats bit for bit on the same GPU and "
        "software, somewhat slower (the CPU repeats already)",
    )
    # measurement
    divergence: Divergence = section(Divergence)  # noqa: RUF009 (a frozen default)
    eval_every: int = _f(1, "evaluate on the test set every K rounds (the last round always)")
    eval_batch_size: int = _f(
        0, "samples per evaluation forward; 0: as many as fit (CUDA: all, halved on out-of-memory; CPU: 1000)"
    )
    validation_samples: int = _f(
        0,
        "training samples held out as a validation set before partitioning (one fixed draw for every run "
        "seed; 0: none); its accuracy is recorded each round as val_accuracy, for choosing hyper-parameters",
    )
    synthetic: Synthetic = section(Synthetic)  # noqa: RUF009 (a frozen default)
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
                raise SplitfedError(
                    f"{name} is a {type(value).__name__} instance; give a name or {object_hint(name)}, which "
                    "splitfed calls for each side"
                )
            object.__setattr__(self, name, object_label(value))
        for f in dataclasses.fields(self):  # types first (Python callers skip the TOML/CLI parsing)
            object.__setattr__(self, f.name, coerce(f, getattr(self, f.name), f.name))
        validate(self)

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        """From a table (a file's): a flat old key is noted, except in a run directory's own config.toml."""
        return from_table(cls, lift(values, note=Path(source).name != RUN_CONFIG), source)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Config":
        return cls.from_dict(read_toml(path), source=str(path))

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes``: fields, ``section.key`` paths or flat old names."""
        return dataclasses.replace(self, **changes)

    def get(self, name: str) -> Any:
        """A field's value, or a section key's by its path (``sfl_v2.schedule``)."""
        value = self
        for part in name.split("."):
            value = getattr(value, part)
        return value

    def to_dict(self) -> dict[str, Any]:
        """Every value by its flat name, the sections' keys by the names they had before the sections
        (``sflv2_schedule``): what run ids, runs.csv's columns and checkpoints hold."""
        return flatten({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every value's default by its flat name (``to_dict``'s names): what a run id leaves out."""
        return flatten({f.name: _default(f) for f in dataclasses.fields(cls)})

    def run_identity(self) -> dict[str, Any]:
        """The fields that decide the run's numbers (all but MACHINE_FIELDS), flat (``to_dict``): every
        party of a deployment must agree on them, and checks that it does before any work."""
        return {k: v for k, v in self.to_dict().items() if k not in MACHINE_FIELDS}

    def to_toml(self, without: tuple[str, ...] = ()) -> str:
        """The fields (but ``without``), then each section as a table of its keys set (none unset)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in without}
        tables = {
            name: {k: v for k, v in dataclasses.asdict(values.pop(name)).items() if v is not None}
            for name in SECTIONS
        }
        return dump_toml({k: v for k, v in values.items() if v is not None}, tables)

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


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


_dataclass_init = Config.__init__


@functools.wraps(_dataclass_init)
def _init(self: Config, **values: Any) -> None:
    # Config(sflv2_schedule=...) and replace(**{"sfl_v2.schedule": ...}): into their sections first
    _dataclass_init(self, **lift(values))


Config.__init__ = _init  # type: ignore[method-assign]
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
DEFAULTS = Config.defaults()


def field_of(name: str) -> dataclasses.Field | None:
    """The field a key names: a config field, a section key's path (``sfl_v2.schedule``) or a flat old name
    (``sflv2_schedule``); None for no key of a config."""
    return FIELDS.get(name) or SETTINGS.get(LEGACY.get(name, name))
