"""The speed benchmark: every algorithm against centralized training of the same model on the same
number of samples, timed in one process with the algorithms interleaved so machine drift cancels.

Run it as ``splitfed bench`` or ``python -m benchmarks``; docs/performance.md has the latest numbers.
A round of every algorithm processes the same samples, τ·N·b (centralized: τ·N steps of b), and only
``run_round`` is timed (no evaluation or divergence measurement).
"""

import argparse
import copy
import dataclasses
import datetime
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .algorithms import ALGORITHMS
from .config import Config
from .engine.loop import Setup, participants
from .engine.side import State
from .runner import prepare

# (label, algorithm, execution); minibatch_sfl runs in both executions so their speeds can be compared.
# "torch" is centralized training written the usual way (an nn.Module and torch.optim.SGD), to show
# what the engine's own centralized costs against plain PyTorch.
VARIANTS = [
    ("centralized", "centralized", "loop"),
    ("torch", "torch", "loop"),
    ("minibatch_sfl", "minibatch_sfl", "loop"),
    ("minibatch_sfl[vmap]", "minibatch_sfl", "vmap"),
    ("sfl_v1", "sfl_v1", "loop"),
    ("sfl_v2", "sfl_v2", "loop"),
    ("sl", "sl", "loop"),
    ("fedavg", "fedavg", "loop"),
]
SHAPES = {"cnn4": (1, 28, 28), "resnet18": (3, 32, 32), "digits_cnn": (1, 8, 8)}
# The targets: (model, clients, variants, bound on time relative to centralized)
TARGETS = [
    ("cnn4", 10, ("minibatch_sfl",), 1.10),
    ("cnn4", 10, ("fedavg", "sfl_v1"), 1.20),
    ("cnn4", 100, ("minibatch_sfl", "fedavg", "sfl_v1"), 1.25),
]


def scenario_config(model: str, clients: int, args: argparse.Namespace) -> Config:
    tau = max(1, round(args.samples / (clients * args.batch_size)))
    model_args = {"width": args.resnet_width} if model == "resnet18" else {}
    return Config(
        algorithm=("minibatch_sfl",),
        dataset="synthetic",
        synthetic_shape=SHAPES[model],
        synthetic_samples=clients * max(64, 2 * args.batch_size),
        model=model,
        model_args=model_args,
        clients=clients,
        partition="iid",
        batch_size=args.batch_size,
        local_iters=tau,
        rounds=1,
        divergence_every=0,
        device=args.device,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainTorch:
    """Centralized SGD without the engine: the model's own modules and torch.optim.SGD, same batches."""

    def __init__(self, setup: Setup) -> None:
        self.model = copy.deepcopy(setup.model).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=setup.cfg.lr)
        self.ctx = setup.context()
        self.w_c = self.w_s = State(torch.zeros(0), torch.zeros(0), torch.zeros(0))

    def run_round(self, rnd: int, clients: list[int]) -> None:
        for _ in range(self.ctx.tau * len(clients)):
            x, y = self.ctx.union_batch()
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()


def bench_scenario(setup: Setup, repeats: int, variants: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Time one round of each variant ``repeats`` times (after one warm-up round), interleaved."""
    cfg = setup.cfg
    device = setup.init_c.params.device
    algos = {}
    for label, name, execution in variants:
        variant_setup = dataclasses.replace(setup, cfg=cfg.replace(execution=execution))
        algos[label] = PlainTorch(setup) if name == "torch" else ALGORITHMS.get(name)(variant_setup.context())
    times: dict[str, list[float]] = {label: [] for label in algos}
    peak: dict[str, int] = {}
    labels = list(algos)
    for rep in range(repeats + 1):
        order = labels[rep % len(labels) :] + labels[: rep % len(labels)]  # rotate: no fixed neighbour
        for label in order:
            clients = participants(cfg, rep + 1)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            algos[label].run_round(rep + 1, clients)
            _sync(device)
            if rep > 0:  # round 1 warms caches and allocators up
                times[label].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak[label] = torch.cuda.max_memory_allocated(device)
    rows = []
    for label in labels:
        algo = algos[label]
        samples = sum(s.samples for s in algo.ctx.sides if s.module is setup.server_module) // (repeats + 1)
        state_bytes = sum(s.store.nbytes for s in algo.ctx.sides) + algo.w_c.nbytes + algo.w_s.nbytes
        if isinstance(algo, PlainTorch):
            samples = cfg.local_iters * len(participants(cfg, 1)) * cfg.batch_size
            state_bytes = sum(p.numel() * p.element_size() for p in algo.model.parameters())
        ratios = [t / c for t, c in zip(times[label], times["centralized"], strict=True)]
        median = statistics.median(times[label])
        rows.append(
            {
                "model": cfg.model,
                "clients": cfg.clients,
                "tau": cfg.local_iters,
                "batch_size": cfg.batch_size,
                "variant": label,
                "samples_per_round": samples,
                "round_s": median,
                "round_s_all": times[label],
                "samples_per_s": samples / median,
                "ratio_to_centralized": statistics.median(ratios),
                "state_mb": state_bytes / 1e6,
                "peak_gpu_mb": peak[label] / 1e6 if label in peak else None,
            }
        )
    return rows


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for model, clients, names, bound in TARGETS:
        for name in names:
            match = [
                r for r in rows if r["model"] == model and r["clients"] == clients and r["variant"] == name
            ]
            if match:
                ratio = match[0]["ratio_to_centralized"]
                out.append(
                    {
                        "model": model,
                        "clients": clients,
                        "variant": name,
                        "bound": bound,
                        "ratio": ratio,
                        "met": ratio <= bound,
                    }
                )
    return out


HEADER = (
    f"{'model':<10}{'N':>5}{'τ':>4}{'samples':>9}  {'variant':<20}{'s/round':>9}{'samples/s':>11}"
    f"{'x central':>11}{'state MB':>10}"
)


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['model']:<10}{r['clients']:>5}{r['tau']:>4}{r['samples_per_round']:>9}  {r['variant']:<20}"
        f"{r['round_s']:>9.3f}{r['samples_per_s']:>11.0f}{r['ratio_to_centralized']:>11.3f}{r['state_mb']:>10.1f}"
    )


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitfed bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn4,resnet18", help="comma-separated: cnn4, resnet18, digits_cnn")
    p.add_argument("--clients", default="10,100,300", help="comma-separated client counts N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--samples", type=int, default=9600, help="samples per round (τ = samples / (N·b), at least 1)"
    )
    p.add_argument("--resnet-width", type=int, default=8, help="resnet18 base width (64 is the full model)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per variant, after one warm-up round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-vmap", action="store_true", help="skip the vectorised MiniBatch-SFL")
    p.add_argument("--out", default="benchmarks/results/latest.json", help="where to write the JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.manual_seed(0)
    variants = [v for v in VARIANTS if not (args.no_vmap and v[2] == "vmap")]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    print(HEADER + "\n" + "-" * len(HEADER), flush=True)
    for model in args.models.split(","):
        for clients in (int(n) for n in args.clients.split(",")):
            scenario = bench_scenario(prepare(scenario_config(model, clients, args)), args.repeats, variants)
            rows += scenario
            print("\n".join(format_row(r) for r in scenario), flush=True)
    # Linear in samples: MiniBatch-SFL and centralized at 1x, 2x and 4x the samples per round.
    scaling = []
    first_model, base_clients = args.models.split(",")[0], int(args.clients.split(",")[0])
    for factor in (1, 2, 4):
        scaled = argparse.Namespace(**{**vars(args), "samples": args.samples * factor})
        setup = prepare(scenario_config(first_model, base_clients, scaled))
        scaling += [{**r, "factor": factor} for r in bench_scenario(setup, args.repeats, VARIANTS[:3])]
    print("\nTime per round against samples per round (linear if the time per 1k samples stays flat):")
    for r in scaling:
        per_k = 1000 * r["round_s"] / r["samples_per_round"]
        print(f"  {r['variant']:<14} x{r['factor']}  {r['samples_per_round']:>6} samples  {per_k:.4f} s/1k")
    targets = check_targets(rows)
    if targets:
        print("\nTargets (time relative to centralized on the same samples):")
        for t in targets:
            verdict = "met" if t["met"] else "MISSED"
            name = f"{t['model']} N={t['clients']:<4} {t['variant']:<14}"
            print(f"  {name} {t['ratio']:.3f} <= {t['bound']}: {verdict}")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": rows,
        "scaling": scaling,
        "targets": targets,
        "process_peak_rss_mb": peak_rss_mb,
        "wall_s": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out} (process peak RSS {peak_rss_mb:.0f} MB, {result['wall_s']:.0f} s)")
    return 0
