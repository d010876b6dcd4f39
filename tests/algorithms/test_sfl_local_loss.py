"""Split learning with a client-side local loss against a plain-PyTorch implementation."""

import copy

import torch
from torch import nn

from splitfed.algorithms import create
from splitfed.executors.parts import build_parts

from ..conftest import small_config
from .helpers import SMOOTH_MODEL, average, both_executions, weights_of

CE = nn.functional.cross_entropy


def reference_local_loss(setup, rounds, tau, lr):
    """Han et al. in plain PyTorch: each client steps its side and its auxiliary head on the head's loss;
    the main server steps its one model on each client's (z, y), clients in order; FedAvg of the clients'
    side and head."""
    streams, b, n_all = setup.context().streams, setup.cfg.batch_size, setup.cfg.clients
    client, server = copy.deepcopy(setup.client_module), copy.deepcopy(setup.server_module)
    aux = copy.deepcopy(build_parts(create(setup.cfg, "sfl_local_loss"), setup)["aux"].module)
    server_opt = torch.optim.SGD(server.parameters(), lr=lr)
    for _ in range(rounds):
        locals_ = [(copy.deepcopy(client), copy.deepcopy(aux)) for _ in range(n_all)]
        opts = [torch.optim.SGD([*c.parameters(), *a.parameters()], lr=lr) for c, a in locals_]
        for _ in range(tau):
            for n, ((c, a), opt) in enumerate(zip(locals_, opts)):
                x, y = streams.batch(n, b)
                z = c(x)
                opt.zero_grad()
                CE(a(z), y).backward()
                opt.step()
                server_opt.zero_grad()
                CE(server(z.detach()), y).backward()
                server_opt.step()
        w = weights_of(setup)
        client.load_state_dict(average([c.state_dict() for c, _ in locals_], w))
        aux.load_state_dict(average([a.state_dict() for _, a in locals_], w))
    return client, aux, server


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_sfl_local_loss_is_the_plain_pytorch_one_in_both_executors():
    cfg = small_config(model=SMOOTH_MODEL, local_iters=2, rounds=2, lr=0.05, divergence_every=0)
    setup, seq, bat = both_executions(cfg, "sfl_local_loss")
    client, aux, server = reference_local_loss(setup, 2, 2, 0.05)
    for ex in (seq, bat):
        torch.testing.assert_close(ex.model["client"].params, flat(client), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ex.model["aux"].params, flat(aux), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ex.model["server"].params, flat(server), rtol=1e-4, atol=1e-5)
