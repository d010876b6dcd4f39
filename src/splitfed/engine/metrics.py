"""Evaluation, gradient divergence (spec §6) and FLOP counts, on (client-side, server-side) states."""

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .optim import LossFn
from .side import Layout, State, channels_last

_CHUNK = 1000  # samples per evaluation forward on the CPU (larger is no faster there)
_GRAD_CHUNK = 500  # samples per forward + backward in the divergence gradients: bounds memory for ResNet-18


class SplitModel:
    """The two halves' template modules, run functionally on given (w_c, w_s) states; ``loss`` is the
    run's training loss, which evaluation reports and the divergence gradients differentiate;
    ``channels_last`` as in ``Side``."""

    def __init__(
        self,
        client: nn.Module,
        server: nn.Module,
        loss: LossFn = F.cross_entropy,
        channels_last: bool = False,
    ) -> None:
        self.halves = ((client, Layout(client)), (server, Layout(server)))
        self.loss = loss
        self.channels_last = channels_last

    def _forward(
        self, states: tuple[State, State], x: torch.Tensor, params: tuple[list, list] | None = None
    ) -> torch.Tensor:
        for i, ((module, layout), state) in enumerate(zip(self.halves, states, strict=True)):
            p = params[i] if params is not None else layout.param_views(state.params)
            if self.channels_last:
                p, x = [channels_last(t) for t in p], channels_last(x)
            named = dict(zip(layout.param_names(), p, strict=True))
            # A training forward updates BatchNorm statistics: on copies, so the state is left as it was.
            buffers = (
                layout.buffer_copies(state.buffers) if module.training else layout.buffer_dict(state.buffers)
            )
            x = functional_call(module, (named, buffers), (x,))
        return x

    def _mode(self, train: bool) -> None:
        for module, _ in self.halves:
            module.train(train)

    @torch.no_grad()
    def evaluate(
        self, w_c: State, w_s: State, x: torch.Tensor, y: torch.Tensor, batch: int = 0
    ) -> tuple[float, float, list[float]]:
        """(accuracy, mean loss, accuracy per class) of the assembled model on (x, y), in eval
        mode, ``batch`` samples per forward (0: as many as fit: all on CUDA, halved on out-of-memory)."""
        self._mode(False)
        size = batch or (len(x) if x.is_cuda else _CHUNK)
        while True:
            try:
                return self._evaluate(w_c, w_s, x, y, size)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                size = max(1, size // 2)
                torch.cuda.empty_cache()

    def _evaluate(
        self, w_c: State, w_s: State, x: torch.Tensor, y: torch.Tensor, size: int
    ) -> tuple[float, float, list[float]]:
        classes = int(y.max()) + 1
        correct = torch.zeros(classes, dtype=torch.int64, device=y.device)
        loss = torch.zeros((), dtype=torch.float64, device=y.device)
        for i in range(0, len(x), size):
            xb, yb = x[i : i + size], y[i : i + size]
            logits = self._forward((w_c, w_s), xb)
            if self.loss is F.cross_entropy:  # the sum in one kernel, as before user losses existed
                loss += F.cross_entropy(logits, yb, reduction="sum").double()
            else:
                loss += self.loss(logits, yb).double() * len(yb)
            correct += torch.bincount(yb[logits.argmax(1) == yb], minlength=classes)
        per_class = (correct / torch.bincount(y, minlength=classes).clamp(min=1)).tolist()
        return int(correct.sum()) / len(x), float(loss) / len(x), per_class

    def gradients(
        self, w_c: State, w_s: State, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat client-side and server-side gradients of the mean loss over (x, y) at (w_c, w_s).

        Training mode, as in training (BatchNorm normalises with the batch's statistics).
        """
        self._mode(True)
        states = (w_c, w_s)
        total = [torch.zeros_like(w_c.params), torch.zeros_like(w_s.params)]
        for i in range(0, len(x), _GRAD_CHUNK):
            xb, yb = x[i : i + _GRAD_CHUNK], y[i : i + _GRAD_CHUNK]
            leaves = tuple(
                [p.detach().requires_grad_() for p in layout.param_views(s.params)]
                for (_, layout), s in zip(self.halves, states, strict=True)
            )
            loss = self.loss(self._forward(states, xb, leaves), yb) * (len(yb) / len(x))
            grads = torch.autograd.grad(loss, leaves[0] + leaves[1])
            total[0] += _flat(grads[: len(leaves[0])], total[0])
            total[1] += _flat(grads[len(leaves[0]) :], total[1])
        return total[0], total[1]


def _flat(grads: tuple[torch.Tensor, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads]) if grads else torch.zeros_like(like)


def divergence(grads: list[torch.Tensor], weights: torch.Tensor) -> dict[str, float]:
    """Σ_n p_n ‖g_n − Σ_m p_m g_m‖₂ and its normalised forms: relative to ‖Σ p_m g_m‖, per √dim."""
    return _divergences(lambda n: (grads[n],), weights.tolist(), keep=True)[0]


_KEEP_BYTES = 512 * 2**20  # gradients held at once; beyond, computed twice instead (N = 10,000 clients)


def _divergences(
    grads: Callable[[int], Sequence[torch.Tensor]], weights: list[float], keep: bool
) -> list[dict[str, float]]:
    """The divergence of each of the gradients grads(n) (one per side), over the clients n, in two passes
    (their mean, then each one's distance to it). With ``keep`` false nothing is held between the passes:
    every gradient is computed twice and memory stays that of one client's."""
    held: list[Sequence[torch.Tensor]] = []
    means: list[torch.Tensor] = []
    for n, p_n in enumerate(weights):
        gs = grads(n)
        means = (
            [p_n * g.double() for g in gs]
            if not means
            else [m.add_(g.double(), alpha=p_n) for m, g in zip(means, gs, strict=True)]
        )
        if keep:
            held.append(gs)
    raws = [0.0] * len(means)
    for n, p_n in enumerate(weights):
        for i, (g, mean) in enumerate(zip(held[n] if keep else grads(n), means, strict=True)):
            raws[i] += p_n * float((g.double() - mean).norm())
    out = []
    for raw, mean in zip(raws, means, strict=True):
        norm, dim = float(mean.norm()), mean.numel()
        out.append(
            {
                "raw": raw,
                "relative": raw / norm if norm > 0 else math.nan,
                "per_param": raw / math.sqrt(dim) if dim else math.nan,
            }
        )
    return out


def train_flops_per_sample(
    client: nn.Module, server: nn.Module, in_shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> tuple[float, float]:
    """Training FLOPs per sample (forward + backward; convolutions and matrix products, and an embedding's
    backward accumulation: see ``_embedding_backward_flops``) of each side.

    ``in_shape`` is one sample's shape, any rank ((C, H, W) images, (d,) rows); ``dtype`` the inputs'
    (integer for token ids). The client side back-propagates to its weights only; the server side also to
    its input, the smashed data's gradient. Counted once on copies, on a batch of two (BatchNorm needs two
    samples).
    """
    x = torch.zeros(2, *in_shape, dtype=dtype)
    client_flops, z = module_flops(client, x, input_grad=False)
    server_flops, _ = module_flops(server, z, input_grad=True)
    return client_flops, server_flops


def _embedding_backward_flops(grad_output: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """An embedding's training cost. Its forward is a gather (no arithmetic: 0 FLOPs); its backward adds
    each looked-up row's gradient into the weight gradient, one addition per element of ``grad_output``
    (tokens × dim; padding rows included, an upper bound by at most their share)."""
    return grad_output.numel()


# Ops torch's registry leaves out but a client side trains on: without this an embedding-only client side
# (a transformer cut after its token embedding) reported 0 FLOPs.
_EXTRA_FLOPS = {torch.ops.aten.embedding_dense_backward: _embedding_backward_flops}


def module_flops(module: nn.Module, x: torch.Tensor, input_grad: bool) -> tuple[float, torch.Tensor]:
    """Training FLOPs per sample of ``module`` on the batch ``x`` (forward, and backward to its weights,
    and to ``x`` with ``input_grad``: a piece after the cut passes its input's gradient on), counted on a
    CPU copy; and its output on x (detached, for the next piece)."""
    module = copy.deepcopy(module).cpu().train()
    x = x.detach().cpu()
    if input_grad:
        x = x.requires_grad_()
    with _FlopCount() as counter:
        out = module(x)
        out.sum().backward()
    return counter.total / len(x), out.detach()


class _FlopCount(TorchDispatchMode):
    """torch's FlopCounterMode arithmetic (its formula registry) without its per-module breakdown, whose
    module tracker installs process-wide module hooks: any other thread back-propagating meanwhile (a
    client and a server in one process, as the deployment tests run them) then fails inside
    ``autograd.grad``. A dispatch mode is local to the thread that enters it."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in dynamo.disable unless this says no, and that wrapper
        # imports torch._dynamo on the first count: 1.5 s of every process's start (a role's, a rank's).
        # Nothing is compiled under this mode, so there is nothing for dynamo to skip.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = flop_registry.get(packet) or _EXTRA_FLOPS.get(packet)
        if formula is None:  # a composite op: count the ops it decomposes into
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def measure_divergence(
    split: SplitModel,
    x: torch.Tensor,
    y: torch.Tensor,
    samples: list[torch.Tensor],
    data_sizes: list[int],
    w_c: State,
    w_s: State,
) -> dict[str, float]:
    """Client-side and server-side average gradient divergence at (w_c, w_s) (spec §6).

    ``samples[n]`` indexes client n's fixed subsample of (x, y); clients are weighted by |D_n|.
    """
    sizes = torch.tensor(data_sizes, dtype=torch.float64)
    weights = (sizes / sizes.sum()).tolist()
    keep = len(samples) * (w_c.params.numel() + w_s.params.numel()) * 4 <= _KEEP_BYTES

    def grads(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return split.gradients(w_c, w_s, x[samples[n]], y[samples[n]])

    out = {}
    for side, forms in zip(("client", "server"), _divergences(grads, weights, keep), strict=True):
        for form, value in forms.items():
            out[f"divergence_{side}" + ("" if form == "raw" else f"_{form}")] = value
    return out
