"""Device profiles: drawn from one seed they repeat; named and custom ones; bad fields refused."""

import pytest

from splitfed.engine.profiles import PROFILES, profile
from splitfed.engine.timeline import MAIN_SERVER
from splitfed.errors import SplitfedError


def test_profiles_drawn_from_one_seed_repeat_and_another_seed_differs():
    mixed = PROFILES["phone-4g-mixed"]
    assert mixed.draw(50, seed=3) == mixed.draw(50, seed=3)
    assert mixed.draw(50, seed=3) != mixed.draw(50, seed=4)


def test_a_straggler_tail_slows_exactly_its_share_of_the_clients():
    p = profile({"base": "phone-4g", "straggler_share": 0.1, "straggler_slowdown": 5.0})  # no spread
    parties = p.draw(100, seed=0)
    rates = sorted(parties[str(n)].flops for n in range(100))
    assert rates[:10] == [p.client_flops / 5] * 10 and rates[10:] == [p.client_flops] * 90
    assert parties[MAIN_SERVER].flops == p.server_flops


def test_without_spread_every_client_is_the_median_device():
    p = PROFILES["phone-4g"]
    parties = p.draw(4, seed=1)
    assert {(parties[str(n)].flops, parties[str(n)].up_bps, parties[str(n)].rtt_s) for n in range(4)} == {
        (p.client_flops, p.client_up_bps, p.client_rtt_s)
    }


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("phone-5g", "unknown profile 'phone-5g'; known: phone-4g"),
        ({"base": "phone-4g", "uplink": 1.0}, "unknown profile field 'uplink'"),
        ({"base": "phone-4g", "client_up_bps": 0.0}, "client_up_bps must be a finite number above 0"),
        ({"base": "phone-4g", "spread": float("nan")}, "spread must be a finite number"),
        ({"base": "phone-4g", "straggler_share": 2.0}, "straggler_share must be in [0, 1]"),
        ({"client_flops": 1e9}, "a custom profile needs a base or every client field"),
    ],
)
def test_a_bad_profile_is_refused_in_one_line(table, message):
    with pytest.raises(SplitfedError) as e:
        profile(table)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_availability_draws_the_same_offline_clients_for_one_seed_and_round():
    p = profile({"base": "phone-4g", "availability": 0.7, "offline_s": 60.0})
    waits = p.offline(200, seed=3, rnd=2)
    assert waits == p.offline(200, seed=3, rnd=2) and waits != p.offline(200, seed=3, rnd=3)
    assert 40 <= len(waits) <= 80  # about 30 % of 200 offline
    assert all(w > 0 for w in waits.values()) and 30 < sum(waits.values()) / len(waits) < 90  # mean 60 s
    assert PROFILES["phone-4g"].offline(200, seed=3, rnd=2) == {}  # always online by default
    with pytest.raises(SplitfedError, match=r"availability must be in \[0, 1\]"):
        profile({"base": "phone-4g", "availability": 1.5})
