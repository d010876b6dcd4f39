"""The edge-time model against a real deployment on this machine: each client in a network namespace of
its own behind a shaped link (``tc tbf`` each way), its traffic to the servers through a delaying TCP
proxy (the kernel here has no netem), its compute throttled by a CPU quota (cgroup v1 ``cpu``); the
servers unshaped. Every namespace, link, qdisc, proxy and cgroup is made here and removed here; no
address outside the links' own is ever used.

    PYTHONPATH=src python3 -m benchmarks.edge_calibration [--quick]

The model's inputs are what the machine and the shaping give: the client's rate is this machine's
measured training FLOP/s for the client part (``machine_rates``: forward, backward and step timed in
this process, one thread) times the CPU quota, the server's the same for the server part, the links the
``tbf`` rates, the round trip twice the proxy's delay. Measured: the fed server's ``train_time_s`` per
round (the round's start to its last upload), the first round left out (connections warming up).
Writes benchmarks/results/edge_calibration.json; docs/performance.md has the table.
"""

import argparse
import contextlib
import dataclasses
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import torch

from splitfed import Config, run
from splitfed.algorithms import create
from splitfed.services.deploy import load, write_config
from splitfed.services.launch import prepare_deployment, role_command
from splitfed.setup import prepare

CGROUP = Path("/sys/fs/cgroup/cpu")
# tbf's bucket: a message's first BURST bytes pass at line rate when the bucket is full. Small (a few
# packets) so that the shaped link is a rate, as the model's links are; 32 kB made a 25 kB smashed-data
# message nearly free at 5 Mbit/s and the model 29 % slow at cut 2
BURST = "4kb"


def sh(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@dataclasses.dataclass
class Link:
    ns: str
    host_dev: str
    host_ip: str


def join_namespace(ns: str, host_dev: str, ns_dev: str, host_ip: str, peer_ip: str) -> None:
    """Namespace ``ns`` (made already) joined to this one by a veth pair, a /30 between the two ends."""
    sh("ip", "link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
    sh("ip", "link", "set", ns_dev, "netns", ns)
    sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_dev)
    sh("ip", "link", "set", host_dev, "up")
    sh("ip", "addr", "add", f"{peer_ip}/30", "dev", ns_dev, ns=ns)
    sh("ip", "link", "set", ns_dev, "up", ns=ns)
    sh("ip", "link", "set", "lo", "up", ns=ns)


@contextlib.contextmanager
def shaped_links(clients: int, up_mbit: float, down_mbit: float) -> Iterator[list[Link]]:
    """One namespace per client, joined to this one by a veth pair capped at the rates (tbf on each
    end's egress: the client's end is its uplink, this end its downlink)."""
    tag = f"sfc{random.randrange(16**4):04x}"
    links: list[Link] = []
    try:
        for k in range(clients):
            ns, host_dev, ns_dev = f"{tag}{k}", f"{tag}{k}h", f"{tag}{k}n"
            host_ip, peer_ip = f"10.78.{k}.1", f"10.78.{k}.2"
            sh("ip", "netns", "add", ns)
            links.append(Link(ns, host_dev, host_ip))
            join_namespace(ns, host_dev, ns_dev, host_ip, peer_ip)
            for dev, rate, where in ((host_dev, down_mbit, None), (ns_dev, up_mbit, ns)):
                cap = ["root", "tbf", "rate", f"{rate}mbit", "burst", BURST, "latency", "5s"]
                sh("tc", "qdisc", "add", "dev", dev, *cap, ns=where)
        yield links
    finally:
        for link in links:
            subprocess.run(["ip", "netns", "del", link.ns], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", link.host_dev], capture_output=True, timeout=30)


class DelayingProxy:
    """A TCP proxy that holds each chunk ``delay_s`` (± a seeded ``jitter_s``) before passing it on, one
    way's latency; now and then (1 % of chunks) it stalls a direction ``stall_s`` more, as netem would."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        delay_s: float,
        jitter_s: float = 0.0,
        stall_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.target, self.delay_s, self.jitter_s, self.stall_s = target, delay_s, jitter_s, stall_s
        self.rng = random.Random(seed)
        self.stalls = 0
        self.sock = socket.create_server(listen)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for a, b in ((client, server), (server, client)):
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _wait(self) -> float:
        wait = self.delay_s + (self.rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0)
        if self.stall_s and self.rng.random() < 0.01:
            self.stalls += 1
            wait += self.stall_s
        return max(0.0, wait)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                if wait := self._wait():
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def cpu_quota(name: str, share: float) -> Iterator[Path | None]:
    """A cgroup whose processes get ``share`` of one core (None: no quota, or no cgroup v1 cpu here)."""
    if share >= 1.0 or not (CGROUP / "cpu.cfs_period_us").exists():
        yield None
        return
    group = CGROUP / name
    group.mkdir()
    try:
        period = 10_000  # 10 ms: a short period spreads the quota evenly over a step of a few ms
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(share * period)))
        yield group
    finally:
        for _ in range(50):  # the group empties as its processes end
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.1)


def machine_rates(config: Config) -> tuple[float, float]:
    """This machine's training FLOP/s, one thread: what a client trains (its part; the whole model where
    it trains alone, as in FedAvg) at batch b, the server part at the batch it steps on (N·b in lockstep,
    b otherwise); forward, backward and an SGD step, best of 5."""
    setup = prepare(config.replace(out=None))
    torch.set_num_threads(1)
    lockstep = config.algorithm[0] == "minibatch_sfl"
    alone = not create(config, config.algorithm[0]).talks_to_main_server
    client, client_flops = setup.client_module, setup.flops_per_sample[0]
    if alone:
        client, client_flops = (
            torch.nn.Sequential(setup.client_module, setup.server_module),
            sum(setup.flops_per_sample),
        )
    rates = []
    for module, per_sample, batch, first in (
        (client, client_flops, config.batch_size, True),
        (
            setup.server_module,
            setup.flops_per_sample[1],
            config.batch_size * (config.clients if lockstep else 1),
            False,
        ),
    ):
        x = setup.data.train_x[:batch].to(torch.float32)
        if not first:
            with torch.no_grad():
                x = setup.client_module(x)
        opt = torch.optim.SGD(module.parameters(), lr=0.0)
        best = float("inf")
        for _ in range(6):
            t0 = time.perf_counter()
            inp = x.detach().requires_grad_(not first)
            out = module(inp)
            loss = (
                out.float().square().mean()
                if first
                else torch.nn.functional.cross_entropy(out, setup.data.train_y[:batch])
            )
            loss.backward()
            opt.step()
            opt.zero_grad()
            best = min(best, time.perf_counter() - t0)
        rates.append(per_sample * batch / best)
    return rates[0], rates[1]


def deployment_files(
    tmp: Path, config: Config, links: list[Link], delay_s: float
) -> tuple[Path, list[Path], list]:
    """The servers' file (listening on every address) and one file per client dialling the servers at its
    link's host end, through a delaying proxy there."""
    hosts = ("localhost", *(link.host_ip for link in links))
    servers = prepare_deployment(config.replace(out=str(tmp / "run")), tmp, hosts)
    config, deploy = load(servers)
    main, fed = (int(address.rsplit(":", 1)[1]) for address in (deploy.main_server, deploy.fed_server))
    deploy = dataclasses.replace(
        deploy, main_server_listen=f"0.0.0.0:{main}", fed_server_listen=f"0.0.0.0:{fed}"
    )
    write_config(servers, config, deploy)
    files, proxies = [], []
    for k, link in enumerate(links):
        ends = {}
        for name, port in (("main_server", main), ("fed_server", fed)):
            proxy = DelayingProxy((link.host_ip, 0), ("127.0.0.1", port), delay_s)
            proxies.append(proxy)
            ends[name] = f"{link.host_ip}:{proxy.port}"
        files.append(
            write_config(
                tmp / f"client_{k}.toml",
                config,
                dataclasses.replace(deploy, **ends),
            )
        )
    return servers, files, proxies


def measure(
    tmp: Path, config: Config, up_mbit: float, down_mbit: float, quota: float, delay_s: float
) -> list[float]:
    """The deployment's train_time_s per round (the first left out), in a fresh ``tmp``."""
    shutil.rmtree(tmp, ignore_errors=True)  # a deployment's state resumes: this one starts afresh
    tmp.mkdir(parents=True)
    with shaped_links(config.clients, up_mbit, down_mbit) as links, contextlib.ExitStack() as stack:
        servers, files, proxies = deployment_files(tmp, config, links, delay_s)
        for proxy in proxies:
            stack.callback(proxy.close)
        logs = tmp / "logs"
        logs.mkdir(exist_ok=True)
        procs = []
        talks = create(config, config.algorithm[0]).talks_to_main_server  # FedAvg's clients never do
        for role in ("fed_server", "main_server") if talks else ("fed_server",):
            out = (logs / f"{role}.log").open("w")
            procs.append(subprocess.Popen(role_command(role, servers), stdout=out, stderr=out))
        time.sleep(3.0)  # both servers listen before the clients dial
        for k, (link, file) in enumerate(zip(links, files, strict=True)):
            group = stack.enter_context(cpu_quota(f"{link.ns}cpu", quota))
            cmd = ["ip", "netns", "exec", link.ns, *role_command("client", file, k, threads=1)]
            if group is not None:  # the client joins its cgroup before it starts: sh writes its own pid
                cmd = ["sh", "-c", f'echo $$ > {group}/tasks && exec "$@"', "sh", *cmd]
            out = (logs / f"client_{k}.log").open("w")
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=out))
        try:
            codes = [p.wait(timeout=900) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes):
            raise RuntimeError(f"a role failed ({codes}); see {logs}")
    records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["train_time_s"] for r in records[1:]]


def predict(
    tmp: Path, config: Config, up_mbit: float, down_mbit: float, quota: float, delay_s: float
) -> tuple[float, dict]:
    """The model's round time for the same round, on this machine's calibrated rates and the shaping."""
    client_rate, server_rate = machine_rates(config)
    table = {
        "client_flops": client_rate * quota,
        "client_up_bps": up_mbit * 1e6,
        "client_down_bps": down_mbit * 1e6,
        "client_rtt_s": 2 * delay_s,
        "server_flops": server_rate,
    }
    shutil.rmtree(tmp / "sim", ignore_errors=True)
    result = run(config.replace(profile=table, out=str(tmp / "sim"), figures=False, rounds=2))
    return result.history[-1]["sim_round_s"], table


CASES = [  # (algorithm, cut, uplink/downlink Mbit/s, CPU quota, one-way delay s)
    (alg, cut, rate, 0.5, 0.005)
    for alg in ("minibatch_sfl", "sfl_v2", "fedavg")
    for cut in (1, 2)
    for rate in (20.0, 5.0)
]


def base_config(algorithm: str, cut: int, quick: bool) -> Config:
    return Config(
        algorithm=(algorithm,),
        dataset="synthetic",
        synthetic={"shape": (1, 28, 28), "samples": 600},
        model="cnn4",
        cut_layer=cut,
        clients=2,
        batch_size=16,
        local_iters=4 if quick else 10,
        rounds=2 if quick else 4,
        divergence={"every": 0},
        eval_every=1000,  # the last round only: the fed server's evaluation is not training time
        threads=1,
        device="cpu",
        figures=False,
    )


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: the links and cgroups still go
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one case, two short rounds: try the harness")
    p.add_argument("--work", default="/tmp/splitfed-calibration")
    p.add_argument("--algorithms", help="comma-separated: rerun these cases, keep the others' results")
    args = p.parse_args()
    out = Path("benchmarks/results/edge_calibration.json")
    cases = CASES[:1] if args.quick else CASES
    rows = []
    if args.algorithms:
        cases = [c for c in cases if c[0] in args.algorithms.split(",")]
        rows = [r for r in json.loads(out.read_text())["cases"] if r["algorithm"] not in args.algorithms]
    for alg, cut, rate, quota, delay in cases:
        config = base_config(alg, cut, args.quick)
        tmp = Path(args.work) / f"{alg}-cut{cut}-{rate:g}mbit"
        measured = measure(tmp / "deploy", config, rate, rate, quota, delay)
        predicted, table = predict(tmp, config, rate, rate, quota, delay)
        row = {"algorithm": alg, "cut": cut, "mbit": rate, "quota": quota, "delay_s": delay}
        row |= {
            "measured_s": median(measured),
            "measured_all": measured,
            "predicted_s": predicted,
            "profile": table,
        }
        row["residual"] = (predicted - row["measured_s"]) / row["measured_s"]
        rows.append(row)
        measured_s, residual = row["measured_s"], row["residual"]
        print(
            f"{alg:<14} cut {cut}  {rate:>4g} Mbit/s  measured {measured_s:7.2f} s  "
            f"predicted {predicted:7.2f} s  {residual:+.1%}",
            flush=True,
        )
    rows.sort(key=lambda r: [c[:3] for c in CASES].index((r["algorithm"], r["cut"], r["mbit"])))
    out.write_text(json.dumps({"torch": torch.__version__, "cases": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
