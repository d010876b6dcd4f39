"""Models that are not an nn.Sequential, cut by a module's name through their traced graph.

The models are written here in the style of torchvision's ResNet (BasicBlock with a downsample path,
``torch.flatten`` in forward) and MobileNetV2 (inverted residual blocks, a functional pool) and of a
GPT-style transformer (token and position embeddings, pre-norm blocks with residuals, a head over the mean
token; int64 token input): torchvision and timm cannot be imported beside the pinned CPU torch here.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import splitfed
from splitfed import Config, SplitfedError, split
from splitfed.algorithms import ALGORITHMS
from splitfed.executors import train
from splitfed.models import split_at
from splitfed.setup import prepare

from ..algorithms.helpers import assert_same_model, final_model, reference_sgd


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, norm=nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout at toy width: stem, two stages, avgpool, flatten, fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 4, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width, norm=norm), BasicBlock(width, width, norm=norm))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2, norm=norm))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 layout at toy size: features (stem + inverted residuals), a functional
    pool and flatten, classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.features = nn.Sequential(
            stem,
            InvertedResidual(8, 8, 1, 2),
            InvertedResidual(8, 12, 2, 2),
            InvertedResidual(12, 12, 1, 2),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(12, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.tril(torch.ones(context, context)).view(1, 1, context, context))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, context)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's layout, classifying a sequence by its mean token: wte + wpe, blocks, ln_f, head."""

    def __init__(self, vocab: int = 20, context: int = 6, dim: int = 16, layers: int = 2, classes: int = 3):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        self.h = nn.ModuleList(Block(dim, 2, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x).mean(dim=1))


def images(n: int = 160, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def tokens(n: int = 160, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 20, (n, 6), generator=g)
    return x, x[:, 0] % classes  # learnable: the first token says the class


def built(make, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make()


# (model, data, cut, values per sample that cross, whether several tensors cross: packed as [n, total])
CASES = [
    pytest.param(ResNet, images, "layer1", 4 * 8 * 8, False, id="resnet-layer1"),
    # inside a block: its input (the identity path) and conv2's output cross
    pytest.param(ResNet, images, "layer1.0.conv2", 2 * 4 * 8 * 8, True, id="resnet-inside-a-block"),
    # before the downsample: the block's input crosses beside bn1's output
    pytest.param(ResNet, images, "layer2.0.bn1", 4 * 8 * 8 + 8 * 4 * 4, True, id="resnet-before-downsample"),
    pytest.param(MobileNetV2, images, "features.1", 8 * 8 * 8, False, id="mobilenet-features.1"),
    # inside an inverted residual: its input and the depthwise conv's output (24 channels, 4x4)
    pytest.param(MobileNetV2, images, "features.3.conv.3", 12 * 16 + 24 * 16, True, id="mobilenet-inside"),
    pytest.param(GPT, tokens, "h.0", 6 * 16, False, id="gpt-h.0"),
    # inside a block: the residual stream and the attention's output
    pytest.param(GPT, tokens, "h.1.attn", 2 * 6 * 16, True, id="gpt-inside-a-block"),
]


@pytest.mark.parametrize(("make", "data", "cut", "numel", "several"), CASES)
def test_halves_compute_the_whole_model_and_its_gradients(make, data, cut, numel, several):
    model = built(make).train()
    x, y = data(5)
    client, server = split(model, cut, x[:2])
    assert {id(p) for p in client.parameters()}.isdisjoint(id(p) for p in server.parameters())
    assert {id(p) for p in [*client.parameters(), *server.parameters()]} == {
        id(p) for p in model.parameters()
    }
    smashed = client(x)
    assert smashed[0].numel() == numel and (smashed.shape == (5, numel)) == several
    torch.manual_seed(1)
    out_split = server(smashed)
    F.cross_entropy(out_split, y).backward()
    grads_split = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout draws
    out_whole = model(x)
    F.cross_entropy(out_whole, y).backward()
    assert torch.equal(out_split, out_whole)
    for g_split, p in zip(grads_split, model.parameters(), strict=True):
        # the same kernels; only the order in which a tensor used twice sums its gradient may differ
        torch.testing.assert_close(g_split, p.grad, rtol=1e-5, atol=1e-7)


def config(**changes) -> Config:
    base = dict(clients=2, rounds=1, local_iters=2, batch_size=8, divergence_every=0, device="cpu")
    return Config(**(base | changes))


TRAINED = [
    pytest.param(ResNet, images, "layer1", "layer2", id="resnet"),
    pytest.param(MobileNetV2, images, "features.1", "features.3", id="mobilenet"),
    pytest.param(GPT, tokens, "h.0", "ln_f", id="gpt"),
]


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize(("make", "data", "cut", "tail"), TRAINED)
def test_every_algorithm_trains_a_graph_cut_model(one_thread, algorithm, make, data, cut, tail):
    cfg = config(algorithm=(algorithm,), cut_layer=cut, tail_cut=tail if algorithm == "ushaped_sl" else None)
    setup = prepare(cfg, model=built(make), data=data())
    executor, history, _ = train(algorithm, setup)
    model = final_model(setup, executor)
    x = setup.data.test_x[:4]
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (4, setup.data.num_classes) and torch.isfinite(out).all()
    assert history[-1]["round"] == 1 and math.isfinite(history[-1]["test_accuracy"])
    moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), setup.model.parameters(), strict=True)]
    assert any(moved)


def test_minibatch_sfl_with_tau_1_is_sgd_on_the_union_batch_for_a_graph_cut(one_thread):
    # The identity of tests/algorithms: one MiniBatch-SFL iteration (τ = 1, synced) is one SGD step of the
    # whole model on the union of the clients' batches; here the cut splits a residual block, so two
    # tensors cross and the smashed gradient flows back through the packing. GroupNorm, as torchvision's
    # norm_layer allows: a client-side BatchNorm normalises each client's batch, not the union.
    cfg = config(cut_layer="layer1.0.conv2", local_iters=1, rounds=1, lr=0.1, clients=3)
    setup = prepare(cfg, model=built(lambda: ResNet(norm=lambda c: nn.GroupNorm(2, c))), data=images())
    executor, _, _ = train("minibatch_sfl", setup)
    streams = setup.context().streams
    pairs = [streams.batch(n, b) for n, b in enumerate(setup.batch_sizes())]
    union = (torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))
    assert_same_model(final_model(setup, executor), reference_sgd(setup, [union], lr=0.1))


def test_two_cuts_by_name_for_ushaped_sl_compose_to_the_model():
    model = built(GPT).eval()
    x, _ = tokens(4)
    head, body, tail = split_at(model, ["h.0.attn", "ln_f"], x[:2])
    with torch.no_grad():
        assert torch.equal(tail(body(head(x))), model(x))
    with pytest.raises(SplitfedError, match="in the order"):
        split_at(model, ["ln_f", "h.0"], x[:2])


def test_ushaped_cuts_that_leave_a_part_without_parameters_are_one_line(one_thread):
    # h.0.mlp then h.0 leaves the body with only block h.0's last residual add: it would train nothing
    cfg = config(algorithm=("ushaped_sl",), cut_layer="h.0.mlp", tail_cut="h.0")
    with pytest.raises(SplitfedError, match="leave part 'server' without parameters"):
        train("ushaped_sl", prepare(cfg, model=built(GPT), data=tokens()))


def test_two_halves_are_accepted_as_they_are(one_thread):
    torch.manual_seed(0)
    client = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    server = nn.Linear(16, 10)
    setup = prepare(config(), model=(client, server), data=images())
    assert setup.cfg.cut_layer == 1
    assert torch.equal(setup.client_module[0][1].weight, client[1].weight)  # the given weights
    _, history, _ = train("minibatch_sfl", setup)
    assert math.isfinite(history[-1]["test_accuracy"])
    with pytest.raises(SplitfedError, match="two modules"):
        prepare(config(), model=(client, server, server), data=images())


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        # data-dependent control flow: fx cannot trace it
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


class TiedHead(nn.Module):
    """The head reuses the embedding's weight (tied weights), so a cut between them shares a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.wte(idx)).mean(dim=1)
        return h @ self.wte.weight[:3].t()


@pytest.mark.parametrize(
    ("make", "data", "cut", "message"),
    [
        (
            Branchy,
            images,
            "a",
            r"cannot be traced by torch\.fx at test_graph_cut\.py:\d+ \(`if x\.sum\(\) > 0:`\)",
        ),
        (ResNet, images, "layer9", r"has no module 'layer9'; cut after one of its modules, e\.g\. 'conv1'"),
        (ResNet, images, 2, r"is a ResNet, not an nn.Sequential: cut it by a module's name, e\.g\."),
        (ResNet, images, None, r"name the module the client side ends with, e\.g\. cut_layer = 'layer1'"),
        (GPT, tokens, "wpe", r"not one row per sample"),  # the position table has no batch dimension
        (TiedHead, tokens, "wte", r"used on both sides"),
    ],
)
def test_a_model_that_cannot_be_cut_there_is_one_line(make, data, cut, message):
    with pytest.raises(SplitfedError, match=message) as e:
        prepare(config(cut_layer=cut), model=built(make), data=data())
    assert "\n" not in str(e.value)
    assert "pass the two halves" in str(e.value) or "module" in str(e.value)


def test_a_named_cut_round_trips_through_config_toml_and_the_command_line(tmp_path):
    cfg = Config(cut_layer="layer2.0", ushaped_sl={"tail_cut": "fc"})
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    again = Config.from_toml(tmp_path / "c.toml")
    assert (again.cut_layer, again.ushaped_sl.tail_cut) == ("layer2.0", "fc")
    from splitfed.config import FIELDS, coerce

    assert coerce(FIELDS["cut_layer"], "3", "--cut-layer", from_cli=True) == 3
    assert coerce(FIELDS["cut_layer"], "h.0", "--cut-layer", from_cli=True) == "h.0"
    with pytest.raises(SplitfedError, match="positive integer or a module's name"):
        Config(cut_layer="")


def test_a_graph_cut_run_loads_back_into_the_users_class(one_thread, tmp_path):
    # export rebuilds the halves from data.json's shape and input dtype (int64 tokens here), loads the
    # checkpoint's flat states into them, and the user's own class holds the result
    cfg = config(algorithm=("sfl_v1",), cut_layer="h.1.attn", out=str(tmp_path / "run"))
    result = splitfed.run(cfg, model=built(GPT), data=tokens())
    loaded = splitfed.load_model(result.out_dir, "sfl_v1", model=built(GPT, seed=1))
    assert type(loaded) is GPT
    assert_same_model(loaded, result.models["sfl_v1"], atol=0.0)


@pytest.mark.parametrize("algorithm", ["minibatch_sfl", "sfl_v1"])
def test_the_batched_executor_computes_what_the_sequential_one_does_on_a_packed_cut(one_thread, algorithm):
    # vmap over client copies: the packing's flatten/cat/slice must keep each client's rows its own
    cfg = config(cut_layer="layer1.0.conv2", lr=0.05)
    models = []
    for execution in ("sequential", "batched"):
        setup = prepare(cfg.replace(execution=execution), model=built(ResNet), data=images())
        executor, _, _ = train(algorithm, setup)
        models.append(final_model(setup, executor))
    # one round of two steps: rounding differs between the vmapped and the looped kernels only
    assert_same_model(*models, atol=1e-5)


def test_a_resumed_graph_cut_run_continues_bit_for_bit(one_thread, tmp_path):
    cfg = config(algorithm=("minibatch_sfl",), cut_layer="h.1.attn", rounds=2)
    whole = splitfed.run(cfg.replace(out=str(tmp_path / "whole")), model=built(GPT), data=tokens())
    part = cfg.replace(out=str(tmp_path / "part"))
    splitfed.run(part.replace(rounds=1), model=built(GPT), data=tokens())
    resumed = splitfed.run(part.replace(resume=True), model=built(GPT), data=tokens())
    assert_same_model(resumed.models["minibatch_sfl"], whole.models["minibatch_sfl"], atol=0.0)
