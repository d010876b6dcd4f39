"""The wall-clock model on schedules small enough to time by hand."""

import pytest

from splitfed.engine.timeline import MAIN_SERVER, Party, Timeline


def lockstep_slot(t: Timeline, clients: list[str], fwd: float, up: float, server: float, down: float) -> None:
    sent = [t.up(c, up, after=[t.compute(c, fwd)]) for c in clients]
    step = t.compute(MAIN_SERVER, server, after=sent)
    for c in clients:
        t.compute(c, 2 * fwd, after=[t.down(c, down, after=[step])])


def test_a_lockstep_slot_waits_for_its_slowest_client():
    t = Timeline()
    lockstep_slot(t, ["a", "b", "c"], fwd=4, up=1, server=6, down=1)
    parties = {"a": Party(2, 8, 8), "b": Party(4, 8, 8), "c": Party(8, 8, 8), MAIN_SERVER: Party(6)}
    timing = t.simulate(parties)
    # a: forward 2 s, upload 1 s -> 3; b 2; c 1.5; the step waits for a: 3..4; replies 5; backward 4, 2, 1 s
    assert timing.time_s == 9.0
    assert [round(t.finish, 6) for t in t.tasks if t.party != MAIN_SERVER][-1] == 6.0  # c's backward
    assert timing.critical_path == [
        ("compute", "a", 2.0),
        ("up", "a", 1.0),
        ("compute", MAIN_SERVER, 1.0),
        ("down", "a", 1.0),
        ("compute", "a", 4.0),
    ]
    assert timing.idle_s["c"] == 9.0 - 1.5 - 2.0 and timing.compute_s["a"] == 6.0
    assert sum(timing.critical_share().values()) == timing.time_s


def test_turns_at_one_server_add_up_and_the_next_client_sends_early():
    t = Timeline()
    for client in ("a", "a", "b", "b"):  # client-sequential: each client's iterations in turn
        lockstep_slot(t, [client], fwd=1, up=1, server=1, down=1)
    one = Party(1, 8, 8)
    timing = t.simulate({"a": one, "b": one, MAIN_SERVER: Party(1)})
    # an iteration is 1 + 1 + 1 + 1 + 2 = 6 s: a's two end at 12; b's first batch was sent by 2 s but its
    # step waits for a's last one (8..9): b's first iteration ends at 9 + 1 + 1 + 2 = 13, its second at 19
    assert timing.time_s == 19.0
    steps = [(x.start, x.finish) for x in t.tasks if x.party == MAIN_SERVER]
    assert steps == [(2.0, 3.0), (8.0, 9.0), (9.0, 10.0), (15.0, 16.0)]


def test_fedavg_clients_overlap_within_a_round():
    t = Timeline()
    uploads = [t.up(c, 8, after=[t.compute(c, 10)]) for c in ("a", "b")]
    t.compute("fed_server", 0, after=uploads)
    timing = t.simulate({"a": Party(1, 8, 8, rtt_s=2), "b": Party(2, 8, 8, rtt_s=2), "fed_server": Party(1)})
    assert timing.time_s == 10 + 8 + 1  # the slower client: compute, 8 s of bytes, half the round trip
    assert timing.transfer_s == {"a": 9.0, "b": 9.0}


def test_latency_delays_a_message_but_does_not_hold_the_link():
    t = Timeline()
    first, second = t.up("a", 1), t.up("a", 1)
    t.simulate({"a": Party(1, up_bps=8, rtt_s=2)})
    assert (t.tasks[first].finish, t.tasks[second].start, t.tasks[second].finish) == (2.0, 1.0, 3.0)


def test_a_task_waits_only_for_tasks_issued_before_it():
    with pytest.raises(ValueError, match="issued before"):
        Timeline().compute("a", 1, after=[0])


def test_an_offline_client_starts_when_it_is_back_and_its_wait_is_on_the_critical_path():
    t = Timeline()
    lockstep_slot(t, ["a", "b"], fwd=1, up=1, server=1, down=1)
    one = Party(1, 8, 8)
    parties = {"a": one, "b": one, MAIN_SERVER: Party(1)}
    assert t.simulate(parties).time_s == 6.0  # forward 1, up 1, step 1, down 1, backward 2
    timing = t.simulate(parties, offline={"b": 2.5})  # b comes online 2.5 s into the round
    # b waited 2.5 s to come online and 1 s for the step; a waited as long, for b's message and the step
    assert timing.time_s == 8.5 and timing.idle_s["b"] == timing.idle_s["a"] == 3.5
    assert timing.critical_path[0] == ("offline", "b", 2.5)
    assert sum(timing.critical_share().values()) == timing.time_s
