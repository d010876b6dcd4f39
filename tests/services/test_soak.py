"""A fault soak: a small deployment on loopback (real processes) while a seeded schedule kills (SIGKILL)
and restarts every role — each client, the main server and the fed server, some while they write their
state, some again while they restart — and the run still ends where it should: every process exits 0,
every client a round went on without is recorded in metrics.jsonl, and every round before the first such
drop is the simulation's.

Kill points are observable events (a round's metrics line, a server's state file being written) plus
seeded small delays; every wait has a timeout. Straggler policy "wait" (nothing is dropped for being slow
while a role restarts), with give_up_s as the guard that turns a hang into exit 3 and a failed test.
"""

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from splitfed.engine.checkpoint import read_checkpoint

from .harness import (
    Roles,
    assert_states_close,
    deployed_model,
    deployment,
    halves_of,
    metrics_lines,
    simulated_run,
    tiny_config,
    wait_for,
)

SEED = 11
ROUNDS = 14
CLIENTS = ("client_0", "client_1", "client_2")


@dataclass
class Fault:
    """Once ``after_round`` rounds are in metrics.jsonl, and at least one since the previous fault's
    restarts (the deployment has recovered), kill ``victims`` in order, then restart them.

    ``at`` says when the first victim dies: "write", as soon as its state file's tmp file is written
    (during its checkpoint write); "delay", ``fraction`` of a round's time later (a round's time measured
    from the last rounds, so that the point falls within a round on a slow machine and on a fast one);
    "restart", as "delay", and the victims are killed once more half a second into their restart.
    Each further victim dies ``gap`` seconds after the one before, while it is down.
    """

    after_round: int
    victims: tuple[str, ...]
    at: str
    fraction: float
    gap: float


def schedule(rng: random.Random) -> tuple[list[Fault], list[Fault]]:
    """Two phases: faults no client should be left out for, then clients killed alone within a round."""
    clients = list(CLIENTS)
    rng.shuffle(clients)

    def fault(after_round: int, victims: tuple[str, ...], at: str = "delay", within=(0.0, 1.0)) -> Fault:
        return Fault(after_round, victims, at, round(rng.uniform(*within), 3), round(rng.uniform(0, 0.3), 3))

    phase_1 = [
        # Servers anywhere (a restarted main server makes the clients replay its round); clients only
        # while the main server is down (they replay that round too).
        fault(0, ("fed_server",), "write"),  # its first round's state
        fault(2, ("main_server", clients[0], clients[1])),
        fault(3, ("main_server", clients[2]), "write"),
        fault(4, ("fed_server",)),
        fault(5, ("main_server", "fed_server"), "restart"),  # and once more while they start up
    ]
    phase_2 = [
        # A client alone, well within a round, has lost its place there: it sits out the rest of the
        # round, which metrics.jsonl must say.
        fault(9, (clients[0],), within=(0.2, 0.7)),
        fault(11, (clients[1],), within=(0.2, 0.7)),
    ]
    return phase_1, phase_2


class Injector:
    def __init__(self, roles: Roles, state_dir: Path, run_dir: Path) -> None:
        self.roles, self.state_dir, self.run_dir = roles, state_dir, run_dir
        self.kills = 0
        self.mid_write = 0  # kills that left the state file's tmp file behind: the write never finished
        self.recovered = 0  # rounds in metrics.jsonl when the last fault's victims were restarted

    def inject(self, fault: Fault) -> None:
        target = max(fault.after_round, self.recovered + 1)
        wait_for(lambda: metrics_lines(self.run_dir) >= target, timeout=120)
        first = fault.victims[0]
        tmp = self.state_dir / f"{first}.pt.tmp"
        if fault.at == "write":
            before = _stamp(tmp)  # a tmp file left by an earlier kill is not this write
            wait_for(lambda: _stamp(tmp) not in (None, before), timeout=120, every=0.0005)
        else:
            time.sleep(fault.fraction * self.round_time())
        for i, name in enumerate(fault.victims):
            if i:
                time.sleep(fault.gap)
            assert self.roles.procs[name].poll() is None, f"{name} ended before its fault {fault}"
            self.roles.kill(name)
            self.kills += 1
        if fault.at == "write" and tmp.exists():
            self.mid_write += 1
        for name in fault.victims:
            self.roles.restart(name)
        if fault.at == "restart":  # killed again during their restart (still starting, or recovering)
            time.sleep(0.5 + fault.gap)
            for name in fault.victims:
                self.roles.kill(name)
                self.kills += 1
                self.roles.restart(name)
        self.recovered = metrics_lines(self.run_dir)

    def round_time(self) -> float:
        """A round's time when nothing restarts: the shortest of the last few."""
        lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()[-4:]
        return min(json.loads(line)["round_time_s"] for line in lines)


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def confirmed_drops(main_log: str) -> dict[int, set[int]]:
    """Round -> the clients the main server went on without, in rounds it finished without a restart
    (a round it was killed in is trained again from its start, and may keep everyone the second time)."""
    pending: dict[int, set[int]] = {}
    done: dict[int, set[int]] = {}
    for line in main_log.splitlines():
        if "main server: listening on" in line:
            pending = {}
        elif m := re.search(r"client (\d+) restarted within round (\d+)", line):
            pending.setdefault(int(m[2]), set()).add(int(m[1]))
        elif m := re.search(r"round (\d+) goes on without clients \[([\d, ]*)\]", line):
            pending.setdefault(int(m[1]), set()).update(int(n) for n in m[2].split(","))
        elif m := re.search(r"main server: round (\d+) done", line):
            done[int(m[1])] = pending.pop(int(m[1]), set())
    return done


@pytest.mark.alone  # its kills fall at fractions of a round time it measures
def test_a_deployment_survives_every_role_killed_again_and_again(tmp_path):
    started = time.monotonic()
    config = tiny_config(tmp_path, rounds=ROUNDS, local_iters=40, momentum=0.5)
    config_file, config, deploy = deployment(tmp_path, config, straggler_policy="wait", give_up_s=60.0)
    run_dir, state_file = tmp_path / "run", Path(deploy.state_dir) / "fed_server.pt"
    phase_1, phase_2 = schedule(random.Random(SEED))
    roles = Roles(config_file, config.clients, servers_first=True)
    injector = Injector(roles, Path(deploy.state_dir), run_dir)
    try:
        for fault in phase_1:
            injector.inject(fault)
        wait_for(lambda: metrics_lines(run_dir) > injector.recovered, timeout=120)
        between = read_checkpoint(state_file, "")  # the model after phase 1, taken whole (atomic writes)
        for fault in phase_2:
            injector.inject(fault)
    except (TimeoutError, AssertionError) as e:
        roles.wait(timeout=1)  # ends them all
        raise AssertionError((e, {k: roles.log(k)[-3000:] for k in roles.procs})) from None
    codes = roles.wait(timeout=180)
    assert set(codes.values()) == {0}, {k: roles.log(k)[-3000:] for k in codes}

    victims = {name for fault in phase_1 + phase_2 for name in fault.victims}
    assert victims == {*CLIENTS, "main_server", "fed_server"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    for r in records:
        assert r["participants"] + len(r["dropped_clients"]) == config.clients
    # every client the main server went on without (in a round it finished) is in that round's record
    for rnd, clients in confirmed_drops(roles.log("main_server")).items():
        assert clients <= set(records[rnd - 1]["dropped_clients"]), (rnd, clients, records[rnd - 1])

    # Until the first round that went on without someone, the deployment is the simulation: round by
    # round (the loss and accuracy of each round's model on the test set, and the training loss), and
    # in its model after phase 1 and, with no drop at all, after the last round.
    sim_c, sim_s, sim_history = simulated_run(config)
    first_drop = next((r["round"] for r in records if r["dropped_clients"]), ROUNDS + 1)
    for deployed, simulated in zip(records[: first_drop - 1], sim_history, strict=False):
        for key in ("test_loss", "test_accuracy", "train_loss"):
            assert abs(deployed[key] - simulated[key]) < 1e-4, (deployed["round"], key)
    compared = []
    if between["round"] < first_drop:
        mid_c, mid_s, _ = simulated_run(config.replace(rounds=between["round"]))
        between_c, between_s = halves_of(between)
        assert_states_close(between_c, mid_c)
        assert_states_close(between_s, mid_s)
        compared.append(between["round"])
    if first_drop > ROUNDS:
        w_c, w_s = deployed_model(deploy)
        assert_states_close(w_c, sim_c)
        assert_states_close(w_s, sim_s)
        compared.append(ROUNDS)
    drops = sum(len(r["dropped_clients"]) for r in records)
    print(
        f"soak: {injector.kills} kills ({injector.mid_write} mid-write) survived in "
        f"{time.monotonic() - started:.0f} s; {drops} client-rounds dropped, the first in round "
        f"{first_drop if first_drop <= ROUNDS else '-'}; rounds 1..{min(first_drop - 1, ROUNDS)} have the "
        f"simulation's metrics, the models after rounds {compared} the simulation's"
    )
