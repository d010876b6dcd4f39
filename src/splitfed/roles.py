"""The networked roles as commands: ``splitfed main-server``, ``fed-server``, ``client --id K``.

Each builds the experiment's setup from the deployment file (the same partition, initial weights and
sample streams as ``splitfed run``) and starts its service. The fed server's run directory is written here
as ``splitfed run`` writes its own: it is created on the first start and continued on every restart (a
deployment's run directory is fixed by its file, so "restart with the same command" resumes it).
"""

import logging
import tempfile
from pathlib import Path
from typing import Any

from .config import Config
from .progress import Progress, TensorBoard
from .report import loss_name, run_title
from .rundir import RunDir
from .services import check_generated
from .setup import prepare

log = logging.getLogger("splitfed")


def start_role(role: str, config_file: str, client_id: int | None = None, threads: int | None = None) -> None:
    """Run ``role`` ("main_server", "fed_server" or "client") as the deployment file describes.

    ``threads`` overrides the config's CPU threads for this process only (one machine's cores).
    """
    check_generated()
    from .services.deploy import load

    cfg, deploy = load(config_file, {"threads": threads} if threads is not None else None)
    if role == "fed_server":
        from .executors.parts import halves
        from .services.fed_server import FedServer, run_fed_server

        resume = (Path(cfg.out or "") / "config.toml").is_file()  # a restart, whatever round it died in
        setup = prepare(cfg.replace(resume=resume))
        run_dir = RunDir(setup.cfg)
        run_dir.start(setup)
        progress = Progress(setup.cfg)
        tensorboard = TensorBoard(run_dir.path / "tensorboard")

        def on_round(record: dict[str, Any]) -> None:
            run_dir.append_metrics(record)
            tensorboard.add(record)
            progress(record)
            if record["dropped_clients"]:
                log.info(f"  round {record['round']} went on without clients {record['dropped_clients']}")

        service = FedServer(setup, deploy, on_round, restarted=resume)
        run_dir.write_metrics(service.history)  # what its state file holds, whatever was appended after
        try:
            history = run_fed_server(service)
        finally:
            tensorboard.close()
        # the trained model, as `splitfed run` leaves it (`splitfed export` reads it)
        run_dir.save_model(service.algo.name, setup.assemble(*halves(service.algo, service.model)))
        title = run_title(setup.cfg.to_dict()) + ", deployed"
        run_dir.finish(history, [service.algo.name], title, loss_name(setup.loss))
    elif role == "main_server":
        from .services.main_server import run_main_server

        run_main_server(prepare(cfg), deploy)
    else:
        from .errors import SplitfedError

        if client_id is None:
            raise SplitfedError("a client needs --id K")
        from .services.client import Client

        Client(prepare(cfg), deploy, client_id).run()


def launch_run(config: Config, workdir: str | None = None, restarts: int = 0) -> Path:
    """``splitfed launch``: ``config`` deployed on this machine, its run directory as ``splitfed run``
    writes it. Several algorithms run one deployment after another (each in its own folder of the
    workdir, with its fed server's run directory there), and the run directory then holds all of them:
    config, metrics, table, figures and models."""
    import datetime
    import shutil

    from .report import read_metrics
    from .services.deploy import check_deployable
    from .services.launch import launch

    for name in config.algorithm:  # every algorithm checked before the first deploys
        check_deployable(config.replace(algorithm=(name,)))
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="splitfed-launch-"))
    if config.out is None:
        config = config.replace(out=f"runs/launch-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    RunDir(config)  # a used --out is refused now (a new deployment would take it for its own restart)
    if len(config.algorithm) == 1:
        return launch(config, work, restarts)
    out = Path(config.out or "")
    for name in config.algorithm:
        launch(config.replace(algorithm=(name,), out=str(work / name / "run")), work / name, restarts)
    setup = prepare(config)
    run_dir = RunDir(setup.cfg)
    run_dir.start(setup)
    history = []
    for name in config.algorithm:
        deployed = work / name / "run"
        history += read_metrics(deployed / "metrics.jsonl", [name])
        run_dir.model_file(name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deployed / "models" / f"{name}.pt", run_dir.model_file(name))
    title = run_title(setup.cfg.to_dict()) + ", deployed"
    run_dir.finish(history, list(config.algorithm), title, loss_name(setup.loss))
    return out
