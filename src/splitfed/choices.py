"""The fixed lists of values a config field takes, each defined once: the config checks them, `splitfed run
--help` lists them, and the modules that act on a value import its list from here."""

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("none", "step", "cosine", "exponential")
WIRE_DTYPES = ("float32", "float16", "bfloat16")  # torch's dtype names
PRECISIONS = ("fp32", "bf16")
EXECUTIONS = ("auto", "sequential", "batched")
SFLV2_SCHEDULES = ("client_sequential", "interleaved")  # algorithms/base.py's schedule names

# Fields (and sections' keys, by their path) with a fixed set of values: what the config accepts and
# what `splitfed run --help` lists.
CHOICES = {
    "batch_alloc": ("equal", "proportional"),
    "minibatch_sfl.client_grad_scale": ("local_mean", "global_mean"),
    "sfl_v2.schedule": SFLV2_SCHEDULES,
    "execution": EXECUTIONS,
    "wire_dtype": WIRE_DTYPES,
    "optimizer": OPTIMIZERS,
    "client_optimizer": OPTIMIZERS,  # or none: optimizer's
    "server_optimizer": OPTIMIZERS,
    "lr_schedule": LR_SCHEDULES,
    "client_lr_schedule": LR_SCHEDULES,  # or none: lr_schedule's
    "server_lr_schedule": LR_SCHEDULES,
    "precision": PRECISIONS,
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


def object_hint(name: str) -> str:
    """What an object given for OBJECT_FIELDS ``name`` must be."""
    return OBJECT_HINT["lr_schedule" if name.endswith("lr_schedule") else "optimizer"]


# Knobs that belong to one partition: (partition, field, default).
PARTITION_OPTIONS = {
    "non_iid_ratio": ("non_iid_ratio", 0.8),
    "dirichlet": ("dirichlet_alpha", 0.5),
    "shards": ("shards_per_client", 2),
}
# Optimizer knobs (with their defaults) that only some optimizers read.
SGD_ONLY = {"momentum": 0.0, "dampening": 0.0, "nesterov": False}
ADAM_ONLY = {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}
# The schedule knobs ([lr_decay]) and the schedules that read them.
SCHEDULE_OPTIONS = {
    "lr_decay.step_size": ("step",),
    "lr_decay.gamma": ("step", "exponential"),
    "lr_decay.min_lr": ("cosine",),
    "lr_decay.cosine_rounds": ("cosine",),
}
