"""Setup: what every executor needs from a Config — data, partition, model, its split and initial weights.

``prepare(cfg)`` checks the config against the data and the model and builds the ``Setup`` that the
in-process executors, the distributed executor and each networked role share, so all of them train from
the same partition, initial weights and sample streams. It touches no files.
"""

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._limits import check_batches, check_model
from ._rng import derive_seed, generator
from .config import PARTITION_OPTIONS, Config
from .data import DATASETS, PARTITIONS, ClientStreams, Dataset, make_partition
from .data.datasets import SYNTHETIC_SAMPLES, SYNTHETIC_SHAPE
from .engine.context import Context
from .engine.link import Link
from .engine.metrics import SplitModel, measure_divergence, train_flops_per_sample
from .engine.optim import side_optimizer
from .engine.side import Layout, State
from .errors import SplitfedError
from .models import MODELS, build_model, split

DEFAULT_MODEL = {"digits": "digits_cnn", "fmnist": "cnn4", "cifar10": "resnet18", "synthetic": "cnn4"}


@dataclass
class Setup:
    """Everything shared by the algorithms of one run: same data, partition, model and initial weights."""

    cfg: Config  # resolved: model, cut layer and partition option filled in
    data: Dataset  # on the run's device
    parts: list[torch.Tensor]  # training-set indices per client
    model: nn.Module  # the full CutModel, holding the initial weights
    client_module: nn.Module
    server_module: nn.Module
    init_c: State
    init_s: State
    flops_per_sample: tuple[float, float]  # training FLOPs per sample: client side, server side
    divergence_idx: dict[int, torch.Tensor]  # client -> its fixed samples for divergence (some clients)

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
        """A fresh context per algorithm: every algorithm sees the same batch sequence from the same seed."""
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
        )

    def divergence(self, split: SplitModel, w_c: State, w_s: State) -> dict[str, float]:
        """Client-side and server-side gradient divergence at (w_c, w_s) on the fixed subsamples."""
        x, y = self.data.train_x, self.data.train_y
        clients = list(self.divergence_idx)
        sizes = [self.data_sizes[n] for n in clients]
        return measure_divergence(split, x, y, list(self.divergence_idx.values()), sizes, w_c, w_s)

    def assemble(self, w_c: State, w_s: State) -> nn.Module:
        """The full model (a CutModel) holding the given client-side and server-side states."""
        model = copy.deepcopy(self.model).to(w_c.params.device)
        for half, state in zip(split(model, self.cfg.cut_layer), (w_c, w_s), strict=True):
            layout = Layout(half)
            with torch.no_grad():
                for p, v in zip(half.parameters(), layout.param_views(state.params), strict=True):
                    p.copy_(v)
                for b, v in zip(half.buffers(), layout.buffer_dict(state.buffers).values(), strict=True):
                    b.copy_(v.to(b.dtype))
        return model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SplitfedError(f"device {name} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def load_data(cfg: Config) -> Dataset:
    loader = DATASETS.get(cfg.dataset)
    if cfg.dataset == "synthetic":
        return loader(
            cfg.data_dir,
            shape=tuple(cfg.synthetic_shape or SYNTHETIC_SHAPE),
            samples=cfg.synthetic_samples or SYNTHETIC_SAMPLES,
        )
    return loader(cfg.data_dir)


def prepare(cfg: Config) -> Setup:
    """Validate the whole config against data and model, and build the shared setup. Touches no files."""
    DATASETS.get(cfg.dataset)
    PARTITIONS.get(cfg.partition)
    model_name = cfg.model or DEFAULT_MODEL.get(cfg.dataset, "cnn4")
    MODELS.get(model_name)
    device = resolve_device(cfg.device)
    # CPU kernels sum in an order that depends on the thread count: it is part of what a run repeats.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    if cfg.validation_samples:
        data = data.hold_out(cfg.validation_samples)

    check_model(model_name, data.num_classes, data.in_shape, cfg.model_args)  # fits in memory, or one line
    # The initial model: its own seed, and the global RNG left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed_for("init"), "init"))
        model = build_model(model_name, data.num_classes, data.in_shape, cfg.model_args)
    cut_layer = cfg.cut_layer if cfg.cut_layer is not None else model.middle_cut
    model.check_cut(cut_layer)
    try:
        with torch.no_grad():
            model.eval()(data.train_x[:2])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise SplitfedError(  # noqa: B904 (the cause is in the message; no traceback for a user mistake)
            f"model {model_name} cannot take {cfg.dataset} inputs {list(data.in_shape)}: {first}"
        )

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

    parts = make_partition(
        cfg.partition, data.train_y, cfg.clients, cfg.seed_for("partition"), cfg.partition_option
    )
    check_batches(cfg.batch_size, cfg.batch_alloc, [len(p) for p in parts])
    client_module, server_module = split(model, cut_layer)
    init_c = Layout(client_module).state_of(client_module, side_optimizer(cfg, "client"), device)
    init_s = Layout(server_module).state_of(server_module, side_optimizer(cfg, "server"), device)
    flops = train_flops_per_sample(client_module, server_module, data.in_shape)
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
        cfg, data.to(device), parts, model, client_module, server_module, init_c, init_s, flops, div_idx
    )
