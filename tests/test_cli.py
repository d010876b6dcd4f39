"""User mistakes on the command line: one line on stderr, exit status 2, and no run directory left."""

import re
import subprocess
import sys

import pytest

from splitfed import Config, SplitfedError
from splitfed.cli import main

from .data.formats import write_fmnist

SMALL = [
    "--dataset",
    "synthetic",
    "--synthetic.shape",
    "1,8,8",
    "--synthetic.samples",
    "200",
    "--clients",
    "2",
    "--rounds",
    "1",
    "--local-iters",
    "1",
    "--algorithm",
    "fedavg",
    "--device",
    "cpu",
]


def bad_inputs(tmp_path):
    write_fmnist(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    (tmp_path / "malformed.toml").write_text("rounds = = 3\n")
    (tmp_path / "unknown.toml").write_text("rounds = 3\nlearning_rate = 0.1\n")
    (tmp_path / "badtype.toml").write_text('clients = "ten"\n')
    return {
        "unknown algorithm": (["--algorithm", "fedsgd"], "unknown algorithm 'fedsgd'; choose one of"),
        "unknown dataset": (["--dataset", "mnist"], "unknown dataset 'mnist'; choose one of"),
        "unknown model": (["--model", "vgg"], "unknown model 'vgg'; choose one of"),
        "unknown partition": (["--partition", "label"], "unknown partition 'label'; choose one of"),
        "cut out of range": (["--cut-layer", "4"], "cut_layer 4 is outside this model's range 1..3"),
        "p above 1": (["--non-iid-ratio", "1.5"], r"non_iid_ratio must be in \[0, 1\], got 1.5"),
        "p below 0": (["--non-iid-ratio", "-0.2"], r"non_iid_ratio must be in \[0, 1\]"),
        "too many clients": (["--clients", "5000"], "clients=5000 exceeds the 1438 training samples"),
        "fmnist missing": (
            ["--dataset", "fmnist", "--data-dir", str(tmp_path / "none")],
            "Fashion-MNIST not found",
        ),
        "fmnist corrupt": (
            ["--dataset", "fmnist", "--data-dir", str(tmp_path / "corrupt")],
            "cannot read IDX file",
        ),
        "cifar10 missing": (["--dataset", "cifar10", "--data-dir", str(tmp_path)], "CIFAR-10 not found in"),
        "malformed toml": (["--config", str(tmp_path / "malformed.toml")], "is not valid TOML"),
        "unknown key": (["--config", str(tmp_path / "unknown.toml")], "unknown config key 'learning_rate'"),
        "bad type in toml": (
            ["--config", str(tmp_path / "badtype.toml")],
            "clients in .* must be an integer",
        ),
        "missing toml": (["--config", str(tmp_path / "nope.toml")], "cannot read config file"),
        "zero rounds": (["--rounds", "0"], "rounds must be a positive integer, got 0"),
        "zero clients": (["--clients", "0"], "clients must be a positive integer"),
        "negative batch": (["--batch-size", "-4"], "batch_size must be a positive integer"),
        "zero lr": (["--lr", "0"], "lr must be a positive number"),
        "negative server lr": (["--server-lr", "-1"], "server_lr must be a positive number"),
        "not a number": (["--lr", "fast"], "--lr must be a number, got 'fast'"),
        "not an integer": (["--rounds", "2.5"], "--rounds must be an integer"),
        "unknown flag": (["--rounds-per-epoch", "3"], "unrecognized arguments"),
        "model arg": (["--model-arg", "norm=group"], "model digits_cnn has no argument 'norm'"),
        "model arg syntax": (["--model-arg", "norm"], "--model-arg takes KEY=VALUE"),
        "knob of another partition": (
            ["--partition", "iid", "--non-iid-ratio", "0.5"],
            "applies to partition",
        ),
    }


def test_every_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for name, (argv, message) in bad_inputs(tmp_path).items():
        out_dir = tmp_path / "run"
        with pytest.raises(SystemExit) as exit_info:  # argparse exits; the rest return
            raise SystemExit(main(["run", *argv, "--out", str(out_dir)]))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, name
        assert err.count("\n") == 1 and err.startswith("splitfed: error: "), (name, err)
        assert "Traceback" not in err
        assert re.search(message, err), (name, err)
        assert not out_dir.exists(), f"{name}: a run directory was left behind"


def test_resume_needs_a_run_directory(capsys):
    assert main(["run", "--resume"]) == 2
    assert capsys.readouterr().err == "splitfed: error: --resume needs --out DIR naming the run to continue\n"


def test_main_leaves_the_splitfed_logger_as_it_found_it(capsys):
    import logging

    log = logging.getLogger("splitfed")
    before = list(log.handlers), log.level, log.propagate
    assert main(["run", "--rounds", "0"]) == 2  # a mistake: main returns early, through its cleanup
    assert (list(log.handlers), log.level, log.propagate) == before


def test_the_installed_command_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "splitfed.cli", "run", "--cut-layer", "9", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "cut_layer 9 is outside this model's range 1..3" in proc.stderr


def test_flags_override_the_config_file_and_resume_reads_the_run_config(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text('rounds = 5\nalgorithm = ["fedavg"]\nlr = 0.05\n')
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), *SMALL, "--rounds", "2", "--out", str(out)]) == 0
    saved = (out / "config.toml").read_text()
    assert "rounds = 2\n" in saved and "lr = 0.05\n" in saved
    assert (out / "metrics.jsonl").read_text().count("\n") == 2
    # --resume needs only the directory; extending the rounds is allowed, changing the setup is not
    assert main(["run", "--out", str(out), "--resume", "--rounds", "3"]) == 0
    assert (out / "metrics.jsonl").read_text().count("\n") == 3
    assert main(["run", "--out", str(out), "--resume", "--lr", "0.2"]) == 2
    assert "different config: lr (0.05 -> 0.2)" in capsys.readouterr().err


def test_run_prints_progress_and_the_comparison_table(tmp_path, capsys):
    argv = [
        "run",
        *SMALL[:-6],
        "--algorithm",
        "minibatch_sfl,fedavg",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[minibatch_sfl] round   1/1" in out and "ETA" in out
    table = out[out.index("algorithm ") :]
    assert "minibatch_sfl" in table and "fedavg" in table and "final acc" in table


def test_list_shows_the_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "minibatch_sfl" in out and "resnet18" in out and "non_iid_ratio" in out and "fmnist" in out


def test_a_user_error_is_not_preceded_by_warnings(tmp_path):
    """An input too small for cnn4 makes torch warn ("Initializing zero-element tensors") on its way
    to the error: the user sees the error's one line only."""
    argv = ["run", *SMALL[:3], "1,2,2", *SMALL[4:], "--model", "cnn4", "--out", str(tmp_path / "x")]
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-m", "splitfed.cli", *argv],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("splitfed: error: model cnn4 cannot take synthetic inputs [1, 2, 2]")
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_warnings_of_a_command_that_succeeds_are_shown(monkeypatch):
    import warnings

    from splitfed import cli

    def warns_then(result):
        def command(args):
            warnings.warn("something the user should know", UserWarning, stacklevel=1)
            if result == "error":
                raise cli.SplitfedError("a mistake")
            return 0

        return command

    monkeypatch.setattr(cli, "_cmd_list", warns_then("ok"))
    with pytest.warns(UserWarning, match="something the user should know"):
        assert main(["list"]) == 0
    monkeypatch.setattr(cli, "_cmd_list", warns_then("error"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["list"]) == 2
    assert not seen


def test_run_help_shows_each_flags_type_default_and_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    for expected in (
        "--rounds INT rounds (fed-server aggregations) (default: 20)",
        "--lr FLOAT learning rate of both sides (default: 0.01)",
        "--non-iid-ratio P",
        "--synthetic.shape C,H,W",
        "--out DIR",
        "--algorithm LIST",
        "(choices: equal, proportional; default: equal)",
        "(choices: float32, float16, bfloat16; default: float32)",
        "--dataset NAME data set, PATH.pt (a torch.save'd dict of tensors) or DIR of client_<i>.pt "
        "(docs/api.md) (choices: digits, fmnist, cifar10, synthetic; default: digits)",
        "choices: non_iid_ratio, iid, shards, dirichlet",
    ):
        assert expected in text, expected
    assert " X " not in text


def test_help_and_validation_share_the_choice_lists():
    from splitfed.config import CHOICES

    needs = {
        "step": {"lr_decay.step_size": 2},
        "exponential": {"lr_decay.gamma": 0.5},
    }  # of any side's lr_schedule
    for name, allowed in CHOICES.items():
        for value in allowed:
            schedule = needs.get(value, {}) if name.endswith("lr_schedule") else {}
            extra = {"batch_alloc": "equal"} if name == "execution" else schedule
            Config(**{name: value}, **extra)
        with pytest.raises(SplitfedError, match=f"{name} must be one of {', '.join(allowed)}"):
            Config(**{name: "nonsense"})


def test_list_reads_the_registries_from_the_source_and_agrees_with_them():
    # `splitfed list` and --help read the built-in names without importing torch; they must be the names
    # the registries hold once the package is imported.
    from splitfed.algorithms import ALGORITHMS
    from splitfed.data import DATASETS, PARTITIONS
    from splitfed.models import MODELS
    from splitfed.registry import builtin_entries

    entries = builtin_entries()
    registries = {"algorithm": ALGORITHMS, "dataset": DATASETS, "partition": PARTITIONS, "model": MODELS}
    for kind, registry in registries.items():
        builtin = {name for name, _ in entries[kind]}
        assert builtin <= set(registry) and builtin, kind
        assert builtin == {n for n in registry if not n.startswith("test_")}, kind  # tests add their own
    code = "import sys, splitfed.cli; splitfed.cli.main(['list']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False") and "minibatch_sfl" in out and "cnn4" in out
