"""splitfed's roles as network services: the main server, the fed server and the clients (gRPC, TLS).

``start_role`` runs one role from a deployment config file; ``launch`` starts a whole deployment on
loopback. The math is the simulation's: the same Side, sampler, main_server_step and weighted_average.
"""

import logging
from pathlib import Path

from ..errors import SplitfedError

log = logging.getLogger("splitfed")


def _generated() -> None:
    try:
        from . import splitfed_pb2, splitfed_pb2_grpc  # noqa: F401
    except ImportError as e:
        raise SplitfedError(
            "the gRPC code is generated at install time and is missing: reinstall splitfed "
            f"(pip install -c constraints.txt -e .) ({e})"
        ) from None


def start_role(role: str, config_file: str, client_id: int | None = None, threads: int | None = None) -> None:
    """Run ``role`` ("main_server", "fed_server" or "client") as the deployment file describes.

    ``threads`` overrides the config's CPU threads for this process only (one machine's cores).
    """
    _generated()
    from ..runner import RunDir, prepare
    from .deploy import load

    cfg, deploy = load(config_file, {"threads": threads} if threads is not None else None)
    if role == "fed_server":
        resume = (Path(deploy.state_dir) / "fed_server.pt").exists()
        setup = prepare(cfg.replace(resume=resume))
        run_dir = RunDir(setup.cfg)
        from ..data import class_histogram

        run_dir.start(setup, class_histogram(setup.data.train_y, setup.parts, setup.data.num_classes).cpu())
        from .fed_server import run_fed_server

        run_fed_server(setup, deploy, run_dir)
    elif role == "main_server":
        from .main_server import run_main_server

        run_main_server(prepare(cfg), deploy)
    else:
        if client_id is None:
            raise SplitfedError("a client needs --id K")
        from .client import Client

        Client(prepare(cfg), deploy, client_id).run()
