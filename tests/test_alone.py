"""The suite's lock (conftest.room): a test marked ``alone`` never runs beside another, and is not starved
by tests that keep arriving; the others run side by side."""

import fcntl
import threading
import time
from pathlib import Path

from .conftest import room


def test_tests_share_the_room_and_one_that_must_be_alone_waits_for_them_and_holds_back_the_next(tmp_path):
    events: list[str] = []
    first_inside, release_first = threading.Event(), threading.Event()

    def shared(name: str, hold: threading.Event | None = None) -> None:
        with room(tmp_path, alone=False):
            events.append(f"{name} in")
            if hold is not None:
                first_inside.set()
                hold.wait(10)
            events.append(f"{name} out")

    def alone() -> None:
        with room(tmp_path, alone=True):
            events.append("alone in")
            time.sleep(0.2)
            events.append("alone out")

    a = threading.Thread(target=shared, args=("a",), kwargs={"hold": release_first})
    a.start()
    first_inside.wait(10)
    b = threading.Thread(target=shared, args=("b",))  # shares the room with a
    b.start()
    b.join(10)
    lone = threading.Thread(target=alone)
    lone.start()
    wait_until_held(tmp_path / "turnstile.lock")  # it waits for a, keeping the turnstile
    c = threading.Thread(target=shared, args=("c",))  # arrives after: waits for the lone test
    c.start()
    time.sleep(0.3)
    assert events == ["a in", "b in", "b out"]
    release_first.set()
    for t in (a, lone, c):
        t.join(10)
    assert events == ["a in", "b in", "b out", "a out", "alone in", "alone out", "c in", "c out"]


def wait_until_held(lock: Path, timeout: float = 10.0) -> None:
    """Until another holder has ``lock`` (a non-blocking try of it fails)."""
    deadline = time.monotonic() + timeout
    with open(lock, "a") as f:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(f, fcntl.LOCK_UN)
            time.sleep(0.01)
    raise AssertionError(f"nobody took {lock.name} in {timeout} s")
