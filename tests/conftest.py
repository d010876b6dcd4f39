import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from splitfed import Config


def small_config(**changes) -> Config:
    """A run that takes well under a second per algorithm: synthetic 8x8 data, 4 clients, 2 rounds."""
    base = dict(
        dataset="synthetic",
        synthetic={"shape": (1, 8, 8), "samples": 400},
        model="digits_cnn",
        clients=4,
        rounds=2,
        local_iters=2,
        batch_size=8,
        divergence={"samples": 40, "every": 1},
        device="cpu",
        figures=False,  # drawing 8 files costs more than the tiny run; the report tests draw them
    )
    return Config(**base).replace(**changes)  # a change by a section key's path or flat name: on top


def pytest_configure(config):
    # pytest-xdist's workers share the cores: a worker's own torch threads beyond its share only contend
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        # and the processes a test starts (runs, sweeps' workers, deployments' roles) take the same share:
        # with torch's default, a thread per core, a run beside another test waited on its own threads
        # (a small run beside one busy core: 8.9 s on one thread, 25.6 s on two)
        os.environ["OMP_NUM_THREADS"] = str(share)


@contextlib.contextmanager
def room(shared: Path, alone: bool) -> Iterator[None]:
    """A reader-writer lock of two files in ``shared``, across processes: a test inside holds the room shared,
    or alone (no other test inside). Everyone passes the turnstile on the way in and holds it until inside;
    so one that waits to be alone holds back the tests that come after it, and its wait ends once those
    already inside are done (without the turnstile, tests arriving one after another could keep it out)."""
    with open(shared / "turnstile.lock", "a") as turnstile, open(shared / "room.lock", "a") as inside:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(inside, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(inside, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _alone_or_side_by_side(request, tmp_path_factory):
    """Under pytest-xdist, a test marked ``alone`` (it measures time, so a test beside it would skew what
    it measures) runs with no other test running; the others run side by side."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # xdist gives each worker a folder in one root
    with room(shared, alone=request.node.get_closest_marker("alone") is not None):
        yield


@pytest.fixture(autouse=True)
def _quiet_logs():
    """Library calls log progress at INFO; keep test output to what fails (the CLI sets its own level)."""
    log = logging.getLogger("splitfed")
    log.setLevel(logging.WARNING)
    yield
    log.setLevel(logging.WARNING)


@pytest.fixture
def one_thread():
    """For modules of tiny runs: one thread is faster, and much faster on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
