"""experiments/edge/time_tables.py, the study of docs/results.md §5, on a made-up study small enough to
work out by hand: a trained route sums its own rounds' simulated times; a route whose accuracy comes from
an identity (SFL-V1 from FedAvg, SL off cut 2 from SL at cut 2) takes that accuracy and its own time."""

import math

from .test_results_doc import script

tables = script("experiments/edge/time_tables.py")

SLOW, FAST = "1 Mbit/s", "6.3 Mbit/s"


def timed(*seconds: float) -> list[dict[str, float]]:
    return [{SLOW: 10 * s, FAST: s} for s in seconds]


def made_up() -> "tables.Study":
    curves = {
        ("fedavg", None, 10, 0.0): [0.5, 0.75, 0.85],
        ("minibatch_sfl", 2, 10, 0.0): [0.72, 0.81],
        ("sl", 2, 10, 0.0): [0.6, 0.79],
    }
    rounds = {
        ("fedavg", None, 10, 0.0): timed(100, 100, 100),
        ("minibatch_sfl", 2, 10, 0.0): timed(30, 36),
        ("sl", 2, 10, 0.0): timed(50, 52),
        ("sfl_v1", 3, 10, 0.0): timed(72),  # a one-round timing run
        ("sl", 1, 10, 0.0): timed(90),
    }
    return tables.Study(curves, rounds, [SLOW, FAST])


def test_a_trained_route_sums_its_own_rounds_to_the_first_that_reaches_the_target():
    s = made_up()
    assert s.rounds_to("minibatch_sfl", 2, 10, 0.0, 0.8) == 2
    assert s.hours_to("minibatch_sfl", 2, 10, 0.0, 0.8, FAST) == (30 + 36) / 3600
    assert s.hours_to("minibatch_sfl", 2, 10, 0.0, 0.7, SLOW) == 300 / 3600
    assert s.hours_to("fedavg", 3, 10, 0.0, 0.8, FAST) == 300 / 3600  # FedAvg has no cut


def test_an_identity_gives_the_accuracy_and_the_route_its_own_time():
    s = made_up()
    assert s.curve("sfl_v1", 3, 10, 0.0) == s.curve("fedavg", 2, 10, 0.0)
    assert s.hours_to("sfl_v1", 3, 10, 0.0, 0.8, FAST) == 3 * 72 / 3600
    assert s.curve("sl", 1, 10, 0.0) == s.curve("sl", 2, 10, 0.0)
    assert s.hours_to("sl", 1, 10, 0.6, 0.5, FAST) is None  # no run at p = 0.6


def test_a_target_not_reached_is_a_lower_bound_and_a_route_not_run_is_blank():
    s = made_up()
    assert s.hours_to("sl", 2, 10, 0.0, 0.8, FAST) == math.inf
    assert tables.fmt_hours(math.inf, 2) == "> 2 rd"
    assert s.hours_to("sfl_v2", 2, 10, 0.0, 0.8, FAST) is None
    # SL reaches 70 % in round 2: 102 s at cut 2 (its own rounds), 180 s at cut 1, cut 3 not timed
    assert tables.best_cut(s, "sl", 10, 0.0, 0.7, FAST) == ((50 + 52) / 3600, 2)
    assert tables.best_cut(s, "sl", 10, 0.0, 0.8, FAST) is None
