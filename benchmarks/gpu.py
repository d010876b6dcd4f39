"""Everything worth checking and timing on a GPU, in one script that fits a short lease (under 8 minutes).

    PYTHONPATH=src python3 -m benchmarks.gpu --out DIR [--budget 480] [--peer-a DIR --fmnist DIR]

Stages, each a subprocess with its own time limit, skipped when the budget left is too short, each
writing its result to DIR as soon as it ends (so a lease cut short still returns what ran):
1. checks: on CUDA, every algorithm's sequential run with CUDA graphs, and its batched run, against the
   eager sequential run (max difference of the final weights; equal byte, sample and step counts), and
   the MiniBatch-SFL identity (τ = 1: SGD of the unsplit model on the union batch) over rounds that
   replay a captured graph;
2. W1: cnn4 (FMNIST-shaped), 10 clients, one epoch of b = 32 per round (τ = 188), every variant;
3. the SplitFed reference scripts (peer A, adapted to W1's model and data: --peer-a) on W1, if given;
4. cnn4 at N = 100 and 1000, and ResNet-18 (width 64) at N = 100 and 10, 9,600 samples per round, every
   variant against the floor (plain PyTorch, the whole model on the giant batch N·b, the faster of its
   eager loop and its captured CUDA graph).
``--quick`` shrinks every stage to seconds, to try the script on a CPU before a lease.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def checks(out: Path, device: str) -> None:
    """Stage 1, in this process: graphs and batched execution agree with the eager reference.

    In strict float32 (no TF32, deterministic cuDNN): with PyTorch's defaults a convolution runs in TF32,
    whose rounding depends on the algorithm cuDNN picks, which may differ between eager and captured runs.
    """
    import torch

    from splitfed import Config
    from splitfed.config import ALL_ALGORITHMS
    from splitfed.executors import train
    from splitfed.setup import deterministic_cuda, prepare

    deterministic_cuda()  # before CUDA starts: cuBLAS reads its workspace setting once

    base = Config(
        dataset="synthetic",
        synthetic={"shape": (1, 28, 28), "samples": 400},
        model="cnn4",
        clients=4,
        rounds=3,
        local_iters=4,
        batch_size=16,
        lr=0.01,  # small steps: a max-pool flip between two executions then moves little (see tests)
        momentum=0.5,
        divergence={"every": 0},
        device=device,
    )
    rows = []
    for name in ALL_ALGORITHMS:
        runs = {}
        for label, execution, graphs in [
            ("eager", "sequential", False),
            ("graphs", "sequential", True),
            ("batched", "batched", True),
        ]:
            setup = prepare(base.replace(execution=execution, cuda_graphs=graphs))
            executor, history, _ = train(name, setup)
            runs[label] = (executor, history)
        ref, ref_history = runs["eager"]
        for label in ("graphs", "batched"):
            ex, history = runs[label]
            diff = max(
                float((ex.w_c.params - ref.w_c.params).abs().max()),
                float((ex.w_s.params - ref.w_s.params).abs().max()),
            )
            counts = all(
                a[k] == b[k]
                for a, b in zip(history, ref_history, strict=True)
                for k in ("samples", "server_steps", "client_bytes_up", "client_bytes_down", "bytes")
            )
            rows.append({"algorithm": name, "variant": label, "max_diff": diff, "same_counts": counts})
            print(f"check {name:14} {label:8} max |Δw| {diff:.2e}  counts equal: {counts}", flush=True)
    # The identity over rounds whose slot is captured once and replayed (τ = 1, 5 rounds).
    cfg = base.replace(
        algorithm=("minibatch_sfl",), local_iters=1, rounds=5, momentum=0.0, model="digits_cnn"
    )
    cfg = cfg.replace(**{"synthetic.shape": (1, 8, 8)})
    setup = prepare(cfg)
    executor, _, _ = train("minibatch_sfl", setup)
    model = setup.assemble(setup.init_c, setup.init_s).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    streams = setup.context().streams
    for _ in range(cfg.rounds):
        pairs = [streams.batch(n, b) for n, b in enumerate(setup.batch_sizes())]
        x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    trained = setup.assemble(executor.w_c, executor.w_s)
    pairs = zip(trained.parameters(), model.parameters(), strict=True)
    diff = max(float((a - b).detach().abs().max()) for a, b in pairs)
    rows.append({"algorithm": "minibatch_sfl", "variant": "identity-5-rounds-graphs", "max_diff": diff})
    print(f"check identity: MiniBatch-SFL (τ = 1, graphs) vs SGD on the union batch: {diff:.2e}", flush=True)
    (out / "checks.json").write_text(json.dumps(rows, indent=1))


def peer_a(script: Path, fmnist: Path, rounds: int, samples: int, timeout: float) -> dict:
    env = dict(os.environ, FMNIST_DIR=str(fmnist), ROUNDS=str(rounds), TRAIN_SAMPLES=str(samples))
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(script.resolve())],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=script.parent,
    )
    text = p.stdout + p.stderr
    rounds_s = [float(x) for x in re.findall(r"ROUND_TIME \d+ ([\d.]+)", text)]
    acc = re.findall(r"FINAL_TEST_ACC ([\d.]+)", text)
    return {
        "script": script.name,
        "rc": p.returncode,
        "wall_s": time.perf_counter() - t0,
        "round_s": rounds_s,
        "final_acc": float(acc[-1]) if acc else None,
        "tail": text[-600:] if p.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", nargs="?", default="all", help="all | checks (run in this process)")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all stages together")
    p.add_argument("--peer-a", help="folder with SFLV1_cnn4_FMNIST.py and SFLV2_cnn4_FMNIST.py")
    p.add_argument("--fmnist", help="folder with the Fashion-MNIST IDX files, for peer A")
    p.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: try the script")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.quick else "cuda"
    if args.stage == "checks":
        checks(out, device)
        return 0
    deadline = time.monotonic() + args.budget
    log = (out / "gpu.log").open("a")

    def say(text: str) -> None:
        print(text, flush=True)
        log.write(text + "\n")
        log.flush()

    def stage(name: str, cmd: list[str], limit: float, need: float) -> None:
        left = deadline - time.monotonic()
        if left < need:
            say(f"== {name}: skipped ({left:.0f} s left, needs {need:.0f})")
            return
        say(f"== {name}: {' '.join(cmd)}")
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=min(limit, left))
            say(p.stdout[-6000:] + p.stderr[-3000:])
            say(f"== {name}: exit {p.returncode} in {time.perf_counter() - t0:.0f} s")
        except subprocess.TimeoutExpired as e:
            tail = (e.stdout or b"")[-4000:]
            say((tail.decode() if isinstance(tail, bytes) else tail) + f"\n== {name}: TIMED OUT")

    py = sys.executable
    say(
        subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        if not args.quick
        else "cpu"
    )
    stage(
        "checks",
        [py, "-m", "benchmarks.gpu", "checks", "--out", str(out)] + (["--quick"] if args.quick else []),
        120,
        30,
    )
    bench = [py, "-m", "splitfed.cli", "bench", "--device", device, "--repeats", "1" if args.quick else "2"]
    if args.quick:
        w1 = ["--models", "digits_cnn", "--clients", "4", "--samples", "256"]
    else:
        w1 = ["--models", "cnn4", "--clients", "10", "--samples", "60160"]
    stage("W1", [*bench, *w1, "--out", str(out / "w1.json")], 200, 60)
    if args.peer_a and args.fmnist:
        for version in ("V1", "V2"):
            left = deadline - time.monotonic()
            if left < 60:
                say(f"== peer A SFL{version}: skipped ({left:.0f} s left)")
                continue
            script = Path(args.peer_a) / f"SFL{version}_cnn4_FMNIST.py"
            samples = 6000 if args.quick else 60000
            try:
                result = peer_a(script, Path(args.fmnist), 2, samples, min(150, left))
            except subprocess.TimeoutExpired:
                result = {"script": script.name, "rc": "timeout"}
            (out / f"peerA_{version}.json").write_text(json.dumps(result, indent=1))
            say(f"== peer A SFL{version}: {json.dumps(result)}")
    scenarios = [
        ("cnn4", "100,1000", 150, 40),
        ("resnet18", "100", 200, 90),
        ("resnet18", "10", 150, 90),
    ]
    if args.quick:
        scenarios = [("digits_cnn", "4,8", 60, 5), ("resnet18", "4", 60, 5)]
    for model, clients, limit, need in scenarios:
        extra = ["--resnet-width", "8" if args.quick else "64"] if model == "resnet18" else []
        samples = ["--samples", "256"] if args.quick else []
        name = f"{model}-N{clients.replace(',', '-')}"
        cmd = [
            *bench,
            "--models",
            model,
            "--clients",
            clients,
            *extra,
            *samples,
            "--out",
            str(out / f"{name}.json"),
        ]
        stage(name, cmd, limit, need)
    say(f"== done, {args.budget - (deadline - time.monotonic()):.0f} s of the {args.budget:.0f} s budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
