"""``splitfed launch --clients N``: a whole deployment on this machine, every role its own process.

It makes a private CA, a server certificate and one token per party, writes the deployment file, starts
the fed server, the main server and N clients on loopback ports (TLS, tokens: the same code paths as a
real multi-machine deployment), shows the fed server's progress, and ends with its comparison table.
"""

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..algorithms import create
from ..config import Config
from ..errors import SplitfedError
from .deploy import Deployment, check_deployable, write_config
from .security import make_credentials

log = logging.getLogger("splitfed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: each socket is held until all are chosen (closed at once, the kernel
    may hand the same port out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def role_command(
    role: str, config_file: Path, client_id: int | None = None, threads: int | None = None
) -> list[str]:
    cmd = [sys.executable, "-m", "splitfed.cli", role.replace("_", "-"), "--config", str(config_file)]
    cmd += ["--id", str(client_id)] if client_id is not None else []
    return [*cmd, "--threads", str(threads)] if threads else cmd


def prepare_deployment(config: Config, workdir: Path, hosts: tuple[str, ...] = ("localhost",)) -> Path:
    """Certificates (the servers' for ``hosts``), tokens, ports and the deployment file for ``config`` in
    ``workdir``."""
    make_credentials(workdir / "certs", config.clients, hosts=hosts)
    ports = free_ports(2)
    deploy = Deployment(
        main_server=f"localhost:{ports[0]}",
        fed_server=f"localhost:{ports[1]}",
        ca=str(workdir / "certs" / "ca.pem"),
        cert=str(workdir / "certs" / "server.pem"),
        key=str(workdir / "certs" / "server.key"),
        tokens=str(workdir / "certs" / "tokens.toml"),
        state_dir=str(workdir / "state"),
    )
    return write_config(workdir / "deploy.toml", config, deploy)


def launch(config: Config, workdir: Path, restarts: int = 0) -> Path:
    """Run ``config`` (one algorithm; its ``out`` set) as a deployment on loopback, its files in
    ``workdir``; returns its run directory (``roles.launch_run`` picks both defaults).

    A role that dies is reported and never takes the others with it; with ``restarts`` > 0 it is started
    again with the same command (at most that many times per role), as the operator of a real
    deployment would (docs/deploy.md). Launch returns once every role has ended."""
    check_deployable(config)
    # absolute: the deployment file's paths are read relative to the file, not to the current directory
    work = workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config_file = prepare_deployment(config, work)
    # N clients share this machine's cores, one thread each; the servers compute while every client
    # waits on them, so they keep the config's threads (default: all cores).
    client_threads = None if config.threads else 1
    (work / "logs").mkdir(exist_ok=True)
    log.info(
        f"launch: {config.algorithm[0]} with {config.clients} clients on loopback (TLS); files in {work}"
    )
    commands = {"fed_server": role_command("fed_server", config_file)}
    if create(config, config.algorithm[0]).talks_to_main_server:
        commands["main_server"] = role_command("main_server", config_file)
    for k in range(config.clients):
        commands[f"client_{k}"] = role_command("client", config_file, k, client_threads)
    roles = {name: _start(name, command, work / "logs") for name, command in commands.items()}
    left = dict.fromkeys(commands, restarts)
    ended: dict[str, int] = {}
    try:
        while len(ended) < len(roles):
            for name, p in roles.items():
                code = p.poll()
                if name in ended or code is None:
                    continue
                if code != 0 and left[name] > 0:
                    left[name] -= 1
                    log.warning(
                        f"launch: {name} exited with {code}; starting it again ({left[name]} restarts left)"
                    )
                    roles[name] = _start(name, commands[name], work / "logs")
                    continue
                ended[name] = code
                if code != 0:
                    log.warning(
                        f"launch: {name} exited with {code} (its log: {work / 'logs' / f'{name}.log'}); the "
                        "other roles go on (--restarts N starts a role that dies again)"
                    )
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in roles.values():
            p.terminate()
        raise
    for p in roles.values():  # the fed server's last lines (its table) shown before launch returns
        relay = getattr(p, "relay", None)
        if relay is not None:
            relay.join(timeout=5)
    failed = ", ".join(f"{name} exit {code}" for name, code in sorted(ended.items()) if code != 0)
    if failed:
        raise SplitfedError(f"the deployment failed ({failed}); logs in {work / 'logs'}")
    return Path(config.out or "")


def _start(name: str, command: list[str], logs: Path) -> subprocess.Popen:
    """A role's process, its output appended to logs/<name>.log; the fed server's progress also shown
    here (it is the deployment's)."""
    if name != "fed_server":
        with (logs / f"{name}.log").open("a") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def relay() -> None:  # the fed server's progress, to this terminal and to its log
        assert p.stdout is not None
        with (logs / f"{name}.log").open("a") as out:
            for line in p.stdout:
                out.write(line)
                out.flush()
                print(line, end="", flush=True)

    p.relay = threading.Thread(target=relay, daemon=True)  # type: ignore[attr-defined]
    p.relay.start()  # type: ignore[attr-defined]
    return p
