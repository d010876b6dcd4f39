import copy
from collections import OrderedDict

import torch
from torch import nn

from splitfed.algorithms import ALGORITHMS, Algorithm, register
from splitfed.algorithms.base import LOCKSTEP, SPLIT
from splitfed.executors import train
from splitfed.models import MODELS, register_model
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
        parts = SPLIT
        schedule = LOCKSTEP

        def main_server(self, server, batch):
            z, y = torch.cat([s.smashed for s in batch]), torch.cat([s.labels for s in batch])
            grad = server.step(z, y)
            server.step(z, y)
            return [{"smashed_grad": a} for a in grad.split([len(s.labels) for s in batch])]


# A model without kinks (no ReLU, no max-pool): a rounding difference between two executions then grows
# smoothly, by at most (1 + ηL) per step, so several steps can be compared against a fixed bound on any
# CPU. With ReLU and max-pool a last-bit difference can flip which input a max-pool picks, and the runs
# part by lr × (a gradient's size) in one step (seen: 4e-8 to 2e-4 within one round of cnn4).
SMOOTH_MODEL = "test_smooth"
if SMOOTH_MODEL not in MODELS:

    @register_model(SMOOTH_MODEL)
    def _smooth(num_classes, in_shape):
        """conv3x3(8)+tanh, avg-pool, linear(32)+tanh, linear: smooth everywhere."""
        c, h, w = in_shape
        return nn.Sequential(
            OrderedDict(
                conv=nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)),
                fc1=nn.Sequential(nn.Flatten(), nn.Linear(8 * (h // 2) * (w // 2), 32), nn.Tanh()),
                fc2=nn.Linear(32, num_classes),
            )
        )


def weights_of(setup: Setup) -> list[float]:
    """p_n = |D_n| / Σ |D_m|."""
    sizes = setup.data_sizes
    return [s / sum(sizes) for s in sizes]


def average(states: list[dict], weights: list[float]) -> dict:
    """Σ_n p_n sd_n of state_dicts (integer buffers averaged as numbers, then cast back, as splitfed's
    float-held buffers are when a model is assembled)."""
    out = {}
    for key, first in states[0].items():
        total = sum(w * sd[key].double() for sd, w in zip(states, weights, strict=True))
        out[key] = total.to(first.dtype)
    return out


def both_executions(cfg, name):
    """The algorithm trained by the sequential and by the batched executor."""
    setup, seq, _, _ = train_one(cfg.replace(execution="sequential"), name)
    _, bat, _, _ = train_one(cfg.replace(execution="batched"), name)
    return setup, seq, bat


def local_sgd(model: torch.nn.Module, batches, lr: float, grad_hook=None) -> torch.nn.Module:
    """A copy of ``model`` after plain SGD on ``batches``; ``grad_hook(local)`` may change the
    gradients before each step (a drift correction)."""
    local = copy.deepcopy(model).train()
    opt = torch.optim.SGD(local.parameters(), lr=lr)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(local(x), y).backward()
        if grad_hook is not None:
            grad_hook(local)
        opt.step()
    return local


# An algorithm defined here alone that uses every hook of a definition: a conversation of two exchanges
# per iteration (the labels travel in the second), a client objective (a pull towards the round-start
# model whose strength is the client's own state: how many rounds it trained before), an extra upload,
# and a fed server with state of its own that sees the round-start model and averages by name (the bias
# entries keep their round-start values; the rest moves by the mean update plus half the last one).
EVERY_HOOK = "test_every_hook"
if EVERY_HOOK not in ALGORITHMS:
    from splitfed.algorithms.base import Average, ClientRound

    class Remembering(Average):
        def __init__(self, algo):
            super().__init__(algo)
            self.last: dict[str, torch.Tensor] = {}  # Δ of the last round, per part
            self.sizes = torch.zeros(1)  # Σ over rounds of the clients' mean squared update

        def update(self, model, mean):
            out = {}
            for part, avg in mean.items():
                x = model[part].params
                delta = avg.params - x
                params = x + delta + 0.5 * self.last.get(part, torch.zeros_like(x))
                biases, _ = self.algo.layouts[part].select(lambda name: name.endswith("bias"))
                params[biases] = x[biases]  # by name: the biases are not averaged
                self.last[part] = delta
                out[part] = type(avg)(params, avg.buffers, avg.opt)
            self.sizes = self.sizes.to(self.mean.extras["size"].device) + self.mean.extras["size"]
            return out

        def state_dict(self):
            return {"sizes": self.sizes} | {f"last.{k}": v for k, v in self.last.items()}

        def load_state_dict(self, state):
            self.sizes = state["sizes"]
            self.last = {k[5:]: v for k, v in state.items() if k.startswith("last.")}

    @register(EVERY_HOOK)
    class EveryHook(Algorithm):
        parts = SPLIT
        schedule = LOCKSTEP

        def client(self, clients, x, y):
            z = clients.forward("client", x)
            reply = yield {"smashed": z}
            reply = yield {"labels": y, "echo": reply["seen"]}
            clients.backward("client", reply["smashed_grad"])

        def main_server(self, server, batch):
            z = torch.cat([s.smashed for s in batch])
            second = yield [{"seen": s.smashed[:, :1] * 0 + 1} for s in batch]
            y = torch.cat([s.labels for s in second])
            assert all(bool((s["echo"] == 1).all()) for s in second)
            grad = server.step(z, y)
            return [{"smashed_grad": a * len(batch)} for a in grad.split([len(s.labels) for s in second])]

        def client_begin(self, client: ClientRound) -> None:
            visits = client.state.get("visits", torch.zeros(1, device=client.model["client"].params.device))
            client.scratch("client")["anchor"] = client.start.model["client"].params
            client.scratch("client")["mu"] = 0.1 * visits

        def correct(self, part, grad, params, scratch):
            return grad + scratch["mu"] * (params - scratch["anchor"])

        def client_end(self, client: ClientRound) -> dict[str, torch.Tensor]:
            client.state["visits"] = (
                client.state.get("visits", torch.zeros(1)).to(client.model["client"].params.device) + 1
            )
            moved = client.model["client"].params - client.start.model["client"].params
            return {"size": (moved * moved).mean().reshape(1)}

        def fed_server(self):
            return Remembering(self)
