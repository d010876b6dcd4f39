import logging

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
