"""``splitfed launch --clients N``: a whole deployment on this machine, every role its own process.

It makes a private CA, a server certificate and one token per party, writes the deployment file, starts
the fed server, the main server and N clients on loopback ports (TLS, tokens: the same code paths as a
real multi-machine deployment), shows the fed server's progress, and ends with its comparison table.
"""

import datetime
import logging
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..algorithms import create
from ..config import Config
from ..errors import SplitfedError
from .deploy import Deployment, check_deployable, write_config
from .security import make_credentials

log = logging.getLogger("splitfed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def role_command(
    role: str, config_file: Path, client_id: int | None = None, threads: int | None = None
) -> list[str]:
    cmd = [sys.executable, "-m", "splitfed.cli", role.replace("_", "-"), "--config", str(config_file)]
    cmd += ["--id", str(client_id)] if client_id is not None else []
    return [*cmd, "--threads", str(threads)] if threads else cmd


def prepare_deployment(config: Config, workdir: Path) -> Path:
    """Certificates, tokens, ports and the deployment file for ``config`` in ``workdir``."""
    make_credentials(workdir / "certs", config.clients)
    deploy = Deployment(
        main_server=f"localhost:{free_port()}",
        fed_server=f"localhost:{free_port()}",
        ca=str(workdir / "certs" / "ca.pem"),
        cert=str(workdir / "certs" / "server.pem"),
        key=str(workdir / "certs" / "server.key"),
        tokens=str(workdir / "certs" / "tokens.toml"),
        state_dir=str(workdir / "state"),
    )
    return write_config(workdir / "deploy.toml", config, deploy)


def launch(config: Config, workdir: str | Path | None = None) -> Path:
    """Run ``config`` (one algorithm) as a deployment on loopback; returns its run directory."""
    check_deployable(config)
    # absolute: the deployment file's paths are read relative to the file, not to the current directory
    work = (Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="splitfed-launch-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if config.out is None:
        config = config.replace(out=f"runs/launch-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    config_file = prepare_deployment(config, work)
    # N clients share this machine's cores, one thread each; the servers compute while every client
    # waits on them, so they keep the config's threads (default: all cores).
    client_threads = None if config.threads else 1
    (work / "logs").mkdir(exist_ok=True)
    log.info(
        f"launch: {config.algorithm[0]} with {config.clients} clients on loopback (TLS); files in {work}"
    )
    fed = subprocess.Popen(
        role_command("fed_server", config_file), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    others = (
        [
            subprocess.Popen(
                role_command("main_server", config_file),
                stdout=(work / "logs" / "main_server.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        ]
        if create(config, config.algorithm[0]).talks_to_main_server
        else []
    )
    clients = [
        subprocess.Popen(
            role_command("client", config_file, k, client_threads),
            stdout=(work / "logs" / f"client_{k}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for k in range(config.clients)
    ]
    fed_log = (work / "logs" / "fed_server.log").open("w")

    def relay() -> None:  # the fed server's progress, to this terminal and to its log
        assert fed.stdout is not None
        for line in fed.stdout:
            fed_log.write(line)
            fed_log.flush()
            print(line, end="", flush=True)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        status = fed.wait()
        reader.join(timeout=5)
        for p in clients + others:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.terminate()
    except KeyboardInterrupt:
        for p in [fed, *clients, *others]:
            p.terminate()
        raise
    failed = [i for i, p in enumerate(clients) if p.returncode != 0]
    if status != 0 or failed:
        raise SplitfedError(
            f"the deployment failed (fed server exit {status}, clients {failed} failed); "
            f"logs in {work / 'logs'}"
        )
    return Path(config.out or "")
