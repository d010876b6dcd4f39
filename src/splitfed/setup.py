"""Setup: what every executor needs from a Config — data, partition, model, its split and initial weights.

``prepare(cfg)`` checks the config against the data and the model and builds the ``Setup`` that the
in-process executors, the distributed executor and each networked role share, so all of them train from
the same partition, initial weights and sample streams. It touches no files. The Python API may hand it
the user's own model, data and loss as objects (``prepare(cfg, model=..., data=..., loss=...)``).
"""

import copy
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._rng import derive_seed, generator
from .config import PARTITION_OPTIONS, Config
from .data import DATASETS, PARTITIONS, ClientStreams, Dataset, make_partition
from .data.datasets import (
    PYTHON_DATA,
    SYNTHETIC_SAMPLES,
    SYNTHETIC_SHAPE,
    Augment,
    is_data_file,
    user_data,
)
from .data.given import given_data, is_given_folder, is_per_client, load_given_file, load_given_folder
from .engine.context import Context, PartSpec
from .engine.link import Link
from .engine.metrics import LossFn, SplitModel, measure_divergence, train_flops_per_sample
from .engine.optim import LRSchedule, check_optimizer_knobs, side_optimizer
from .engine.side import Layout, State
from .engine.user_optim import TorchOptimizer
from .errors import SplitfedError
from .models import (
    MODELS,
    PYTHON_MODEL,
    ModelLike,
    check_cut,
    cut_points,
    default_cut,
    describe,
    import_name,
    make_model,
    model_label,
    resolve_model,
    split,
)
from .preflight import DEFAULT_MODEL, check_batches, check_model

log = logging.getLogger("splitfed")


@dataclass
class Setup:
    """Everything shared by the algorithms of one run: same data, partition, model and initial weights."""

    cfg: Config  # resolved: model, cut layer and partition option filled in
    data: Dataset  # on the run's device
    parts: list[torch.Tensor]  # training-set indices per client
    model: nn.Module  # the full model (a CutModel, or the user's module cut by name): the initial weights
    client_module: nn.Module
    server_module: nn.Module
    init_c: State
    init_s: State
    flops_per_sample: tuple[float, float]  # training FLOPs per sample: client side, server side
    divergence_idx: dict[int, torch.Tensor]  # client -> its fixed samples for divergence (some clients)
    # loss(output, target) -> the batch's mean loss: what every side trains on, evaluation reports and
    # divergence differentiates (a user's, from run(loss=...); cross-entropy by default)
    loss: LossFn = F.cross_entropy

    @property
    def device(self) -> torch.device:
        return self.init_c.params.device

    @property
    def data_sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    def tau(self) -> int:
        """Local iterations per round: local_iters, else E·⌈mean |D_n| / b⌉ (the same for every client,
        since MiniBatch-SFL's clients step in lockstep)."""
        if self.cfg.local_iters:
            return self.cfg.local_iters
        mean_size = sum(self.data_sizes) / len(self.parts)
        return self.cfg.local_epochs * math.ceil(mean_size / self.cfg.batch_size)

    def batch_sizes(self) -> list[int]:
        """b_n: b for every client, or ∝ |D_n| with Σ b_n = N·b (largest remainders; at least 1)."""
        n, b = len(self.parts), self.cfg.batch_size
        if self.cfg.batch_alloc == "equal":
            return [b] * n
        sizes = self.data_sizes
        exact = [n * b * s / sum(sizes) for s in sizes]
        alloc = [math.floor(e) for e in exact]
        by_remainder = sorted(range(n), key=lambda i: alloc[i] - exact[i])
        for i in by_remainder[: n * b - sum(alloc)]:
            alloc[i] += 1
        return [max(1, a) for a in alloc]

    def participants(self, rnd: int) -> list[int]:
        """The clients of round ``rnd``: all, or ``clients_per_round`` drawn without replacement."""
        cfg = self.cfg
        if cfg.clients_per_round is None:
            return list(range(cfg.clients))
        perm = torch.randperm(cfg.clients, generator=generator(cfg.seed_for("sampling"), "clients", rnd))
        return sorted(perm[: cfg.clients_per_round].tolist())

    def context(self) -> Context:
        """A fresh context per algorithm: every algorithm sees the same batch sequence from the same seed.
        Its parts are the run's two halves ("client", "server"); an executor replaces them with the
        parts of the algorithm it runs (executors/parts.py)."""
        union = torch.cat(self.parts)  # stream N: the union, in client order
        streams = ClientStreams(self.data, [*self.parts, union], self.cfg.seed_for("sampling"))
        return Context(
            self.cfg,
            streams,
            self.client_module,
            self.server_module,
            self.init_c,
            self.init_s,
            self.tau(),
            self.batch_sizes(),
            self.data_sizes,
            Link(len(self.parts), self.cfg.wire_dtype),
            loss=self.loss,
            parts={
                "client": PartSpec(self.client_module, self.init_c, "client", self.flops_per_sample[0]),
                "server": PartSpec(self.server_module, self.init_s, "server", self.flops_per_sample[1]),
            },
        )

    def split_model(self) -> SplitModel:
        """The two halves run functionally, for evaluation and divergence, with the run's loss."""
        return SplitModel(self.client_module, self.server_module, self.loss)

    def divergence(self, split: SplitModel, w_c: State, w_s: State) -> dict[str, float]:
        """Client-side and server-side gradient divergence at (w_c, w_s) on the fixed subsamples."""
        x, y = self.data.train_x, self.data.train_y
        clients = list(self.divergence_idx)
        sizes = [self.data_sizes[n] for n in clients]
        return measure_divergence(split, x, y, list(self.divergence_idx.values()), sizes, w_c, w_s)

    def assemble(self, w_c: State, w_s: State) -> nn.Module:
        """The full model (as the run built it) holding the given client-side and server-side states."""
        assert self.cfg.cut_layer is not None  # resolved by prepare
        model = copy.deepcopy(self.model).to(w_c.params.device)
        return assemble(model, self.cfg.cut_layer, w_c, w_s, self.data.train_x[:2])


def assemble(
    model: nn.Module, cut_layer: int | str, w_c: State, w_s: State, example: torch.Tensor | None = None
) -> nn.Module:
    """``model`` (built like the run's) with the given client-side and server-side states copied into
    its halves; returned for chaining. ``example``: an input batch, for a model cut by name."""
    for half, state in zip(split(model, cut_layer, example), (w_c, w_s), strict=True):
        layout = Layout(half)
        with torch.no_grad():
            for p, v in zip(half.parameters(), layout.param_views(state.params), strict=True):
                p.copy_(v)
            for b, v in zip(half.buffers(), layout.buffer_dict(state.buffers).values(), strict=True):
                b.copy_(v.to(b.dtype))
    return model


def deterministic_cuda() -> None:
    """Make CUDA runs repeat bit for bit, for this whole process.

    By default cuDNN may pick a convolution algorithm by the workspace memory free at the time (which
    differs when runs share a GPU) and run it in TF32, and some backward kernels add with atomics, so two
    runs of one config differ in the last bits, which SFL-V2's swings then grow to a point of accuracy
    (measured on an H100, docs/results.md §1b). cuBLAS needs its workspace fixed before it starts.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # warn_only: an op with no deterministic CUDA kernel warns (naming itself) instead of ending the run
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SplitfedError(f"device {name} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def load_data(cfg: Config) -> Dataset:
    """The data set config.dataset names: a registered one, or a ``PATH.pt`` file of tensors."""
    if cfg.dataset.startswith(PYTHON_DATA):
        raise SplitfedError(
            f"dataset {cfg.dataset} was given to run() as Python data; pass it again: run(config, data=...)"
        )
    if is_data_file(cfg.dataset):
        return load_given_file(cfg.dataset)
    if cfg.dataset not in DATASETS and is_given_folder(cfg.dataset):
        return load_given_folder(cfg.dataset)
    loader = DATASETS.get(cfg.dataset)
    if cfg.dataset == "synthetic":
        return loader(
            cfg.data_dir,
            shape=tuple(cfg.synthetic_shape or SYNTHETIC_SHAPE),
            samples=cfg.synthetic_samples or SYNTHETIC_SAMPLES,
        )
    return loader(cfg.data_dir)


def prepare(
    cfg: Config,
    model: ModelLike | None = None,
    data: Any = None,
    loss: LossFn | None = None,
    transform: Augment | None = None,
) -> Setup:
    """Validate the whole config against data and model, and build the shared setup. Touches no files.

    ``model`` (an nn.Module, two halves (client, server) or a builder) and ``data`` (one data set, see
    ``data.datasets.user_data``, or data split into clients, ``data.given``) replace config.model and
    config.dataset, which then record what was given (``check_user_objects``); ``loss`` replaces
    cross-entropy; ``transform(x_batch, generator)`` runs on every training batch, on its device.
    """
    check_user_objects(cfg, model, data)
    if data is None and not _names_files(cfg.dataset):
        DATASETS.get(cfg.dataset)
    PARTITIONS.get(cfg.partition)
    if model is None:
        model_name = cfg.model or DEFAULT_MODEL.get(cfg.dataset, "cnn4")
        builder = resolve_model(model_name)
    else:
        model_name, builder = describe(model), model
    device = resolve_device(cfg.device)
    # CPU kernels sum in an order that depends on the thread count: it is part of what a run repeats.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic and device.type == "cuda":
        deterministic_cuda()
    if data is None:
        data_set = load_data(cfg)
    else:
        data_set = given_data(data, cfg.clients) if is_per_client(data) else user_data(data)
        cfg = cfg.replace(dataset=data_set.name)  # its fingerprint: a resumed run refuses other data
    cfg = choose_partition(cfg, data_set, users=data is not None or _names_files(cfg.dataset))
    if transform is not None:
        data_set.augment = _after(data_set.augment, transform)
    if cfg.validation_samples:
        data_set = data_set.hold_out(cfg.validation_samples)

    if model is None and model_name in MODELS:  # a registered model fits in memory, or one line
        check_model(model_name, data_set.num_classes, data_set.in_shape, cfg.model_args)
    # The initial model: its own seed, and the global RNG left as it was. A module given as an object
    # keeps its own weights; the seed is for builders.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed_for("init"), "init"))
        built = build(builder, model_name, data_set.num_classes, data_set.in_shape, cfg.model_args)
    if model is not None:
        model_name = model_label(model, built)
    cut_layer = cfg.cut_layer if cfg.cut_layer is not None else default_cut(built, model_name)
    check_cut(built, cut_layer, model_name)
    _check_finite(built, model_name, data_set)
    _check_forward(built, model_name, cfg.dataset, data_set, loss)

    changes: dict[str, Any] = {
        "model": model_name,
        "cut_layer": cut_layer,
        "threads": torch.get_num_threads(),
    }
    knob = PARTITION_OPTIONS.get(cfg.partition)
    if knob is not None and getattr(cfg, knob[0]) is None:
        changes[knob[0]] = knob[1]
    if cfg.dataset == "synthetic":
        changes["synthetic_shape"] = tuple(cfg.synthetic_shape or SYNTHETIC_SHAPE)
        changes["synthetic_samples"] = cfg.synthetic_samples or SYNTHETIC_SAMPLES
    cfg = cfg.replace(**changes)

    if data_set.parts is not None:
        parts = data_set.parts
    else:
        parts = make_partition(
            cfg.partition, data_set.train_y, cfg.clients, cfg.seed_for("partition"), cfg.partition_option
        )
    check_batches(cfg.batch_size, cfg.batch_alloc, [len(p) for p in parts])
    client_module, server_module = split(built, cut_layer, data_set.train_x[:2])
    for side, half in (("client", client_module), ("server", server_module)):
        if not any(True for _ in half.parameters()):  # nothing to train there: the split is not a split
            # a Sequential's blocks by type; a traced half's by name (its children are the model's paths)
            sequential = isinstance(half, nn.Sequential)
            blocks = ", ".join(type(m).__name__ if sequential else n for n, m in half.named_children())
            raise SplitfedError(
                f"cut_layer {cut_layer} leaves model {model_name}'s {side} side without parameters "
                f"({blocks}); choose a cut with trainable layers on both sides (cuts: "
                f"{', '.join(map(str, cut_points(built, named=isinstance(cut_layer, str))))})"
            )
    # Each side's optimizer and schedule, built and stepped once here: one given as an object that
    # cannot train (or be averaged) is refused before anything runs.
    opt_c, opt_s = side_optimizer(cfg, "client", client_module), side_optimizer(cfg, "server", server_module)
    check_optimizer_knobs(cfg, [opt_c, opt_s])
    for half, opt in (("client", opt_c), ("server", opt_s)):
        LRSchedule(cfg, opt.lr, half, opt if isinstance(opt, TorchOptimizer) else None).rates(cfg.rounds)
    init_c = Layout(client_module).state_of(client_module, opt_c, device)
    init_s = Layout(server_module).state_of(server_module, opt_s, device)
    flops = train_flops_per_sample(client_module, server_module, data_set.in_shape, data_set.train_x.dtype)
    client_module.to(device)
    server_module.to(device)
    # The divergence's clients (all, or a fixed draw: thousands of clients) and their fixed samples.
    chosen = range(cfg.clients)
    if cfg.divergence_clients is not None and cfg.divergence_clients < cfg.clients:
        draw = torch.randperm(
            cfg.clients, generator=generator(cfg.seed_for("sampling"), "divergence-clients")
        )
        chosen = sorted(draw[: cfg.divergence_clients].tolist())
    div_idx = {}
    for n in chosen:
        p = parts[n]
        order = torch.randperm(len(p), generator=generator(cfg.seed_for("sampling"), "divergence", n))
        div_idx[n] = p[order[: cfg.divergence_samples]].to(device)
    parts = [p.to(device) for p in parts]
    return Setup(
        cfg,
        data_set.to(device),
        parts,
        built,
        client_module,
        server_module,
        init_c,
        init_s,
        flops,
        div_idx,
        F.cross_entropy if loss is None else loss,
    )


def _names_files(dataset: str) -> bool:
    """Whether config.dataset names the user's data (a file, a folder, or Python objects), not a loader."""
    return dataset.startswith(PYTHON_DATA) or is_data_file(dataset) or is_given_folder(dataset)


def choose_partition(cfg: Config, data: Dataset, users: bool) -> Config:
    """The partition of these data: "given" (and as many clients) when the data came split into
    clients; IID, said in one line, for the user's data with no partition named; else the config's."""
    unnamed = cfg.partition == Config().partition and cfg.non_iid_ratio is None
    if data.parts is not None:
        n = len(data.parts)
        if not (unnamed or cfg.partition == "given"):
            raise SplitfedError(
                f"the data come split into {n} clients; partition {cfg.partition} cannot deal them again "
                "(leave partition unset, or given)"
            )
        if cfg.clients not in (n, Config().clients):
            raise SplitfedError(
                f"clients = {cfg.clients}, but the data are given for {n} clients; leave clients unset or "
                f"set it to {n}"
            )
        return cfg.replace(partition="given", clients=n)
    if cfg.partition == "given":
        raise SplitfedError(
            f"partition given takes the clients from the data, and {cfg.dataset} is one data set; give it "
            "split into clients (docs/api.md) or name another partition: "
            + ", ".join(p for p in PARTITIONS if p != "given")
        )
    if users and unnamed:  # a researcher's own data: no silent non-IID default
        log.info(f"{cfg.dataset}: dealt IID to {cfg.clients} clients (partition iid; name one to choose)")
        return cfg.replace(partition="iid")
    return cfg


def _after(first: Augment | None, then: Augment) -> Augment:
    """The data set's own augmentation (CIFAR-10's crop and flip), then the user's transform."""
    if first is None:
        return then
    return lambda x, g: then(first(x, g), g)


def check_user_objects(cfg: Config, model: ModelLike | None, data: Any) -> None:
    """Refuse a model or data given both in the config and as an object: which would be meant?

    Beside an object, config.model / config.dataset may be unset (for the dataset: its default) or record
    an earlier run's object, as a resumed run's config.toml does (a ``python:`` label, or the builder's
    own ``pkg.module:name``); prepare records this object's in their place, and a resumed run compares.
    """
    recorded = cfg.model is None or cfg.model.startswith(PYTHON_MODEL)
    if model is not None and not recorded and import_name(model) != cfg.model:
        raise SplitfedError(
            f"a model is given twice: config.model = {cfg.model!r} and run(model=...); give one"
        )
    if data is not None and cfg.dataset != Config().dataset and not cfg.dataset.startswith(PYTHON_DATA):
        raise SplitfedError(
            f"data are given twice: config.dataset = {cfg.dataset!r} and run(data=...); give one"
        )


def build(
    builder: ModelLike, name: str, num_classes: int, in_shape: tuple[int, ...], model_args: dict[str, Any]
) -> nn.Module:
    """The model for this data; a builder that fails on them is one line (registered ones were checked
    on the meta device already, so this is in practice a user's builder)."""
    try:
        return make_model(builder, num_classes, in_shape, model_args, name)
    except SplitfedError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SplitfedError(  # noqa: B904 (the cause is in the message; no traceback for a user mistake)
            f"model {name} cannot be built for inputs {list(in_shape)}: {first}"
        )
    except SystemExit as e:  # left to propagate, the command would exit as the builder said, 0 included
        raise SplitfedError(
            f"model {name}'s builder called sys.exit({e.code!r}); a builder returns the model"
        ) from None


def _check_finite(model: nn.Module, name: str, data: Dataset) -> None:
    """NaN or inf in the inputs or the initial weights would train into NaN metrics that say nothing of
    where they came from: refused where they enter, naming them."""
    for subset, x in (("training", data.train_x), ("test", data.test_x), ("validation", data.val_x)):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and len(x):
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
            if bool(bad.any()):
                raise SplitfedError(
                    f"the {subset} inputs hold NaN or inf in {int(bad.sum())} of {len(x)} samples (the "
                    f"first: sample {int(bad.nonzero()[0])}); drop or repair them before training"
                )
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for tensor_name, t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise SplitfedError(
                    f"model {name}'s initial {kind} {tensor_name} holds NaN or inf; initialise it with "
                    "finite values"
                )


def _check_forward(model: nn.Module, name: str, dataset: str, data: Dataset, loss: LossFn | None) -> None:
    """Two training samples through the model (and the loss): the shapes fit, or one line says why."""
    x, y = data.train_x[:2], data.train_y[:2]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        kind = "" if x.dtype == torch.float32 else f" of {x.dtype}"  # integer inputs: say so
        raise SplitfedError(  # noqa: B904 (the cause is in the message; no traceback for a user mistake)
            f"model {name} cannot take {dataset} inputs {list(data.in_shape)}{kind}: {first}"
        )
    if not isinstance(out, torch.Tensor) or out.shape != (len(x), data.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SplitfedError(
            f"model {name} outputs {got} for {len(x)} samples; it must output [{len(x)}, "
            f"{data.num_classes}], one score per class"
        )
    if not out.is_floating_point():
        raise SplitfedError(f"model {name} outputs {out.dtype} scores; they must be floating point")
    if not bool(torch.isfinite(out).all()):
        raise SplitfedError(
            f"model {name} outputs NaN or inf for the first training samples (finite inputs and weights); "
            "check its forward"
        )
    if loss is None:
        return
    if not callable(loss):
        raise SplitfedError(f"loss must be a function loss(output, target); got {type(loss).__name__}")
    try:
        value = loss(out, y)
    except Exception as e:  # the user's function, on a valid output and labels: any error, one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SplitfedError(
            f"loss fails on the model's output and labels ({type(e).__name__}: {first})"
        ) from None
    if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point()):
        got = f"shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise SplitfedError(
            f"loss must return the batch's mean loss as a scalar float tensor; it returned {got}"
        )
