"""``splitfed run --processes K``: the same command as K ranks of a torch.distributed job on this machine
(what ``torchrun --standalone --nproc-per-node K -m splitfed`` does), rank 0 speaking for all."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

from .algorithms.base import check_knobs
from .config import Config
from .errors import SplitfedError
from .ranks import distributing
from .rundir import RunDir


def spawn_ranks(config: Config, argv: list[str]) -> int:
    """Start ``splitfed argv`` as ``config.processes`` ranks and wait for them; the exit status.

    Everything a rank would refuse is checked here first, so a mistake is one line, not K. If a rank dies,
    the others are stopped and the exit status says so; ``--resume`` continues from the last checkpoint.
    """
    cores = os.cpu_count() or 1
    if config.processes > cores:  # each rank computes all the time: more than the cores only queue
        raise SplitfedError(
            f"processes = {config.processes} ranks on this machine's {cores} CPU cores: start at most "
            f"{cores} here (torchrun spreads more over several machines)"
        )
    check_knobs(config)  # every algorithm exists and takes the knobs set
    distributing(config)
    if not config.resume:
        RunDir(config)  # a used --out: refused now, before any rank starts
    k = config.processes
    threads = str(config.threads or max(1, cores // k))
    with contextlib.ExitStack() as stack:
        logs = [
            stack.enter_context(tempfile.TemporaryFile()) for _ in range(1, k)
        ]  # ranks 1.. speak on failure
        procs = _start(argv, k, threads, logs)
        failed = _wait(procs)
        if not failed:
            return 0
        rank, code = failed[0]
        if code < 0:  # killed by a signal (the OOM killer, a kill -9): it could not say why itself
            print(
                f"splitfed: error: rank {rank} of {k} was killed by {signal.Signals(-code).name}; the "
                f"other ranks were stopped; continue with --out {config.out or 'DIR'} --resume",
                file=sys.stderr,
            )
            return 128 - code
        if rank != 0:
            logs[rank - 1].seek(0)
            tail = logs[rank - 1].read().decode(errors="replace").strip().splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            print(
                f"splitfed: error: rank {rank} of {k} exited with {code}; continue with --resume",
                file=sys.stderr,
            )
        return code


def _start(argv: list[str], k: int, threads: str, logs: list[IO[bytes]]) -> list[subprocess.Popen]:
    """The K ranks, rank 0 on this terminal, the others each into its log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(k):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(k),
            LOCAL_WORLD_SIZE=str(k),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS=threads,
        )
        out = None if rank == 0 else logs[rank - 1]
        procs.append(
            subprocess.Popen([sys.executable, "-m", "splitfed", *argv], env=env, stdout=out, stderr=out)
        )
    return procs


def _wait(procs: list[subprocess.Popen]) -> list[tuple[int, int]]:
    """Wait until every rank ends well or one fails, stop the rest; the failures as (rank, code)."""
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        failed = [(0, 130)]
    # A mistake every rank finds (a diverged round) ends them all within moments: rank 0's line then
    # speaks for the job, whichever rank exited first.
    grace = time.monotonic() + 5
    while procs[0].poll() is None and time.monotonic() < grace:
        time.sleep(0.1)
    if procs[0].poll() not in (None, 0):
        failed = [(0, procs[0].returncode)]
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait()
    return failed
