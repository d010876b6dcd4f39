"""Real network faults, not only kills: one client sits in a network namespace of its own behind a
virtual link (made and removed here, on this machine only; no other address is ever used), and its link
is capped (tc tbf), cut for seconds (ip link set down), or its traffic to the main server passes a
delaying proxy with jitter and stalls (netem is not available on these kernels). Each deployment must
finish equal to the simulation under the default "wait" policy. Round times are printed (-s) for
docs/deploy.md; nothing here asserts a time.

Skipped, with the reason, where namespaces cannot be made (not root, no ``ip``).
"""

import dataclasses
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.edge_calibration import DelayingProxy, join_namespace, sh
from splitfed.services.deploy import load, write_config
from splitfed.services.launch import free_ports, role_command
from splitfed.services.security import make_credentials

from .harness import (
    Roles,
    assert_states_close,
    deployed_model,
    deployment,
    metrics_lines,
    simulated_model,
    tiny_config,
    wait_for,
)

HOST, PEER = "10.77.0.1", "10.77.0.2"  # the link's two ends: root namespace, the client's namespace


@pytest.fixture
def link():
    """A namespace joined to this one by a veth pair: (namespace, host-side device, its device)."""
    tag = f"sf{random.randrange(16**6):06x}"
    ns, host_dev, ns_dev = tag, f"{tag}h", f"{tag}n"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("no ip or tc command: network namespaces cannot be made here")
    try:
        sh("ip", "netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"network namespaces cannot be made here (root needed): {e}")
    try:
        join_namespace(ns, host_dev, ns_dev, HOST, PEER)
        yield ns, host_dev, ns_dev
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True, timeout=30)


def _deployment(tmp_path: Path, host: str = HOST, **deploy_changes):
    """The tests' tiny deployment, its servers at ``host`` (the link's host end, or loopback)."""
    config = tiny_config(tmp_path, rounds=3, local_iters=8)
    main, fed = free_ports(2)
    ports = {"main_server": f"{host}:{main}", "fed_server": f"{host}:{fed}"}
    config_file, config, deploy = deployment(tmp_path, config, **ports, **deploy_changes)
    make_credentials(tmp_path / "certs", config.clients, hosts=("localhost", host))  # its SAN: the link
    return config_file, config, deploy


def _round_times(run_dir: Path) -> list[float]:
    import json

    return [json.loads(line)["round_time_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _finish_equal_to_simulation(tmp_path, roles, config, deploy, fault: str) -> None:
    codes = roles.wait(timeout=240)
    assert set(codes.values()) == {0}, {k: roles.log(k)[-2000:] for k in codes}
    w_c, w_s = deployed_model(deploy)
    sim_c, sim_s = simulated_model(config)
    assert_states_close(w_c, sim_c)
    assert_states_close(w_s, sim_s)
    print(f"\n{fault}: round times (s) {[round(t, 2) for t in _round_times(tmp_path / 'run')]}")


def _start_in(roles: Roles, ns: str, config_file: Path, k: int) -> None:
    """Client k as a process in namespace ``ns`` (the others run in this one)."""
    log = (roles.logs / f"client_{k}.log").open("a")
    roles.procs[f"client_{k}"] = subprocess.Popen(
        ["ip", "netns", "exec", ns, *role_command("client", config_file, k)], stdout=log, stderr=log
    )


@pytest.mark.parametrize("fault", ["bandwidth cap", "link outage"])
def test_a_client_behind_a_faulty_link_ends_equal_to_the_simulation(tmp_path, link, fault):
    ns, host_dev, ns_dev = link
    config_file, config, deploy = _deployment(tmp_path, keepalive_s=2.0)
    if fault == "bandwidth cap":  # 2 Mbit/s each way on the client's link (its smashed data ~25 kB/step)
        cap = ["root", "tbf", "rate", "2mbit", "burst", "32kb", "latency", "1s"]
        sh("tc", "qdisc", "add", "dev", host_dev, *cap)
        sh("tc", "qdisc", "add", "dev", ns_dev, *cap, ns=ns)
    roles = Roles(config_file, config.clients - 1, servers_first=True)
    _start_in(roles, ns, config_file, config.clients - 1)
    if fault == "link outage":  # mid-run, longer than keepalive: the connection is found dead, retried
        wait_for(lambda: metrics_lines(tmp_path / "run") >= 1)
        sh("ip", "link", "set", host_dev, "down")
        time.sleep(8.0)
        sh("ip", "link", "set", host_dev, "up")
    _finish_equal_to_simulation(tmp_path, roles, config, deploy, fault)


def test_latency_jitter_and_stalls_on_one_clients_connection_end_equal_to_the_simulation(tmp_path):
    config_file, config, deploy = _deployment(tmp_path, host="127.0.0.1")
    host, port = deploy.main_server.rsplit(":", 1)
    proxy = DelayingProxy(("127.0.0.1", 0), (host, int(port)), delay_s=0.01, jitter_s=0.008, stall_s=1.5)
    try:
        # client 2's own deployment file (each machine has one): the main server through the proxy
        slow = tmp_path / "client_2.toml"
        cfg, dep = load(config_file)
        write_config(slow, cfg, dataclasses.replace(dep, main_server=f"127.0.0.1:{proxy.port}"))
        roles = Roles(config_file, config.clients - 1, servers_first=True)
        log = (roles.logs / "client_2.log").open("a")
        roles.procs["client_2"] = subprocess.Popen(role_command("client", slow, 2), stdout=log, stderr=log)
        _finish_equal_to_simulation(tmp_path, roles, config, deploy, "proxy")
        print(f"proxy: {proxy.stalls} stalls of 1.5 s")
    finally:
        proxy.close()
