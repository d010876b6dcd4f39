"""Checkpoints and server state files that cannot be trusted are refused with one line, before anything is
trained or written: damaged bytes, non-finite values, another config, another structure or shapes."""

import os
import shutil

import pytest
import torch

from splitfed import run
from splitfed.cli import main
from splitfed.config import Config
from splitfed.engine.checkpoint import read_checkpoint, write_checkpoint
from splitfed.errors import SplitfedError
from splitfed.services.deploy import load
from splitfed.services.fed_server import FedServer
from splitfed.services.main_server import MainServer
from splitfed.setup import prepare

from .conftest import small_config
from .services.harness import deployment, run_in_threads, tiny_config

ALGO = "minibatch_sfl"


def rewrite(path, change):
    """The file's payload changed by ``change`` and written back with a matching digest: what is refused
    then is the content, not the bytes."""
    payload = read_checkpoint(path, "")
    write_checkpoint(path, change(payload) or payload)


def test_a_write_reaches_the_disk_before_its_name_and_a_kill_before_the_rename_keeps_the_old_file(
    tmp_path, monkeypatch
):
    path = tmp_path / "x.pt"
    write_checkpoint(path, {"round": 1})
    calls = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or fsync(fd))

    def killed(*args):
        calls.append("replace")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, {"round": 2})
    assert calls == ["fsync", "replace"]
    assert read_checkpoint(path, "")["round"] == 1


# --- a run's checkpoints ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    run(small_config(algorithm=(ALGO,), rounds=2, momentum=0.5, out=str(out)))
    return out


@pytest.fixture
def run_dir(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def resume(run_dir, capsys, rounds=3):
    code = main(["run", "--out", str(run_dir), "--resume", "--rounds", str(rounds)])
    return code, capsys.readouterr().err


def assert_refused(run_dir, capsys, *words):
    checkpoint = run_dir / "checkpoints" / f"{ALGO}.pt"
    before = checkpoint.read_bytes()
    code, err = resume(run_dir, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("splitfed: error: "), err
    assert str(checkpoint) in err, err
    for word in words:
        assert word in err, err
    # refused before anything was trained or written: the run is as it was, finished
    assert checkpoint.read_bytes() == before
    assert (run_dir / "summary.csv").is_file()
    return err


def test_an_untouched_checkpoint_resumes(run_dir, capsys):
    code, err = resume(run_dir, capsys)
    assert code == 0, err
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 3


def test_a_checkpoint_without_its_checksum_line_is_refused_even_when_its_content_is_valid(run_dir, capsys):
    checkpoint = run_dir / "checkpoints" / f"{ALGO}.pt"
    saved = read_checkpoint(checkpoint, "")
    saved["model"]["client"]["params"][0] += 1.0  # an edited weight...
    torch.save(saved, checkpoint)  # ...in a file without the digest line, as v1 files were
    assert_refused(run_dir, capsys, "no checksum line", "cannot be verified")


def test_a_checkpoint_marked_as_the_old_format_is_refused(run_dir, capsys):
    # v1 carried no config: a file marked v1 would skip the comparison with the run's config
    checkpoint = run_dir / "checkpoints" / f"{ALGO}.pt"
    saved = read_checkpoint(checkpoint, "")
    saved["version"] = 1
    write_checkpoint(checkpoint, saved)
    assert_refused(run_dir, capsys, "not a splitfed v2 checkpoint (version 1)")


@pytest.mark.parametrize("record", [{"algorithm": ["x"]}, {"note": torch.zeros(2)}, {"by": {1: 2.0}}])
def test_history_records_that_are_not_json_rounds_are_refused(run_dir, capsys, record):
    checkpoint = run_dir / "checkpoints" / f"{ALGO}.pt"
    saved = read_checkpoint(checkpoint, "")
    saved["history"][0] |= record
    write_checkpoint(checkpoint, saved)
    assert_refused(run_dir, capsys, "is not a round record")


@pytest.mark.parametrize("where", [0.5, 0.9])
def test_a_flipped_bit_is_refused_naming_the_file_and_how_to_go_on(run_dir, capsys, where):
    checkpoint = run_dir / "checkpoints" / f"{ALGO}.pt"
    data = bytearray(checkpoint.read_bytes())
    data[int(len(data) * where)] ^= 0x10  # within the tensors' bytes: torch.load reads it without a word
    checkpoint.write_bytes(bytes(data))
    assert_refused(run_dir, capsys, "checksum", "delete it to retrain minibatch_sfl")


def test_a_truncated_checkpoint_is_refused(run_dir, capsys):
    checkpoint = run_dir / "checkpoints" / f"{ALGO}.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1000])
    assert_refused(run_dir, capsys, "delete it to retrain")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("part", ["client", "server"])
def test_non_finite_values_are_refused(run_dir, capsys, part, value):
    def poison(saved):
        for tensor in saved["model"][part].values():  # every part of the state, whatever State holds
            if tensor.numel():
                tensor.view(-1)[tensor.numel() // 2] = value

    rewrite(run_dir / "checkpoints" / f"{ALGO}.pt", poison)
    assert_refused(run_dir, capsys, "non-finite", f"model.{part}")


def _pop(key):
    def change(s):
        del s[key]

    return change


def _pop_part(part):
    def change(s):
        del s["model"][part]

    return change


def _set_part(part, value):
    def change(s):
        s["model"][part] = value(s["model"][part])

    return change


def _set_in_part(part, key, value):
    def change(s):
        s["model"][part][key] = value(s["model"][part][key])

    return change


def _set(key, value):
    def change(s):
        s[key] = value(s) if callable(value) else value

    return change


def _set_in(outer, key, value):
    def change(s):
        s[outer][key] = value(s[outer][key])

    return change


def _extra(s):
    s["model"]["client"]["extra"] = torch.zeros(3)


def _drop_buffers(s):
    del s["model"]["client"]["buffers"]


MALFORMED = {
    "missing server part": (_pop_part("server"), "model.server"),
    "missing history": (_pop("history"), "history"),
    "a list where a dict belongs": (_set_part("client", lambda s: list(s.values())), "model.client"),
    "the whole payload a list": (lambda s: list(s.values()), "dict"),
    "a tensor as a list": (_set_in_part("client", "params", lambda t: t.tolist()), "model.client.params"),
    "a tensor one element short": (_set_in_part("server", "params", lambda t: t[:-1]), "model.server.params"),
    "a tensor of float64": (_set_in_part("server", "params", lambda t: t.double()), "model.server.params"),
    "a missing part of the state": (_drop_buffers, "model.client.buffers"),
    "an unexpected part of the state": (_extra, "model.client.extra"),
    "the round as text": (_set("round", "2"), "round"),
    "history a dict": (_set("history", {}), "history"),
    "history shorter than the rounds": (_set("history", lambda s: s["history"][:1]), "history"),
    "a round out of order in history": (
        _set("history", lambda s: [s["history"][1], s["history"][0]]),
        "history",
    ),
    "a sampler of another client count": (_set_in("streams", "pos", lambda p: p[:-1]), "streams.pos"),
    "another algorithm's checkpoint": (_set("algorithm", "sfl_v1"), "sfl_v1"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_a_checkpoint_of_the_wrong_structure_is_refused_with_one_line(run_dir, capsys, case):
    change, word = MALFORMED[case]
    rewrite(run_dir / "checkpoints" / f"{ALGO}.pt", change)
    assert_refused(run_dir, capsys, word)


@pytest.mark.parametrize("changes", [{"cut_layer": 1}, {"model": "cnn4"}], ids=["cut_layer", "model"])
def test_another_runs_checkpoint_is_refused(run_dir, capsys, tmp_path, changes):
    other = tmp_path / "other"
    base = Config.from_toml(run_dir / "config.toml")
    run(base.replace(out=str(other), rounds=1, **changes))
    shutil.copy(other / "checkpoints" / f"{ALGO}.pt", run_dir / "checkpoints" / f"{ALGO}.pt")
    key = next(iter(changes))
    assert_refused(run_dir, capsys, key)


def _edit_config(run_dir, **changes):
    path = run_dir / "config.toml"
    path.write_text(Config.from_toml(path).replace(**changes).to_toml())


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("lr", 0.1, "lr (0.01 -> 0.1)"),
        ("clients", 5, "clients (4 -> 5)"),
        ("seed", 3, "seed (0 -> 3)"),
        ("non_iid_ratio", 0.5, "non_iid_ratio (0.8 -> 0.5)"),
    ],
)
def test_an_edited_config_toml_is_refused_naming_old_and_new_values(run_dir, capsys, key, value, shown):
    _edit_config(run_dir, **{key: value})
    assert_refused(run_dir, capsys, shown)


def test_an_edited_config_toml_may_grow_the_rounds_but_not_shrink_them(run_dir, capsys):
    _edit_config(run_dir, rounds=1)
    code, err = main(["run", "--out", str(run_dir), "--resume"]), capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fewer rounds (1)" in err, err
    _edit_config(run_dir, rounds=3)
    code, err = main(["run", "--out", str(run_dir), "--resume"]), capsys.readouterr().err
    assert code == 0, err
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 3


# --- the servers' state files -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A finished deployment (every role in a thread of this process): its file and state files."""
    tmp = tmp_path_factory.mktemp("deployed")
    config_file, _, _ = deployment(tmp, tiny_config(tmp, rounds=2, momentum=0.5))
    run_in_threads(config_file)
    return tmp


@pytest.fixture
def deploy_dir(deployed, tmp_path):
    shutil.copytree(deployed, tmp_path, dirs_exist_ok=True)
    text = (tmp_path / "deploy.toml").read_text().replace(str(deployed), str(tmp_path))
    (tmp_path / "deploy.toml").write_text(text)
    return tmp_path


def start(deploy_dir, role):
    """The role's service as a restart builds it (it reads its state file), without serving."""
    cfg, deploy = load(deploy_dir / "deploy.toml")
    setup = prepare(cfg.replace(resume=True))
    return MainServer(setup, deploy) if role == "main_server" else FedServer(setup, deploy)


def _edit_deployment(deploy_dir, old, new):
    path = deploy_dir / "deploy.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("role", ["main_server", "fed_server"])
def test_a_restarted_server_resumes_from_an_untouched_state_file(deploy_dir, role):
    assert start(deploy_dir, role).round == 3


@pytest.mark.parametrize("role", ["main_server", "fed_server"])
def test_a_restarted_server_with_another_experiment_config_refuses(deploy_dir, role):
    _edit_deployment(deploy_dir, "lr = 0.01\n", "lr = 0.1\n")
    with pytest.raises(SplitfedError, match=rf"{role}.pt.*lr \(0.01 -> 0.1\)"):
        start(deploy_dir, role)


@pytest.mark.parametrize("role", ["main_server", "fed_server"])
def test_a_restarted_server_may_change_its_deploy_table(deploy_dir, role):
    _edit_deployment(deploy_dir, 'straggler_policy = "wait"', 'straggler_policy = "drop"')
    assert start(deploy_dir, role).round == 3


@pytest.mark.parametrize("role", ["main_server", "fed_server"])
def test_a_damaged_state_file_is_refused(deploy_dir, role):
    path = deploy_dir / "state" / f"{role}.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SplitfedError, match=rf"{role}.pt.*checksum"):
        start(deploy_dir, role)


@pytest.mark.parametrize("role", ["main_server", "fed_server"])
def test_non_finite_server_state_is_refused(deploy_dir, role):
    def poison(saved):
        saved["model"]["server"]["params"][0] = float("nan")

    rewrite(deploy_dir / "state" / f"{role}.pt", poison)
    with pytest.raises(SplitfedError, match=rf"{role}.pt.*model.server.params holds non-finite"):
        start(deploy_dir, role)


@pytest.mark.parametrize(
    "role, stranger",
    [
        ("main_server", "fed_server.pt"),
        ("fed_server", "main_server.pt"),
        ("fed_server", f"run/checkpoints/{ALGO}.pt"),
    ],
)
def test_a_state_file_of_another_kind_is_refused(deploy_dir, finished_run, role, stranger):
    source = (
        finished_run / "checkpoints" / f"{ALGO}.pt"
        if stranger.startswith("run")
        else deploy_dir / "state" / stranger
    )
    shutil.copy(source, deploy_dir / "state" / f"{role}.pt")
    with pytest.raises(SplitfedError, match=rf"{role}.pt"):
        start(deploy_dir, role)


def _bad_grads(saved):
    n = next(iter(saved["last"]))
    r, t, phase, reply, more = saved["last"][n]
    saved["last"][n] = (r, t, phase, {"smashed_grad": reply["smashed_grad"][:, :-1]}, more)


@pytest.mark.parametrize(
    "change, word",
    [
        (_bad_grads, "last"),
        (_set("last", []), "last"),
        (_set("dropped", {"a": 1}), "dropped"),
        (_set("info", None), "info"),
        (_pop("round"), "round"),
    ],
    ids=["a smashed_grad of the wrong shape", "last a list", "dropped a dict", "info none", "no round"],
)
def test_a_main_server_state_of_the_wrong_structure_is_refused(deploy_dir, change, word):
    rewrite(deploy_dir / "state" / "main_server.pt", change)
    with pytest.raises(SplitfedError, match=rf"main_server.pt.*{word}"):
        start(deploy_dir, "main_server")
