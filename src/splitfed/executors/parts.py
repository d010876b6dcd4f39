"""The parts a definition trains, built from a Setup: what every executor (and every network role) needs
before it can run an algorithm's rounds. The definition says which parts exist and where the model is
cut; this module cuts the run's model there (or builds the algorithm's own modules), and gives each part
its initial state, optimizer settings and FLOPs per sample.
"""

import torch

from .._rng import derive_seed
from ..algorithms.base import Algorithm, Model, Part
from ..engine.context import Context, PartSpec
from ..engine.metrics import module_flops
from ..engine.optim import side_optimizer
from ..engine.side import Layout, State, join_states
from ..errors import SplitfedError
from ..models import cut_points, split_at
from ..setup import Setup


def build_parts(algo: Algorithm, setup: Setup) -> dict[str, PartSpec]:
    """Every part of ``algo`` for this run, by name. With one cut at the run's cut layer the two parts are
    the Setup's own halves (the same initial states every algorithm starts from)."""
    cfg = setup.cfg
    assert cfg.cut_layer is not None  # resolved by prepare
    in_model = [p for p in algo.parts if p.in_model]
    named = isinstance(cfg.cut_layer, str)
    cuts = algo.cuts(cfg.cut_layer, cut_points(setup.model, named=named))
    if len(cuts) + 1 != len(in_model):
        raise SplitfedError(
            f"{algo.name}: {len(in_model)} model parts ({', '.join(p.name for p in in_model)}) need "
            f"{len(in_model) - 1} cuts; its cuts() gives {cuts}"
        )
    x = setup.data.train_x[:2]  # also the example a cut by name takes its crossing shapes from
    specs: dict[str, PartSpec] = {}
    if cuts == [cfg.cut_layer]:  # the Setup's halves, whose FLOPs it counted already
        pieces = [(setup.client_module, setup.init_c), (setup.server_module, setup.init_s)]
        for part, (module, init), flops in zip(in_model, pieces, setup.flops_per_sample, strict=True):
            specs[part.name] = _spec(part, module, init, flops, setup)
        with torch.no_grad():
            smashed = setup.client_module.eval()(x)
    else:
        for i, (part, module) in enumerate(zip(in_model, split_at(setup.model, cuts, x), strict=True)):
            if not any(True for _ in module.parameters()):  # a part that trains nothing: not a split
                raise SplitfedError(
                    f"{algo.name}: cuts {cuts} leave part {part.name!r} without parameters; choose cuts with "
                    "trainable layers in every part"
                )
            flops, x = module_flops(module, x, input_grad=i > 0)
            smashed = x if i == 0 else smashed
            specs[part.name] = _spec(part, module.to(setup.device), None, flops, setup)
    for part in algo.parts:
        if part.in_model:
            continue
        with torch.random.fork_rng(devices=[]):  # its own seed; the global RNG left as it was
            torch.manual_seed(derive_seed(cfg.seed_for("init"), "part", part.name))
            module = algo.build_part(part.name, smashed.shape[1:], setup.data.num_classes)
        flops, _ = module_flops(module, smashed, input_grad=True)
        specs[part.name] = _spec(part, module.to(setup.device), None, flops, setup)
    return {p.name: specs[p.name] for p in algo.parts}


def _spec(part: Part, module: torch.nn.Module, init: State | None, flops: float, setup: Setup) -> PartSpec:
    if init is None:
        opt = side_optimizer(setup.cfg, part.trains_with, module)
        init = Layout(module).state_of(module, opt, setup.device)
    return PartSpec(module, init, part.trains_with, flops)


def prepare_context(algo: Algorithm, setup: Setup) -> Context:
    """A fresh context for ``algo``, its parts built; ``algo.layouts`` then names every parameter and
    buffer of each part (for rules that address state by name)."""
    ctx = setup.context()
    ctx.parts = build_parts(algo, setup)
    algo.layouts = {name: Layout(spec.module) for name, spec in ctx.parts.items()}
    return ctx


def initial_model(ctx: Context) -> Model:
    """Every part at its initial state (copies: the model of round 1)."""
    return {name: spec.init.clone() for name, spec in ctx.parts.items()}


def halves(algo: Algorithm, model: Model) -> tuple[State, State]:
    """(w_c, w_s): the model cut once at the run's cut layer, as evaluation, the divergence and export
    see it: the first in-model part, and every later one joined."""
    chain = algo.chain
    return model[chain[0]], join_states([model[name] for name in chain[1:]])
