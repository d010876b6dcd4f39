"""Device and link profiles: how fast the clients and the servers of a simulated deployment compute and talk.

A ``Profile`` describes a population of client devices (a median device, a seeded log-normal spread of
compute and bandwidth around it, a tail of stragglers, how often a device is online) and the servers they
talk to; ``draw`` turns it into one ``Party`` per client, the same for the same seed, and ``offline``
draws which clients a round finds offline and how long it waits for each. The named profiles and where
their numbers come from are in docs/performance.md ("Edge time"); a custom one is a TOML table of the same
fields. Compute rates are *effective training* FLOP/s (what a whole training step achieves, well below a
chip's peak), bandwidths bit/s, round trips seconds.
"""

import dataclasses
import math
import random
from dataclasses import dataclass

from ..errors import SplitfedError
from .timeline import FED_SERVER, MAIN_SERVER, Party

GIGA, MEGA = 1e9, 1e6


@dataclass(frozen=True)
class Profile:
    client_flops: float
    client_up_bps: float
    client_down_bps: float
    client_rtt_s: float
    spread: float = 0.0  # σ of the log of each client's compute and of its bandwidth (0: identical clients)
    straggler_share: float = 0.0  # this share of the clients (rounded) is slower by straggler_slowdown
    straggler_slowdown: float = 1.0
    # availability: the chance that a client is online when a round starts. splitfed's rounds are
    # synchronous over a fixed list of participants (dropping one would change what is trained), so a
    # round waits for an offline client: its first task starts after an exponential wait of mean offline_s
    availability: float = 1.0
    offline_s: float = 0.0
    server_flops: float = 6e12  # the main and the fed server: a data-centre GPU (see the docs)
    server_bps: float = 10e9
    server_rtt_s: float = 0.001

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0) or (
                value == 0 and f.name.endswith(("flops", "bps"))
            ):
                raise SplitfedError(f"profile {f.name} must be a finite number above 0, got {value!r}")
        if self.straggler_share > 1 or self.straggler_slowdown < 1:
            raise SplitfedError("profile straggler_share must be in [0, 1] and straggler_slowdown at least 1")
        if self.availability > 1:
            raise SplitfedError(f"profile availability must be in [0, 1], got {self.availability!r}")

    def draw(self, clients: int, seed: int) -> dict[str, Party]:
        """One Party per client ("0" .. "N-1") and the two servers; the same seed draws the same devices."""
        rng = random.Random(seed)
        compute = [rng.lognormvariate(0.0, self.spread) for _ in range(clients)]
        links = [rng.lognormvariate(0.0, self.spread) for _ in range(clients)]
        slow = set(rng.sample(range(clients), round(self.straggler_share * clients)))
        parties = {
            str(n): Party(
                flops=self.client_flops * compute[n] / (self.straggler_slowdown if n in slow else 1.0),
                up_bps=self.client_up_bps * links[n],
                down_bps=self.client_down_bps * links[n],
                rtt_s=self.client_rtt_s,
            )
            for n in range(clients)
        }
        server = Party(self.server_flops, self.server_bps, self.server_bps, self.server_rtt_s)
        return parties | {MAIN_SERVER: server, FED_SERVER: server}

    def offline(self, clients: int, seed: int, rnd: int) -> dict[str, float]:
        """The clients round ``rnd`` finds offline ("0" .. "N-1") and the seconds until each is back; the
        same seed and round draw the same (a string seed: Python hashes it the same in every process)."""
        if self.availability >= 1:
            return {}
        rng = random.Random(f"offline {seed} {rnd}")
        waits = {}
        for n in range(clients):
            away = rng.random() >= self.availability
            wait = rng.expovariate(1 / self.offline_s) if self.offline_s > 0 else 0.0
            if away:
                waits[str(n)] = wait
        return waits


_PHONE_4G = Profile(
    client_flops=10 * GIGA, client_up_bps=6.3 * MEGA, client_down_bps=21.3 * MEGA, client_rtt_s=0.055
)
PROFILES: dict[str, Profile] = {
    "phone-4g": _PHONE_4G,
    # the same phones, unlike each other: a log-normal spread and a tenth of them five times slower
    "phone-4g-mixed": dataclasses.replace(_PHONE_4G, spread=0.5, straggler_share=0.1, straggler_slowdown=5.0),
    "sbc-wifi": Profile(
        client_flops=4 * GIGA, client_up_bps=20 * MEGA, client_down_bps=50 * MEGA, client_rtt_s=0.02
    ),
    "datacenter": Profile(client_flops=6e12, client_up_bps=10e9, client_down_bps=10e9, client_rtt_s=0.001),
}


def profiles(value: "str | dict | tuple") -> dict[str, Profile]:
    """The config's ``profile``: one profile or a list of them, by label (a name, or a table's ``name``,
    else "custom", "custom 2", ...); the first is the run's own, the others timed beside it."""
    out: dict[str, Profile] = {}
    for item in value if isinstance(value, tuple | list) else (value,):
        table = dict(item) if isinstance(item, dict) else None
        label = item if table is None else str(table.pop("name", "custom"))
        if label in out:
            n = 2
            while f"{label} {n}" in out:
                n += 1
            label = f"{label} {n}"
        out[label] = profile(item if table is None else table)
    return out


def profile(name_or_table: "str | dict[str, float]") -> Profile:
    """A named profile, or a custom one from a table of Profile's fields (a named ``base`` to start from)."""
    if isinstance(name_or_table, str):
        if name_or_table not in PROFILES:
            raise SplitfedError(f"unknown profile {name_or_table!r}; known: {', '.join(PROFILES)}")
        return PROFILES[name_or_table]
    table = dict(name_or_table)
    base = profile(str(table.pop("base"))) if "base" in table else None
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SplitfedError(f"unknown profile field {unknown[0]!r}; known: base, {', '.join(sorted(known))}")
    try:
        return dataclasses.replace(base, **table) if base else Profile(**table)  # type: ignore[arg-type]
    except TypeError as e:  # a field missing without a base
        raise SplitfedError(f"a custom profile needs a base or every client field: {e}") from None
