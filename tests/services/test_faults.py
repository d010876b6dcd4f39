"""Deployments that lose a role at an awkward moment end in a clear state: they go on, or stop with a message
and their state saved, and a restart with the same command continues (real processes on loopback)."""

import json

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


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_fed_server_killed_before_its_first_round_ends_restarts_with_the_same_command(tmp_path):
    config = tiny_config(tmp_path, rounds=3, local_iters=12)
    config_file, config, deploy = deployment(tmp_path, config)
    roles = Roles(config_file, config.clients)
    wait_for(lambda: (tmp_path / "run" / "config.toml").is_file())  # it has started its run directory
    assert metrics_lines(tmp_path / "run") == 0
    roles.kill("fed_server")
    roles.start("fed_server")
    codes = roles.wait()
    assert set(codes.values()) == {0}, {k: roles.log(k)[-2000:] for k in codes}
    assert_states_close(deployed_model(deploy)[0], simulated_model(config)[0])
    assert [r["round"] for r in records(tmp_path / "run")] == [1, 2, 3]


def test_a_client_restarted_mid_round_rejoins_and_the_default_wait_policy_does_not_hang(tmp_path):
    config = tiny_config(tmp_path, rounds=4, local_iters=12)
    config_file, config, _ = deployment(tmp_path, config)  # straggler_policy "wait", the default
    roles = Roles(config_file, config.clients)
    wait_for(lambda: metrics_lines(tmp_path / "run") >= 1)
    roles.kill("client_1")
    roles.start("client", 1)
    codes = roles.wait(timeout=120)
    assert set(codes.values()) == {0}, {k: roles.log(k)[-2000:] for k in codes}
    history = records(tmp_path / "run")
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    for r in history:  # a round it sat out says so; the others had everyone
        assert r["participants"] + len(r["dropped_clients"]) == 3
        assert set(r["dropped_clients"]) <= {1}
    assert history[-1]["participants"] == 3


def test_when_every_client_is_gone_both_servers_stop_with_a_message_and_a_restart_continues(tmp_path):
    # control variates: each restarted client must take its own c_i back from its state file, or the
    # result would not be the uninterrupted one
    config = tiny_config(tmp_path, rounds=3, local_iters=6, control_variates=True)
    config_file, config, deploy = deployment(tmp_path, config, give_up_s=12.0)
    roles = Roles(config_file, config.clients)
    wait_for(lambda: metrics_lines(tmp_path / "run") >= 1)
    for k in range(config.clients):
        roles.kill(f"client_{k}")
    codes = {name: roles.procs[name].wait(timeout=90) for name in ("main_server", "fed_server")}
    assert codes == {"main_server": 3, "fed_server": 3}
    for name in codes:
        errors = [line for line in roles.log(name).splitlines() if line.startswith("splitfed: error:")]
        assert len(errors) == 1 and "restart this server to continue" in errors[0], roles.log(name)[-2000:]
    # the same commands again: the run goes on from its saved state to the uninterrupted result
    for name in ("fed_server", "main_server"):
        roles.start(name)
    for k in range(config.clients):
        roles.start("client", k)
    codes = roles.wait()
    assert set(codes.values()) == {0}, {k: roles.log(k)[-2000:] for k in codes}
    w_c, w_s = deployed_model(deploy)
    sim_c, sim_s = simulated_model(config)
    assert_states_close(w_c, sim_c)
    assert_states_close(w_s, sim_s)
    assert [r["round"] for r in records(tmp_path / "run")] == [1, 2, 3]


def test_a_main_server_state_put_back_from_an_earlier_round_stops_the_clients_not_a_livelock(
    tmp_path,
):
    """Round r's main_server.pt put back after round r + 1: the clients, a round further on, were told to
    restart round r + 1 for ever (about 25 times a second, no round written); now each client stops with
    one line saying the main server's state is older than the deployment, and the main server logs it."""
    from pathlib import Path

    from splitfed.engine.checkpoint import read_checkpoint

    config = tiny_config(tmp_path, rounds=8, local_iters=6)
    config_file, config, deploy = deployment(tmp_path, config)
    roles = Roles(config_file, config.clients)
    state = Path(deploy.state_dir) / "main_server.pt"
    wait_for(lambda: state.is_file())
    old = state.read_bytes()
    saved_round = read_checkpoint(state, "")["round"]
    wait_for(lambda: metrics_lines(tmp_path / "run") >= saved_round + 1)  # the deployment moved on
    roles.kill("main_server")
    state.write_bytes(old)
    roles.start("main_server")
    clients = [f"client_{k}" for k in range(config.clients)]
    codes = {name: roles.procs[name].wait(timeout=60) for name in clients}
    for name in ("fed_server", "main_server"):  # they stay up (a hostile message must not stop them)
        roles.kill(name)
    assert set(codes.values()) == {2}, {k: roles.log(k)[-2000:] for k in codes}
    errors = [line for line in roles.log("main_server").splitlines() if "older than the rest" in line]
    assert len(errors) == config.clients, roles.log("main_server")[-2000:]  # one line per client
    for k in range(config.clients):
        last = roles.log(f"client_{k}").strip().splitlines()[-1]
        assert last.startswith(f"splitfed: error: client {k}: the main server refused"), last
        assert roles.log(f"client_{k}").count("restarting round") <= 2


def test_uploads_lost_with_every_client_and_the_fed_server_are_sent_again_after_a_restart(tmp_path):
    """The main server finished round 2, the fed server (paused) never got its uploads, and every client
    and the fed server die: restarted with the same commands, nobody would train round 2 again and the
    deployment stalled until give_up_s. Each client saves its upload with its state before sending it;
    restarted, it sends it again, and the run ends as the uninterrupted one, no client dropped."""
    import signal
    from pathlib import Path

    from splitfed.engine.checkpoint import read_checkpoint

    config = tiny_config(tmp_path, rounds=3, local_iters=6)
    config_file, config, deploy = deployment(tmp_path, config)
    roles = Roles(config_file, config.clients)
    state = Path(deploy.state_dir)

    def saved_round(name, key=None):
        path = state / f"{name}.pt"
        if not path.is_file():
            return 0
        saved = read_checkpoint(path, "")
        return saved[key]["round"] if key else saved["round"]

    wait_for(lambda: all("round 2 of 3" in roles.log(f"client_{k}") for k in range(3)))
    roles.procs["fed_server"].send_signal(signal.SIGSTOP)  # every client holds round 2's model
    wait_for(lambda: all(saved_round(f"client_{k}", "upload") == 2 for k in range(3)))
    assert saved_round("main_server") == 2 and metrics_lines(tmp_path / "run") == 1
    for name in ("fed_server", "client_0", "client_1", "client_2"):
        roles.kill(name)
    roles.start("fed_server")
    for k in range(config.clients):
        roles.start("client", k)
    codes = roles.wait(timeout=120)
    assert set(codes.values()) == {0}, {k: roles.log(k)[-2000:] for k in codes}
    history = records(tmp_path / "run")
    assert [(r["round"], r["participants"]) for r in history] == [(1, 3), (2, 3), (3, 3)]
    w_c, w_s = deployed_model(deploy)
    sim_c, sim_s = simulated_model(config)
    assert_states_close(w_c, sim_c)
    assert_states_close(w_s, sim_s)
