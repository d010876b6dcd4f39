"""Each round's simulated time (``profile``) against the time worked out by hand from the round's own
bytes and FLOPs: a client that trains alone adds its download, its steps and its upload; in lockstep every
iteration waits for the slowest client's forward, the main server's step and the replies."""

import pytest

from splitfed import Config, SplitfedError, run
from splitfed.config import FIELDS
from splitfed.engine.profiles import profile
from splitfed.report import format_table, run_figures
from splitfed.typed import coerce

from ..conftest import small_config

PHONE = {"client_flops": 2e9, "client_up_bps": 4e6, "client_down_bps": 16e6, "client_rtt_s": 0.05}
SERVER = {"server_flops": 1e12, "server_bps": 1e10, "server_rtt_s": 0.001}


def _record(algorithm: str, tmp_path, **profile) -> dict:
    config = small_config(algorithm=(algorithm,), rounds=1, divergence={"every": 0}, out=str(tmp_path))
    result = run(config.replace(profile=PHONE | SERVER | profile))
    return result.history[-1]


def test_a_fedavg_round_is_each_clients_download_steps_and_upload(tmp_path):
    r = _record("fedavg", tmp_path)
    n = r["participants"]
    down = 8 * r["bytes_down_per_client"] / PHONE["client_down_bps"]
    up = 8 * r["bytes_up_per_client"] / PHONE["client_up_bps"]
    compute = r["client_flops"] / n / PHONE["client_flops"]
    rtt = PHONE["client_rtt_s"]
    assert r["sim_round_s"] == pytest.approx(down + compute + up + rtt, rel=1e-9)
    assert r["sim_client_compute_s"] == pytest.approx([compute] * n, rel=1e-9)
    assert r["sim_critical_s"] == pytest.approx(
        {"down": down + rtt / 2, "client compute": compute, "up": up + rtt / 2}
    )


@pytest.mark.parametrize("slowdown", [1.0, 5.0])
def test_a_lockstep_iteration_waits_for_the_slowest_client(tmp_path, slowdown):
    # one client of four is `slowdown` times slower: every iteration of MiniBatch-SFL is its forward, its
    # message, the server's step on the giant batch, the reply and its backward
    r = _record("minibatch_sfl", tmp_path, straggler_share=0.25, straggler_slowdown=slowdown)
    n, tau, rtt = r["participants"], 2, PHONE["client_rtt_s"]
    kinds = r["bytes"]
    weights_down = kinds["global_client_weights"] / n
    weights_up = kinds["client_weights"] / n
    smashed_up = (kinds["smashed"] + kinds["labels"]) / n / tau
    grad_down = kinds["smashed_grad"] / n / tau
    client_step = r["client_flops"] / n / tau / (PHONE["client_flops"] / slowdown)  # fwd + bwd
    server_step = r["server_flops"] / tau / SERVER["server_flops"]
    iteration = (
        client_step
        + 8 * smashed_up / PHONE["client_up_bps"]
        + rtt / 2
        + server_step
        + 8 * grad_down / PHONE["client_down_bps"]
        + rtt / 2
    )
    start = 8 * weights_down / PHONE["client_down_bps"] + rtt / 2
    end = 8 * weights_up / PHONE["client_up_bps"] + rtt / 2
    assert r["sim_round_s"] == pytest.approx(start + tau * iteration + end, rel=1e-9)
    waited = sorted(r["sim_client_idle_s"])
    assert (waited[0] == waited[-1]) == (slowdown == 1.0)  # the fast clients wait for the straggler


def test_clients_taking_turns_take_longer_than_lockstep_on_the_same_devices(tmp_path):
    lockstep = _record("minibatch_sfl", tmp_path / "a")["sim_round_s"]
    turns = _record("sfl_v2", tmp_path / "b")["sim_round_s"]
    assert turns > 2 * lockstep  # four clients, each waiting for the ones before it at the main server


def test_a_bad_profile_is_refused_before_training(tmp_path):
    with pytest.raises(SplitfedError, match="unknown profile 'phone-6g'"):
        run(small_config(out=str(tmp_path), profile="phone-6g"))


def test_a_timed_run_gains_a_sim_column_and_a_figure_against_simulated_time(tmp_path):
    timed = run(
        small_config(
            algorithm=("fedavg",), divergence={"every": 0}, out=str(tmp_path / "a"), profile="phone-4g"
        )
    )
    plain = run(small_config(algorithm=("fedavg",), divergence={"every": 0}, out=str(tmp_path / "b")))
    assert "sim s/rd" in format_table(timed.summary) and "sim s/rd" not in format_table(plain.summary)
    assert timed.summary[0]["sim_s_per_round"] == pytest.approx(timed.history[-1]["sim_time_s"] / 2)
    assert "sim_s_per_round" not in (tmp_path / "b" / "summary.csv").read_text()  # as before profiles
    figures = run_figures(timed.history, ["fedavg"], "t")
    assert "accuracy_vs_sim_time" in figures and "accuracy_vs_sim_time" not in run_figures(
        plain.history, ["fedavg"], "t"
    )


def test_several_profiles_time_one_training_at_once(tmp_path):
    # the round trains once; its timeline is simulated on each profile: the first is the run's own
    slow = {"name": "slow", "base": "phone-4g", "client_up_bps": 1e6}
    both = run(
        small_config(algorithm=("minibatch_sfl",), out=str(tmp_path / "a"), profile=("phone-4g", slow))
    )
    alone = run(small_config(algorithm=("minibatch_sfl",), out=str(tmp_path / "b"), profile="phone-4g"))
    r, own = both.history[-1], alone.history[-1]
    assert r["sim_round_s"] == own["sim_round_s"] and "sim_round_s_by_profile" not in own
    assert r["sim_round_s_by_profile"]["phone-4g"] == own["sim_round_s"]
    assert r["sim_round_s_by_profile"]["slow"] > 2 * own["sim_round_s"]  # uplink 6.3 -> 1 Mbit/s
    assert both.history[0]["test_accuracy"] == alone.history[0]["test_accuracy"]  # the same training


def test_a_profile_list_reads_from_a_file_and_the_command_line(tmp_path):
    assert coerce(FIELDS["profile"], "phone-4g,sbc-wifi", "--profile", from_cli=True) == (
        "phone-4g",
        "sbc-wifi",
    )
    cfg = Config.from_dict(
        {"dataset": "digits", "profile": ["phone-4g", {"base": "sbc-wifi", "spread": 0.2}]}
    )
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    assert Config.from_toml(tmp_path / "c.toml").profile == cfg.profile  # an array of a name and a table
    with pytest.raises(SplitfedError, match="profile must be a name, a table or a list of them"):
        Config(dataset="digits", profile=[3])


def test_centralized_training_computes_on_the_main_server_and_sends_nothing(tmp_path):
    r = _record("centralized", tmp_path)
    assert r["client_flops"] == 0 and r["sim_client_transfer_s"] == [0.0] * 4
    assert r["sim_round_s"] == pytest.approx(r["server_flops"] / SERVER["server_flops"], rel=1e-9)


def test_a_round_waits_for_its_offline_clients(tmp_path):
    away_profile = {"availability": 0.0, "offline_s": 30.0}  # every client offline at the round's start
    online = _record("fedavg", tmp_path / "a")
    away = _record("fedavg", tmp_path / "b", **away_profile)
    # identical clients that overlap (FedAvg): the round ends with the client that came back last
    seed = small_config().seed_for("partition")
    waits = profile(PHONE | SERVER | away_profile).offline(away["participants"], seed, rnd=1)
    assert len(waits) == away["participants"]
    assert away["sim_round_s"] == pytest.approx(online["sim_round_s"] + max(waits.values()), rel=1e-9)
    assert away["sim_critical_s"]["offline"] == pytest.approx(max(waits.values()), rel=1e-9)
    assert away["test_accuracy"] == online["test_accuracy"]  # availability changes the clock only


def test_sfl_v1s_clients_step_their_own_server_copies_side_by_side(tmp_path):
    # identical clients, each with its own server-side copy: nobody waits for anybody, so the round is
    # one client's chain: download, then per iteration forward, message, its copy's step, reply, backward
    r = _record("sfl_v1", tmp_path)
    n, tau, rtt = r["participants"], 2, PHONE["client_rtt_s"]
    kinds = r["bytes"]
    client_step = r["client_flops"] / n / tau / PHONE["client_flops"]
    server_step = r["server_flops"] / n / tau / SERVER["server_flops"]
    iteration = (
        client_step
        + 8 * (kinds["smashed"] + kinds["labels"]) / n / tau / PHONE["client_up_bps"]
        + server_step
        + 8 * kinds["smashed_grad"] / n / tau / PHONE["client_down_bps"]
        + rtt
    )
    start = 8 * kinds["global_client_weights"] / n / PHONE["client_down_bps"] + rtt / 2
    end = 8 * kinds["client_weights"] / n / PHONE["client_up_bps"] + rtt / 2
    assert r["sim_round_s"] == pytest.approx(start + tau * iteration + end, rel=1e-9)
    turns = _record("sfl_v2", tmp_path / "v2")["sim_round_s"]  # one shared server model: in turn
    assert turns > 2 * r["sim_round_s"]
