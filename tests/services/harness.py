"""Deployments for the tests: tiny configs, certificates, role processes, and in-process servers."""

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from splitfed import Config
from splitfed.engine.checkpoint import read_checkpoint
from splitfed.engine.side import State
from splitfed.executors import train
from splitfed.services.deploy import Deployment, load, write_config
from splitfed.services.launch import prepare_deployment, role_command
from splitfed.setup import prepare

from ..conftest import small_config


def tiny_config(tmp_path: Path, **changes) -> Config:
    """A deployment that takes seconds: the tests' small config, 3 clients, one thread per process."""
    base = {"clients": 3, "rounds": 3, "local_iters": 3, "synthetic.samples": 240, "divergence.every": 0}
    return small_config(
        **(base | {"threads": 1, "algorithm": ("minibatch_sfl",), "out": str(tmp_path / "run")} | changes)
    )


def deployment(tmp_path: Path, config: Config, **deploy_changes) -> tuple[Path, Config, Deployment]:
    """Certificates, tokens, free ports and the deployment file (with ``deploy_changes``)."""
    config_file = prepare_deployment(config, tmp_path)
    config, deploy = load(config_file)
    if deploy_changes:
        deploy = dataclasses.replace(deploy, **deploy_changes)
        write_config(config_file, config, deploy)
    return config_file, config, deploy


class Roles:
    """The processes of one deployment; each role's output goes to logs/<role>.log.

    With ``servers_first``, the clients start once both servers listen: on a machine of few cores they
    would otherwise slow the servers' start, and gRPC's reconnection backoff then delays them further.
    """

    def __init__(self, config_file: Path, clients: int, servers_first: bool = False) -> None:
        from splitfed.algorithms import create

        self.config_file = config_file
        self.logs = config_file.parent / "logs"
        self.logs.mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.start("fed_server")
        config, _ = load(config_file)
        servers = ["fed_server"]
        if create(config, config.algorithm[0]).talks_to_main_server:
            self.start("main_server")
            servers.append("main_server")
        if servers_first:
            wait_for(lambda: all("listening on" in self.log(name) for name in servers), timeout=120)
        for k in range(clients):
            self.start("client", k)

    def restart(self, name: str) -> None:
        """Start the process called ``name`` (a role, or client_K) again, with the same command."""
        if name.startswith("client_"):
            self.start("client", int(name.removeprefix("client_")))
        else:
            self.start(name)

    def start(self, role: str, k: int | None = None) -> None:
        name = role if k is None else f"client_{k}"
        log = (self.logs / f"{name}.log").open("a")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs[name] = subprocess.Popen(
            role_command(role, self.config_file, k), stdout=log, stderr=log, env=env
        )

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def wait(self, timeout: float = 240) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        try:
            for name, p in self.procs.items():
                try:
                    codes[name] = p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    codes[name] = None  # still running: ended below, and the caller sees None
        finally:
            for p in self.procs.values():
                if p.poll() is None:
                    p.kill()
        return codes

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()


def wait_for(predicate, timeout: float = 120.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(every)


def metrics_lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def deployed_model(deploy: Deployment) -> tuple[State, State]:
    saved = read_checkpoint(Path(deploy.state_dir) / "fed_server.pt", "the deployment's result is gone")
    return halves_of(saved)


def halves_of(saved: dict) -> tuple[State, State]:
    """(w_c, w_s) of a fed server's state file: its model's parts cut once, as evaluation sees them."""
    from splitfed.algorithms import create
    from splitfed.executors.parts import halves

    algo = create(Config.from_dict(saved["config"]), saved["config"]["algorithm"][0])
    return halves(algo, {name: State.from_dict(state) for name, state in saved["model"].items()})


def simulated_model(config: Config) -> tuple[State, State]:
    w_c, w_s, _ = simulated_run(config)
    return w_c, w_s


def simulated_run(config: Config) -> tuple[State, State, list[dict]]:
    """The uninterrupted simulation of ``config``: its final model and its history (one record a round)."""
    setup = prepare(config.replace(out=None))
    algo, history, _ = train(config.algorithm[0], setup)
    return algo.w_c, algo.w_s, history


def assert_states_close(a: State, b: State, atol: float = 1e-5) -> None:
    for x, y in zip(a.to_dict().values(), b.to_dict().values(), strict=True):
        torch.testing.assert_close(x.cpu(), y.cpu(), rtol=1e-4, atol=atol)


def run_in_threads(config_file: Path, timeout: float = 120.0) -> tuple[list, Deployment]:
    """The whole deployment in this process, each role in a thread (real gRPC and TLS on loopback), so an
    algorithm registered only in the tests can run; returns the fed server's history."""
    import threading

    from splitfed.algorithms import create
    from splitfed.services.client import Client
    from splitfed.services.fed_server import FedServer, run_fed_server
    from splitfed.services.main_server import run_main_server

    config, deploy = load(config_file)
    # A role left waiting after a failure must not outlive the test by its default half hour: the
    # interpreter joins gRPC's worker threads at exit, and a later test's fork meanwhile can abort
    # inside gRPC.
    deploy = dataclasses.replace(deploy, give_up_s=min(deploy.give_up_s, timeout))
    fed = FedServer(prepare(config), deploy)
    threads = [threading.Thread(target=run_fed_server, args=(fed,), daemon=True)]
    if create(config, config.algorithm[0]).talks_to_main_server:
        threads.append(threading.Thread(target=run_main_server, args=(prepare(config), deploy), daemon=True))
    threads += [
        threading.Thread(target=Client(prepare(config), deploy, k).run, daemon=True)
        for k in range(config.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "the deployment did not finish"
    return fed.history, deploy
