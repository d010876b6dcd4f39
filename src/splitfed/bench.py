"""The speed benchmark: every algorithm and execution against the arithmetic floor and centralized training,
timed in one process with the variants interleaved so machine drift cancels.

Run it as ``splitfed bench`` or ``python -m benchmarks``; docs/performance.md has the latest numbers.
A round of every variant processes the same samples, τ·N·b. ``floor`` is plain PyTorch training the whole
model on the giant batch N·b for τ steps: the arithmetic of one MiniBatch-SFL round without the split, the
fastest any variant can be. ``torch`` is centralized training written the usual way (τ·N steps of b), to show
what the engine's own centralized costs. Only the round's training is timed (no evaluation, no divergence).

Both references are the fastest way plain PyTorch runs their arithmetic at the variants' precision: on
CUDA each is timed eagerly and as one captured CUDA graph per step (the variants replay graphs too, so an
eager floor would not be a floor), and the ratios are taken against whichever was faster in this run; each
row says which (``floor_is``, ``torch_is``). On a CPU there are no graphs: the eager loop is the reference.
"""

import argparse
import datetime
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .algorithms import create
from .bench_plain import REFERENCES, PlainTorch, fastest
from .config import Config
from .engine.context import Context
from .executors import make_executor
from .executors.parts import prepare_context
from .sections import Divergence, Synthetic
from .setup import Setup, prepare

# (label, algorithm, execution, CUDA graphs); "floor" and "torch" are plain PyTorch (see the docstring).
VARIANTS = [
    ("floor", "floor", "", False),
    ("torch", "torch", "", False),
    ("centralized", "centralized", "sequential", True),
    ("minibatch_sfl", "minibatch_sfl", "sequential", True),
    ("minibatch_sfl[batched]", "minibatch_sfl", "batched", True),
    ("sfl_v1", "sfl_v1", "sequential", True),
    ("sfl_v1[batched]", "sfl_v1", "batched", True),
    ("sfl_v2", "sfl_v2", "sequential", True),
    ("sl", "sl", "sequential", True),
    ("fedavg", "fedavg", "sequential", True),
    ("fedavg[batched]", "fedavg", "batched", True),
    # the published variants on the open definition (each one module: docs/algorithms.md)
    ("fedprox", "fedprox", "sequential", True),
    ("scaffold", "scaffold", "sequential", True),
    ("fedadam", "fedadam", "sequential", True),
    ("fedbn", "fedbn", "sequential", True),
    ("ushaped_sl", "ushaped_sl", "sequential", True),
    ("sfl_local_loss", "sfl_local_loss", "sequential", True),
]
# On CUDA, the plain-PyTorch references also as captured graphs (the fastest plain PyTorch is the reference),
# and the sequential algorithms also without CUDA graphs (the eager reference path).
CUDA_VARIANTS = [
    ("floor[graphs]", "floor", "", True),
    ("torch[graphs]", "torch", "", True),
    ("centralized[eager]", "centralized", "sequential", False),
    ("sfl_v2[eager]", "sfl_v2", "sequential", False),
]
SHAPES = {"cnn4": (1, 28, 28), "resnet18": (3, 32, 32), "digits_cnn": (1, 8, 8), "vit": (1, 28, 28)}
# Targets, as time ratios: (device type, model, clients, variants (best of), bound, against)
TARGETS = [
    ("cpu", "cnn4", 10, ("minibatch_sfl",), 1.10, "centralized"),
    ("cpu", "cnn4", 10, ("fedavg",), 1.20, "centralized"),
    ("cpu", "cnn4", 10, ("sfl_v1",), 1.20, "centralized"),
    ("cpu", "cnn4", 100, ("minibatch_sfl",), 1.25, "centralized"),
    ("cpu", "cnn4", 100, ("fedavg",), 1.25, "centralized"),
    ("cpu", "cnn4", 100, ("sfl_v1",), 1.25, "centralized"),
    ("cuda", "resnet18", 100, ("minibatch_sfl", "minibatch_sfl[batched]"), 1.5, "floor"),
    ("cuda", "resnet18", 100, ("fedavg", "fedavg[batched]"), 1.5, "floor"),
    ("cuda", "resnet18", 100, ("sfl_v1", "sfl_v1[batched]"), 1.5, "floor"),
    ("cuda", "cnn4", 100, ("minibatch_sfl", "minibatch_sfl[batched]"), 3.0, "floor"),
    ("cuda", "cnn4", 100, ("fedavg", "fedavg[batched]"), 3.0, "floor"),
    ("cuda", "cnn4", 100, ("sfl_v1", "sfl_v1[batched]"), 3.0, "floor"),
    ("cuda", "resnet18", 100, ("centralized",), 1.05, "torch"),
    ("cuda", "cnn4", 100, ("centralized",), 1.05, "torch"),
]


def scenario_config(model: str, clients: int, args: argparse.Namespace) -> Config:
    tau = max(1, round(args.samples / (clients * args.batch_size)))
    model_args = {"width": args.resnet_width} if model == "resnet18" else {}
    return Config(
        algorithm=("minibatch_sfl",),
        dataset="synthetic",
        synthetic=Synthetic(shape=SHAPES[model], samples=clients * max(64, 2 * args.batch_size)),
        model=model,
        model_args=model_args,
        clients=clients,
        partition="iid",
        batch_size=args.batch_size,
        local_iters=tau,
        rounds=1,
        divergence=Divergence(every=0),
        device=args.device,
        channels_last=args.channels_last,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_scenario(
    setup: Setup, repeats: int, variants: list[tuple[str, str, str, bool]]
) -> list[dict[str, Any]]:
    """Time one round of each variant ``repeats`` times (after one warm-up round), interleaved."""
    runners: dict[str, Any] = {}
    contexts: dict[str, Context] = {}
    for label, name, execution, graphs in variants:
        if name in REFERENCES:
            ctx = contexts[label] = setup.context()
            runners[label] = PlainTorch(setup, ctx, giant=name == "floor", graphed=graphs)
        else:
            algo = create(setup.cfg, name)
            ctx = contexts[label] = prepare_context(algo, setup)
            runners[label] = make_executor(algo, ctx, execution, cuda_graphs=graphs)
    clients = setup.participants(1)
    times, peak = time_rounds(runners, clients, repeats, setup.device)
    # each reference is the fastest of its ways (eager, graphs) in this very run
    reference = {
        ref: fastest(times, [label for label, name, *_ in variants if name == ref]) for ref in REFERENCES
    }
    rows = []
    for label, runner in runners.items():
        state_bytes = sum(s.store.nbytes for s in contexts[label].sides)
        if isinstance(runner, PlainTorch):
            state_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
        row = _row(setup, len(clients), label, times, reference)
        rows.append(row | {"state_mb": state_bytes / 1e6, "peak_gpu_mb": peak.get(label)})
    return rows


def time_rounds(
    runners: dict[str, Any], clients: list[int], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each runner's round times (the first round of each left out) and its peak GPU memory in MB."""
    times: dict[str, list[float]] = {label: [] for label in runners}
    peak: dict[str, float] = {}
    labels = list(runners)
    for rep in range(repeats + 1):
        order = labels[rep % len(labels) :] + labels[: rep % len(labels)]  # rotate: no fixed neighbour
        for label in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            runners[label].run_round(rep + 1, clients)
            _sync(device)
            if rep > 0:  # round 1 warms caches and allocators up (and captures CUDA graphs)
                times[label].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak[label] = torch.cuda.max_memory_allocated(device) / 1e6
    return times, peak


def _row(
    setup: Setup,
    participants: int,
    label: str,
    times: dict[str, list[float]],
    reference: dict[str, str | None],
) -> dict[str, Any]:
    cfg = setup.cfg
    samples = cfg.local_iters * participants * cfg.batch_size
    median = statistics.median(times[label])
    return {
        "model": cfg.model,
        "clients": cfg.clients,
        "tau": cfg.local_iters,
        "batch_size": cfg.batch_size,
        "device": setup.device.type,
        "variant": label,
        "samples_per_round": samples,
        "round_s": median,
        "round_s_all": times[label],
        "samples_per_s": samples / median,
        "ratio_to_floor": _ratio(times[label], times.get(reference["floor"] or "")),
        "ratio_to_centralized": _ratio(times[label], times.get("centralized")),
        "ratio_to_torch": _ratio(times[label], times.get(reference["torch"] or "")),
        "floor_is": reference["floor"],
        "torch_is": reference["torch"],
    }


def _ratio(times: list[float], reference: list[float] | None) -> float | None:
    """Median over repetitions of the time relative to the reference in the same repetition."""
    if not reference:
        return None
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for device, model, clients, names, bound, against in TARGETS:
        match = [
            r
            for r in rows
            if (r["device"], r["model"], r["clients"]) == (device, model, clients) and r["variant"] in names
        ]
        ratios = [(r[f"ratio_to_{against}"], r["variant"]) for r in match if r[f"ratio_to_{against}"]]
        if ratios:
            ratio, best = min(ratios)
            out.append(
                {
                    "device": device,
                    "model": model,
                    "clients": clients,
                    "variant": best,
                    "against": against,
                    "bound": bound,
                    "ratio": ratio,
                    "met": ratio <= bound,
                }
            )
    return out


HEADER = (
    f"{'model':<10}{'N':>5}{'τ':>5}{'samples':>9}  {'variant':<24}{'s/round':>9}{'samples/s':>11}"
    f"{'x floor':>9}{'x central':>11}{'state MB':>10}"
)


def _fmt(value: float | None, width: int, spec: str = ".3f") -> str:
    return f"{value:>{width}{spec}}" if value is not None else f"{'–':>{width}}"


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['model']:<10}{r['clients']:>5}{r['tau']:>5}{r['samples_per_round']:>9}  {r['variant']:<24}"
        f"{r['round_s']:>9.3f}{r['samples_per_s']:>11.0f}{_fmt(r['ratio_to_floor'], 9, '.2f')}"
        f"{_fmt(r['ratio_to_centralized'], 11)}{r['state_mb']:>10.1f}"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as the markdown table of docs/performance.md."""

    def cell(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = [
        "| model | N | τ | variant | s/round | × floor | × centralized | × plain PyTorch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    references = {}
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['clients']} | {r['tau']} | {r['variant']} | {r['round_s']:.3f} | "
            f"{cell(r['ratio_to_floor'], '.2f')} | {cell(r['ratio_to_centralized'], '.2f')} | "
            f"{cell(r['ratio_to_torch'], '.2f')} |"
        )
        references[(r["model"], r["clients"])] = (r.get("floor_is"), r.get("torch_is"))
    if any(ref != ("floor", "torch") for ref in references.values()):  # say which way was the fastest
        lines.append("")
        lines += [
            f"{m} N = {n}: × floor against {f}, × plain PyTorch against {p}"
            for (m, n), (f, p) in references.items()
        ]
    return "\n".join(lines)


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
    p.add_argument(
        "--models", default="cnn4,resnet18", help="comma-separated: cnn4, resnet18, digits_cnn, vit"
    )
    p.add_argument("--clients", default="10,100,300", help="comma-separated client counts N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--samples", type=int, default=9600, help="samples per round (τ = samples / (N·b), at least 1)"
    )
    p.add_argument("--resnet-width", type=int, default=8, help="resnet18 base width (64 is the full model)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per variant, after one warm-up round")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="every variant, the plain-PyTorch references included, in channels-last memory order",
    )
    p.add_argument("--variants", help="comma-separated labels to time (default: all; see VARIANTS)")
    p.add_argument("--out", default="benchmarks/results/latest.json", help="where to write the JSON")
    p.add_argument(
        "--markdown", metavar="JSON", help="print the results of an earlier run as a markdown table"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())["results"]))
        return 0
    torch.manual_seed(0)
    variants = VARIANTS + (CUDA_VARIANTS if args.device.startswith("cuda") else [])
    if args.variants:
        wanted = args.variants.split(",")
        variants = [v for v in variants if v[0] in wanted or v[1] in (*REFERENCES, "centralized")]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    print(HEADER + "\n" + "-" * len(HEADER), flush=True)
    for model in args.models.split(","):
        for clients in (int(n) for n in args.clients.split(",")):
            scenario = bench_scenario(prepare(scenario_config(model, clients, args)), args.repeats, variants)
            rows += scenario
            print("\n".join(format_row(r) for r in scenario), flush=True)
    targets = check_targets(rows)
    if targets:
        print("\nTargets (time relative to the reference on the same samples, best execution):")
        for t in targets:
            verdict = "met" if t["met"] else "MISSED"
            name = f"{t['device']} {t['model']} N={t['clients']:<4} {t['variant']:<24}"
            print(f"  {name} {t['ratio']:.3f}x {t['against']} <= {t['bound']}: {verdict}")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": rows,
        "targets": targets,
        "process_peak_rss_mb": peak_rss_mb,
        "wall_s": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out} (process peak RSS {peak_rss_mb:.0f} MB, {result['wall_s']:.0f} s)")
    return 0
