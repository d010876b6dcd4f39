"""Setup: what every executor needs from a Config — data, partition, model, its split and initial weights.

``prepare(cfg)`` checks the config against the data and the model and builds the ``Setup`` that the
in-process executors, the distributed executor and each networked role share, so all of them train from
the same partition, initial weights and sample streams. It touches no files. The Python API may hand it
the user's own model, data and loss as objects (``prepare(cfg, model=..., data=..., loss=...)``).
"""

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._rng import generator
from .config import PARTITION_OPTIONS, Config
from .data import ClientStreams, Dataset, make_partition
from .data.augment import Augment
from .data.synthetic import SYNTHETIC_SAMPLES, SYNTHETIC_SHAPE
from .data.user import PYTHON_DATA
from .engine.context import Context, PartSpec
from .engine.link import Link
from .engine.metrics import LossFn, SplitModel, measure_divergence, train_flops_per_sample
from .engine.optim import LRSchedule, check_optimizer_knobs, side_optimizer
from .engine.state import Layout, State
from .engine.user_optim import TorchOptimizer
from .errors import SplitfedError
from .models import PYTHON_MODEL, ModelLike, import_name, split
from .preflight import check_batches
from .sections import Synthetic
from .setup_data import check_names, run_data
from .setup_data import load_data as load_data  # re-exported: export.py and the tests import it from here
from .setup_model import build as build  # re-exported: export.py imports it from here
from .setup_model import builder_of, check_halves, run_model


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
        return SplitModel(self.client_module, self.server_module, self.loss, self.cfg.channels_last)

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


def prepare(
    cfg: Config,
    model: ModelLike | None = None,
    data: Any = None,
    loss: LossFn | None = None,
    transform: Augment | None = None,
) -> Setup:
    """Validate the whole config against data and model, and build the shared setup. Touches no files.

    ``model`` (an nn.Module, two halves (client, server) or a builder) and ``data`` (one data set, see
    ``data.user.user_data``, or data split into clients, ``data.given``) replace config.model and
    config.dataset, which then record what was given (``check_user_objects``); ``loss`` replaces
    cross-entropy; ``transform(x_batch, generator)`` runs on every training batch, on its device.
    """
    check_user_objects(cfg, model, data)
    check_names(cfg, data)
    model_name, builder = builder_of(cfg, model)
    device = use_device(cfg)
    cfg, data_set = run_data(cfg, data, transform)
    built, model_name, cut_layer = run_model(cfg, model, model_name, builder, data_set, loss)
    cfg = resolved(cfg, model_name, cut_layer)
    parts = data_set.parts if data_set.parts is not None else deal(cfg, data_set)
    check_batches(cfg.batch_size, cfg.batch_alloc, [len(p) for p in parts])
    client_module, server_module = halves = split(built, cut_layer, data_set.train_x[:2])
    check_halves(built, model_name, cut_layer, halves)
    init_c, init_s = initial_states(cfg, client_module, server_module, device)
    flops = train_flops_per_sample(client_module, server_module, data_set.in_shape, data_set.train_x.dtype)
    client_module.to(device)
    server_module.to(device)
    return Setup(
        cfg,
        data_set.to(device),
        [p.to(device) for p in parts],
        built,
        client_module,
        server_module,
        init_c,
        init_s,
        flops,
        divergence_samples(cfg, parts, device),
        F.cross_entropy if loss is None else loss,
    )


def use_device(cfg: Config) -> torch.device:
    """The run's device, with this process set to compute on it as the config asks."""
    device = resolve_device(cfg.device)
    # CPU kernels sum in an order that depends on the thread count: it is part of what a run repeats.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic and device.type == "cuda":
        deterministic_cuda()
    return device


def resolved(cfg: Config, model_name: str, cut_layer: int | str) -> Config:
    """The config as it ran, what it left to defaults filled in: what config.toml records."""
    changes: dict[str, Any] = {
        "model": model_name,
        "cut_layer": cut_layer,
        "threads": torch.get_num_threads(),
    }
    knob = PARTITION_OPTIONS.get(cfg.partition)
    if knob is not None and getattr(cfg, knob[0]) is None:
        changes[knob[0]] = knob[1]
    if cfg.dataset == "synthetic":
        shape, samples = cfg.synthetic.shape or SYNTHETIC_SHAPE, cfg.synthetic.samples or SYNTHETIC_SAMPLES
        changes["synthetic"] = Synthetic(shape=tuple(shape), samples=samples)
    return cfg.replace(**changes)


def deal(cfg: Config, data: Dataset) -> list[torch.Tensor]:
    """The training set dealt to the clients by the config's partition."""
    return make_partition(
        cfg.partition, data.train_y, cfg.clients, cfg.seed_for("partition"), cfg.partition_option
    )


def initial_states(
    cfg: Config, client_module: nn.Module, server_module: nn.Module, device: torch.device
) -> tuple[State, State]:
    """Each half's initial weights and optimizer state. Each side's optimizer and schedule are built and
    stepped once here: one given as an object that cannot train (or be averaged) is refused before
    anything runs."""
    opt_c, opt_s = side_optimizer(cfg, "client", client_module), side_optimizer(cfg, "server", server_module)
    check_optimizer_knobs(cfg, [opt_c, opt_s])
    for half, opt in (("client", opt_c), ("server", opt_s)):
        LRSchedule(cfg, opt.lr, half, opt if isinstance(opt, TorchOptimizer) else None).rates(cfg.rounds)
    init_c = Layout(client_module).state_of(client_module, opt_c, device)
    init_s = Layout(server_module).state_of(server_module, opt_s, device)
    return init_c, init_s


def divergence_samples(
    cfg: Config, parts: list[torch.Tensor], device: torch.device
) -> dict[int, torch.Tensor]:
    """The divergence's clients (all, or a fixed draw: thousands of clients) and their fixed samples."""
    chosen = range(cfg.clients)
    among = cfg.divergence.clients
    if among is not None and among < cfg.clients:
        draw = torch.randperm(
            cfg.clients, generator=generator(cfg.seed_for("sampling"), "divergence-clients")
        )
        chosen = sorted(draw[:among].tolist())
    div_idx = {}
    for n in chosen:
        p = parts[n]
        order = torch.randperm(len(p), generator=generator(cfg.seed_for("sampling"), "divergence", n))
        div_idx[n] = p[order[: cfg.divergence.samples]].to(device)
    return div_idx


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
