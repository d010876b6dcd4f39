"""The networked deployment against the in-process simulation: time per iteration and bytes on the wire.

    python -m benchmarks.network [--clients 10] [--local-iters 20] [--rounds 4]

Runs MiniBatch-SFL with cnn4 on FMNIST-shaped data (synthetic 1x28x28) with the same config and
seed: in this process (`splitfed run`'s engine; also held to one thread, for reference), and as a
deployment on loopback (fed server, main server and N client processes, TLS). Reports the median
training time per round (rounds 2.. so process start-up is left out) and per iteration, their ratio,
and the bytes each role saw on the wire against the simulation's analytic count.
Writes benchmarks/results/network.json.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from splitfed import Config, run
from splitfed.services.launch import launch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--local-iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/network.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="splitfed-netbench-"))
    config = Config(
        algorithm=("minibatch_sfl",),
        dataset="synthetic",
        synthetic={"shape": (1, 28, 28), "samples": args.clients * 600},
        model="cnn4",
        clients=args.clients,
        partition="iid",
        rounds=args.rounds,
        local_iters=args.local_iters,
        divergence={"every": 0},
        device="cpu",
    )
    simulated = run(config.replace(out=str(work / "sim")))
    # For reference: the simulation held to one thread, as each client process of the deployment is.
    one_thread = run(config.replace(out=str(work / "sim1"), threads=1))
    launch(config.replace(out=str(work / "net"), threads=1), str(work / "deploy"))
    deployed = [json.loads(line) for line in (work / "net" / "metrics.jsonl").read_text().splitlines()]

    def per_round(history: list[dict]) -> float:
        return statistics.median(r["train_time_s"] for r in history[1:])

    sim_s, net_s = per_round(simulated.history), per_round(deployed)
    sim1_s = per_round(one_thread.history)
    analytic = simulated.history[-1]["bytes"]
    wire = deployed[-1]["wire_bytes"]
    result = {
        "config": {"clients": args.clients, "tau": args.local_iters, "batch_size": 32, "rounds": args.rounds},
        "simulated_round_s": sim_s,
        "deployed_round_s": net_s,
        "simulated_iteration_ms": 1000 * sim_s / args.local_iters,
        "deployed_iteration_ms": 1000 * net_s / args.local_iters,
        "ratio": net_s / sim_s,
        "simulated_threads": simulated.config.threads,
        "simulated_one_thread_round_s": sim1_s,
        "ratio_to_one_thread": net_s / sim1_s,
        "analytic_bytes_per_round": analytic,
        "wire_bytes_per_round": wire,
        "main_server_in_over_analytic": wire["main_server_in"] / (analytic["smashed"] + analytic["labels"]),
        "main_server_out_over_analytic": wire["main_server_out"] / analytic["smashed_grad"],
        "fed_server_in_over_analytic": wire["fed_server_in"] / analytic["client_weights"],
        "fed_server_out_over_analytic": wire["fed_server_out"] / analytic["global_client_weights"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
