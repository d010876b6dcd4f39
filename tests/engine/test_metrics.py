import math
import threading

import torch
from torch import nn

from splitfed.engine.metrics import SplitModel, divergence, module_flops, train_flops_per_sample
from splitfed.models import build_model, split
from splitfed.setup import prepare

from ..conftest import small_config


def test_divergence_is_zero_when_every_client_has_the_same_data():
    setup = prepare(small_config(model="resnet18", model_args={"width": 4}, synthetic_shape=(3, 16, 16)))
    same = setup.divergence_idx[0]
    setup.divergence_idx = dict.fromkeys(setup.divergence_idx, same)
    buffers_before = setup.init_c.buffers.clone()
    split_model = SplitModel(setup.client_module, setup.server_module)
    div = setup.divergence(split_model, setup.init_c, setup.init_s)
    assert div["divergence_client"] == 0.0 and div["divergence_server"] == 0.0
    assert torch.equal(setup.init_c.buffers, buffers_before)  # BatchNorm statistics left as they were


def test_divergence_grows_with_the_non_iid_ratio():
    values = []
    for p in (0.0, 1.0):
        setup = prepare(small_config(non_iid_ratio=p, divergence_samples=100))
        split_model = SplitModel(setup.client_module, setup.server_module)
        values.append(setup.divergence(split_model, setup.init_c, setup.init_s))
    assert values[1]["divergence_client"] > 2 * values[0]["divergence_client"] > 0
    assert values[1]["divergence_server"] > 2 * values[0]["divergence_server"] > 0


def test_divergence_formula_and_normalised_forms():
    g = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])]
    w = torch.tensor([0.5, 0.25, 0.25])
    mean = 0.5 * g[0] + 0.25 * g[1] + 0.25 * g[2]  # [0.75, 0.5]
    raw = sum(float(wi) * float((gi - mean).norm()) for wi, gi in zip(w, g))
    out = divergence(g, w)
    assert math.isclose(out["raw"], raw, rel_tol=1e-6)
    assert math.isclose(out["relative"], raw / float(mean.norm()), rel_tol=1e-6)
    assert math.isclose(out["per_param"], raw / math.sqrt(2), rel_tol=1e-6)


def test_gradients_match_autograd_on_the_full_model():
    setup = prepare(small_config())
    idx = setup.divergence_idx[1]
    x, y = setup.data.train_x[idx], setup.data.train_y[idx]
    gc, gs = SplitModel(setup.client_module, setup.server_module).gradients(setup.init_c, setup.init_s, x, y)
    model = setup.model.train()
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(torch.cat([gc, gs]), expected)


def test_training_flops_per_sample_of_cnn4():
    model = build_model("cnn4", 10, (1, 28, 28))
    conv1_forward = 2 * 1 * 5 * 5 * 16 * 28 * 28
    client, server = split(model, 1)
    c, _ = train_flops_per_sample(client, server, (1, 28, 28))
    assert c == 2 * conv1_forward  # forward + weight gradient; no input gradient on the client's first layer
    fc2_forward = 2 * 1000 * 10
    _, s = train_flops_per_sample(*split(model, 3), (1, 28, 28))
    assert s == 3 * fc2_forward  # forward + weight gradient + gradient of the smashed data


def test_divergence_without_holding_the_gradients_is_the_same():
    # Thousands of clients: the gradients are computed twice rather than held (memory of one client's).
    from splitfed.engine.metrics import _divergences

    g = torch.Generator().manual_seed(0)
    grads = [(torch.randn(50, generator=g), torch.randn(7, generator=g)) for _ in range(6)]
    weights = torch.rand(6, generator=g, dtype=torch.float64)
    weights = (weights / weights.sum()).tolist()
    calls = []

    def compute(n):
        calls.append(n)
        return grads[n]

    held = _divergences(compute, weights, keep=True)
    assert calls == list(range(6))
    calls.clear()
    twice = _divergences(compute, weights, keep=False)
    assert calls == list(range(6)) * 2
    for a, b in zip(held, twice):
        for form in ("raw", "relative", "per_param"):
            assert math.isclose(a[form], b[form], rel_tol=1e-12)
    one_side = divergence([c for c, _ in grads], torch.tensor(weights, dtype=torch.float64))
    assert math.isclose(one_side["raw"], held[0]["raw"], rel_tol=1e-12)


def test_divergence_over_a_fixed_draw_of_clients():
    full = prepare(small_config(clients=8))
    some = prepare(small_config(clients=8, divergence_clients=3))
    assert len(full.divergence_idx) == 8 and len(some.divergence_idx) == 3
    assert (
        some.divergence_idx.keys()
        == prepare(small_config(clients=8, divergence_clients=3)).divergence_idx.keys()
    )
    for n, idx in some.divergence_idx.items():  # the same samples of each chosen client
        assert torch.equal(idx, full.divergence_idx[n])
    split_model = SplitModel(some.client_module, some.server_module)
    assert some.divergence(split_model, some.init_c, some.init_s)["divergence_client"] > 0


def test_counting_flops_leaves_training_in_another_thread_alone():
    # The deployment tests run a client and the main server in threads of one process: one counts its
    # FLOPs while another back-propagates. torch's FlopCounterMode hooks every module of the process and
    # broke that other thread's autograd.grad on a leaf input.
    counting, trained = threading.Event(), threading.Event()

    class Pause(nn.Module):  # holds the count open until the other thread has trained
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            counting.set()
            trained.wait(30)
            return x

    flops = []
    model = nn.Sequential(nn.Linear(4, 3), Pause())
    counter = threading.Thread(target=lambda: flops.append(module_flops(model, torch.zeros(2, 4), False)))
    counter.start()
    assert counting.wait(30)
    try:
        layer = nn.Linear(4, 2)
        x = torch.randn(3, 4).requires_grad_()
        *_, at_input = torch.autograd.grad(layer(x).sum(), [*layer.parameters(), x])
    finally:
        trained.set()
        counter.join()
    assert torch.equal(at_input, layer.weight.sum(0).expand(3, 4))
    assert flops[0][0] == 2 * (2 * 4 * 3)  # per sample: the forward and the weights' gradient, 2·in·out each


def test_an_embedding_only_client_side_counts_its_backward_accumulation():
    # A transformer cut after its token embedding: the forward gathers rows (no arithmetic), the backward
    # adds each of the tokens × dim gradient elements into the weight gradient. It used to count 0.
    tokens, dim, classes = 5, 8, 3
    client = nn.Sequential(nn.Embedding(100, dim))
    server = nn.Sequential(nn.Flatten(), nn.Linear(tokens * dim, classes))
    c, s = train_flops_per_sample(client, server, (tokens,), torch.int64)
    assert c == tokens * dim
    assert s == 3 * (2 * tokens * dim * classes)  # forward, weights' and input's gradient: 2·in·out each
    # a matrix product after the embedding also passes its input's gradient back to it: three products
    client = nn.Sequential(nn.Embedding(100, dim), nn.Linear(dim, dim))
    c, _ = train_flops_per_sample(client, server, (tokens,), torch.int64)
    assert c == tokens * dim + 3 * (2 * tokens * dim * dim)
