"""The schedules that order a round's (client, iteration) pairs into *slots*, the sets of client batches
the main server handles together."""

from collections.abc import Callable

from ..choices import SFLV2_SCHEDULES
from ..errors import SplitfedError

# schedules
LOCKSTEP = "lockstep"  # every iteration, every participant sends one batch; one slot holds them all
# client_sequential: participants in a random order, each doing all its iterations;
# interleaved: every iteration, the participants in a random order, one batch each (SFL-V2's choice list)
CLIENT_SEQUENTIAL, INTERLEAVED = SFLV2_SCHEDULES

Slot = list[tuple[int, int]]  # (participant, iteration t) pairs handled together by the main server


def slots(
    schedule: str, participants: list[int], iterations: int, order: Callable[..., list[int]]
) -> list[list[tuple[int, int]]]:
    """A round's slots in the order the main server handles them. ``order(participants, *keys)`` draws a
    random order of the participants for a round (keys: ()) or for one of its iterations (keys: (t,))."""
    if schedule == LOCKSTEP:
        return [[(n, t) for n in participants] for t in range(iterations)]
    if schedule == CLIENT_SEQUENTIAL:
        return [[(n, t)] for n in order(participants) for t in range(iterations)]
    if schedule == INTERLEAVED:
        return [[(n, t)] for t in range(iterations) for n in order(participants, t)]
    raise SplitfedError(
        f"unknown schedule {schedule!r}; choose {LOCKSTEP}, {CLIENT_SEQUENTIAL} or {INTERLEAVED}"
    )
