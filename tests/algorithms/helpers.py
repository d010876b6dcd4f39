import copy

import torch

from splitfed.algorithms import ALGORITHMS, Algorithm, register
from splitfed.algorithms.base import LOCKSTEP, ONE, PER_CLIENT
from splitfed.executors import train
from splitfed.setup import Setup, prepare


def train_one(cfg, name):
    """Prepare cfg and train algorithm ``name`` in memory (no run directory)."""
    setup = prepare(cfg)
    executor, history, ctx = train(name, setup)
    return setup, executor, history, ctx


def final_model(setup: Setup, executor) -> torch.nn.Module:
    return setup.assemble(executor.w_c, executor.w_s)


def reference_sgd(setup: Setup, batches, lr, momentum=0.0, weight_decay=0.0) -> torch.nn.Module:
    """torch.optim.SGD on the unsplit initial model, one step per (x, y) in ``batches``."""
    model = copy.deepcopy(setup.model).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module, atol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        diff = (sa[k].double() - sb[k].double()).abs().max().item() if sa[k].numel() else 0.0
        assert diff <= atol, f"{k} differs by {diff}"


def assert_different_model(a, b, atol=1e-4):
    diffs = [(a.state_dict()[k].double() - v.double()).abs().max().item() for k, v in b.state_dict().items()]
    assert max(diffs) > atol


# An algorithm no executor has seen, defined here alone: lockstep clients, one server-side model that the
# main server steps TWICE on each giant batch, returning the first step's gradient. If it runs in every
# executor with the same result, no executor can be relying on an algorithm's name.
TEST_ALGORITHM = "test_two_steps"
if TEST_ALGORITHM not in ALGORITHMS:

    @register(TEST_ALGORITHM)
    class TwoSteps(Algorithm):
        client_side = PER_CLIENT
        server_side = ONE
        schedule = LOCKSTEP

        def main_server(self, server, batch):
            z, y = torch.cat([s.smashed for s in batch]), torch.cat([s.labels for s in batch])
            grad = server.step(z, y)
            server.step(z, y)
            return list(grad.split([len(s.labels) for s in batch]))
