"""The run configuration: one frozen dataclass, defaults in one place, TOML file plus flag overrides.

Every field is a CLI flag of the same name (``cut_layer`` is ``--cut-layer``); an unknown key, a value of
the wrong type or out of range is a SplitfedError naming the key and what is accepted. Reading and
writing the values is typed.py's, their rules validate.py's, the fixed lists of values choices.py's.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import CHOICES, OBJECT_FIELDS, PARTITION_OPTIONS, object_hint
from .errors import SplitfedError
from .registry import given_name, object_label
from .typed import CUT, NAMED_OR_TABLE, coerce, dump_toml, from_table, read_toml
from .validate import validate

# Importable from here as before: the lists are choices.py's, the readers typed.py's.
__all__ = [
    "ALL_ALGORITHMS",
    "CHOICES",
    "CUT",
    "FIELDS",
    "MACHINE_FIELDS",
    "OBJECT_FIELDS",
    "PARTITION_OPTIONS",
    "REGISTRY_FIELDS",
    "Config",
    "coerce",
    "dump_toml",
    "read_toml",
]

ALL_ALGORITHMS = ("minibatch_sfl", "sfl_v1", "sfl_v2", "sl", "fedavg", "centralized")

# Fields that say where and how a party runs and what it writes, not what it computes (a device or a
# thread count moves only the last bits): the parties of one deployment may differ in them.
MACHINE_FIELDS = frozenset(
    {"data_dir", "device", "threads", "processes", "execution", "cuda_graphs", "deterministic"}
    | {"out", "resume", "model_every", "figures"}
)
# Fields whose values name entries of a registry (extensible, so checked when a run is prepared); the
# help lists the registry's names.
REGISTRY_FIELDS = ("algorithm", "dataset", "model", "partition")


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
    profile: NAMED_OR_TABLE | None = _f(  # noqa: RUF009 (_f builds the field)
        None,
        "devices and links to time each round on (engine/profiles.py: phone-4g, phone-4g-mixed, sbc-wifi, "
        "datacenter; or a table of a profile's fields): each round records its simulated seconds",
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
        return from_table(cls, values, source)

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


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
