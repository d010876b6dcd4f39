"""Where the roles run and how they talk: the ``[deploy]`` table of a deployment's config file.

One TOML file serves every role: the experiment's config fields at top level (the same as ``splitfed
run``) and a ``[deploy]`` table; relative paths are relative to the file. See docs/deploy.md.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..algorithms import create
from ..config import Config, dump_toml, read_toml
from ..engine.context import UNION
from ..errors import SplitfedError
from ..typed import from_table


@dataclass(frozen=True)
class Deployment:
    main_server: str = "localhost:50051"  # host:port the main server listens on and clients dial
    fed_server: str = "localhost:50052"  # host:port of the fed server
    main_server_listen: str = ""  # where the main server binds, e.g. 0.0.0.0:50051 (default: main_server)
    fed_server_listen: str = ""  # where the fed server binds (default: fed_server)
    ca: str = "certs/ca.pem"  # CA certificate every party trusts
    cert: str = "certs/server.pem"  # the servers' certificate (servers only)
    key: str = "certs/server.key"  # its private key (servers only)
    tokens: str = "certs/tokens.toml"  # token digests per identity (servers only)
    token: str = ""  # this party's own token file (default: certs/<identity>.token)
    state_dir: str = "state"  # where each server checkpoints every round
    straggler_policy: str = "wait"  # wait: wait for every client; drop: go on without late ones
    iteration_timeout_s: float = 30.0  # main server, policy drop: how long an iteration waits
    round_timeout_s: float = 120.0  # fed server, policy drop: how long a round's uploads are awaited
    retry_s: float = 120.0  # how long a party keeps retrying an unreachable server
    give_up_s: float = 1800.0  # a server that sees nothing move this long stops (state saved; restart it)
    keepalive_s: float = 20.0  # connections are pinged this often; one silent this long again is dead
    max_frame_mb: float = 4.0  # the largest gRPC message accepted

    def __post_init__(self) -> None:
        if self.straggler_policy not in ("wait", "drop"):
            raise SplitfedError(f"straggler_policy must be wait or drop, got {self.straggler_policy!r}")
        for name in (
            "iteration_timeout_s", "round_timeout_s", "retry_s", "give_up_s", "keepalive_s", "max_frame_mb"
        ):  # fmt: skip
            if not getattr(self, name) > 0:
                raise SplitfedError(f"deploy.{name} must be positive, got {getattr(self, name)}")

    def token_file(self, identity: str) -> str:
        return self.token or str(Path(self.ca).parent / f"{identity.replace(':', '_')}.token")


PATH_FIELDS = ("ca", "cert", "key", "tokens", "token", "state_dir")


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Config, Deployment]:
    """The experiment Config and the Deployment of a deployment config file."""
    raw = read_toml(path)
    table = raw.pop("deploy", {})
    deploy = from_table(Deployment, table, str(path), kind="[deploy]", prefix="deploy.")
    base = Path(path).parent  # a path in the file is relative to the file; so is a default one
    default = Deployment()
    paths = {
        key: str(base / (getattr(deploy, key) or getattr(default, key)))
        for key in PATH_FIELDS
        if getattr(deploy, key) or key != "token"  # no token file named: each party's default one
    }
    config = Config.from_dict(raw, source=str(path))
    if overrides:
        config = config.replace(**overrides)
    if config.out is None:  # the fed server's run directory: fixed, so that a restart finds it
        config = config.replace(out=str(base / "run"))
    check_deployable(config)
    return config, dataclasses.replace(deploy, **paths)


def check_deployable(config: Config) -> None:
    """One algorithm, whose definition has clients to deploy; every client trains every round."""
    if len(config.algorithm) != 1:
        raise SplitfedError(
            f"a deployment runs one algorithm; the config names {', '.join(config.algorithm)}"
        )
    algo = create(config, config.algorithm[0])
    if UNION in algo.participants([0]):
        raise SplitfedError(
            f"{algo.name} trains on the union of the clients' data in one place: there is nothing to deploy"
        )
    if config.clients_per_round is not None:
        raise SplitfedError("a deployment trains every client every round: remove clients_per_round")


def write_config(path: str | Path, config: Config, deploy: Deployment) -> Path:
    """A deployment config file for ``config`` and ``deploy`` (paths written as given)."""
    text = config.to_toml(without=("resume",)) + "\n[deploy]\n" + dump_toml(dataclasses.asdict(deploy))
    Path(path).write_text(text)
    return Path(path)
