"""SCAFFOLD against a plain-PyTorch SCAFFOLD (option II); its control variates as a config of another
algorithm; a killed and resumed SCAFFOLD run equal to the uninterrupted one."""

import copy

import torch

from splitfed import run
from splitfed.engine.checkpoint import read_checkpoint, read_run_checkpoint

from ..conftest import small_config
from .helpers import (
    SMOOTH_MODEL,
    assert_same_model,
    average,
    both_executions,
    final_model,
    train_one,
    weights_of,
)

ATOL = 1e-5


def reference_scaffold(setup, rounds, tau, lr, clients=None):
    """Karimireddy et al.'s Algorithm 1, option II, η_g = 1, in plain PyTorch."""
    streams, model, b = setup.context().streams, copy.deepcopy(setup.model), setup.cfg.batch_size
    n_all = setup.cfg.clients
    zeros = lambda: [torch.zeros_like(p) for p in model.parameters()]
    c, c_i = zeros(), {n: zeros() for n in range(n_all)}
    p = weights_of(setup)
    for r in range(1, rounds + 1):
        x = [q.detach().clone() for q in model.parameters()]
        chosen = list(range(n_all)) if clients is None else clients(r)
        trained, deltas = [], []
        for n in chosen:
            local = copy.deepcopy(model).train()
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            for _ in range(tau):
                xb, yb = streams.batch(n, b)
                opt.zero_grad()
                torch.nn.functional.cross_entropy(local(xb), yb).backward()
                for q, cc, ci in zip(local.parameters(), c, c_i[n]):
                    q.grad += cc - ci
                opt.step()
            plus = [
                ci - cc + (x0 - q.detach()) / (tau * lr)
                for ci, cc, x0, q in zip(c_i[n], c, x, local.parameters())
            ]
            deltas.append([a - ci for a, ci in zip(plus, c_i[n])])
            c_i[n] = plus
            trained.append(local.state_dict())
        w = [p[n] / sum(p[m] for m in chosen) for n in chosen]
        model.load_state_dict(average(trained, w))
        c = [cc + len(chosen) / n_all * sum(wn * d[i] for wn, d in zip(w, deltas)) for i, cc in enumerate(c)]
    return model


def test_scaffold_is_the_plain_pytorch_scaffold_in_both_executors():
    cfg = small_config(model=SMOOTH_MODEL, local_iters=3, rounds=3, lr=0.05, divergence_every=0)
    setup, seq, bat = both_executions(cfg, "scaffold")
    ref = reference_scaffold(setup, 3, 3, 0.05)
    assert_same_model(final_model(setup, seq), ref, atol=ATOL)
    assert_same_model(final_model(setup, bat), ref, atol=ATOL)


def test_scaffold_with_partial_participation_keeps_each_clients_variate():
    cfg = small_config(
        model=SMOOTH_MODEL,
        clients=5,
        clients_per_round=2,
        local_iters=2,
        rounds=4,
        lr=0.05,
        divergence_every=0,
    )
    setup, seq, _ = both_executions(cfg, "scaffold")
    assert_same_model(
        final_model(setup, seq), reference_scaffold(setup, 4, 2, 0.05, setup.participants), atol=ATOL
    )
    assert 0 < len(seq.client_states) <= 5  # only the clients that trained hold a c_i


def test_control_variates_on_fedavg_are_scaffold_and_change_minibatch_sfl():
    cfg = small_config(model=SMOOTH_MODEL, local_iters=3, rounds=2, lr=0.05, divergence_every=0)
    _, scaffold, _, _ = train_one(cfg, "scaffold")
    _, fedavg_cv, _, _ = train_one(cfg.replace(control_variates=True), "fedavg")
    assert torch.equal(scaffold.w_c.params, fedavg_cv.w_c.params)
    _, mb, _, _ = train_one(cfg, "minibatch_sfl")
    _, mb_cv, history, _ = train_one(cfg.replace(control_variates=True), "minibatch_sfl")
    assert not torch.allclose(mb.w_c.params, mb_cv.w_c.params)
    assert history[-1]["bytes"]["c.client"] > 0 and "c.server" not in history[-1]["bytes"]  # client side only


def client_state(run_dir, saved, n):
    version = saved["client_states"]["files"][n]
    return read_checkpoint(run_dir / "checkpoints" / "scaffold.clients" / f"{n}-{version}.pt", "")


def test_a_scaffold_run_cut_short_and_resumed_equals_the_uninterrupted_one_bit_for_bit(tmp_path):
    # with partial participation, so that clients' states wait across rounds; a run killed mid-way is
    # tests/test_run.py's kill test, which trains SCAFFOLD
    cfg = small_config(
        algorithm=("scaffold",),
        clients=5,
        clients_per_round=2,
        local_iters=2,
        rounds=4,
        lr=0.05,
        divergence_every=0,
    )
    run(cfg.replace(out=str(tmp_path / "whole")))
    run(cfg.replace(out=str(tmp_path / "cut"), rounds=2))  # the same first two rounds; then "killed"
    run(cfg.replace(out=str(tmp_path / "cut"), resume=True))
    whole = read_run_checkpoint(tmp_path / "whole" / "checkpoints" / "scaffold.pt")
    cut = read_run_checkpoint(tmp_path / "cut" / "checkpoints" / "scaffold.pt")
    for part in whole["model"]:
        for key in whole["model"][part]:
            assert torch.equal(whole["model"][part][key], cut["model"][part][key])
    for key, value in whole["fed_server"].items():  # the server's c
        assert torch.equal(value, cut["fed_server"][key])
    assert whole["client_states"]["files"].keys() == cut["client_states"]["files"].keys()
    for n in whole["client_states"]["files"]:  # every c_i, each in its file beside the checkpoint
        a, b = (client_state(tmp_path / run, saved, n) for run, saved in (("whole", whole), ("cut", cut)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k} for r in h]
    assert strip(whole["history"]) == strip(cut["history"])


def test_client_states_beyond_memory_go_to_files_and_come_back_bit_for_bit():
    cfg = small_config(
        algorithm=("scaffold",), clients=6, local_iters=2, rounds=3, lr=0.05, divergence_every=0
    )
    _, held, _, _ = train_one(cfg, "scaffold")
    _, spilled, _, _ = train_one(cfg.replace(client_state_mb=0.2), "scaffold")  # 6 c_i of 150 KB each
    store = spilled.client_states
    assert len(store) == 6 and len(store.memory) < 6 and store.files  # some in memory, the rest in files
    assert store.held <= 0.2 * 2**20 + 160_000  # the bound, and at most the one state just put
    assert torch.equal(held.w_c.params, spilled.w_c.params) and torch.equal(
        held.w_s.params, spilled.w_s.params
    )
