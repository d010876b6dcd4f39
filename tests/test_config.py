import pytest

from splitfed import Config, SplitfedError
from splitfed.config import ALL_ALGORITHMS
from splitfed.sections import SETTINGS


def test_defaults_are_the_embedded_demo():
    c = Config()
    assert c.dataset == "digits" and c.clients == 10 and c.algorithm == ALL_ALGORITHMS
    assert (c.batch_size, c.lr, c.local_epochs, c.momentum) == (32, 0.01, 5, 0.0)  # spec §7


def test_toml_round_trip(tmp_path):
    c = Config(
        algorithm=("minibatch_sfl", "fedavg"),
        model_args={"norm": "group", "width": 8},
        partition="dirichlet",
        dirichlet_alpha=0.3,
        lr=0.05,
        cut_layer=2,
        dataset="synthetic",
        synthetic={"shape": (3, 32, 32)},
    )
    path = tmp_path / "c.toml"
    path.write_text(c.to_toml())
    assert Config.from_toml(path) == c


def test_python_values_are_type_checked_and_normalised():
    assert Config(lr=1).lr == 1.0 and isinstance(Config(lr=1).lr, float)
    assert Config(algorithm="fedavg").algorithm == ("fedavg",)
    with pytest.raises(SplitfedError, match="rounds must be an integer"):
        Config(rounds=2.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"batch_size": -1}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"non_iid_ratio": 1.01}, r"non_iid_ratio must be in \[0, 1\]"),
        ({"non_iid_ratio": -0.1}, r"non_iid_ratio must be in \[0, 1\]"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"clients_per_round": 11}, "exceeds clients"),
        (
            {"minibatch_sfl": {"client_grad_scale": "sum"}},
            "minibatch_sfl.client_grad_scale must be one of local_mean, global_mean",
        ),
        ({"sfl_v2": {"schedule": "x"}}, "sfl_v2.schedule must be one of"),
        ({"partition": "iid", "non_iid_ratio": 0.5}, "non_iid_ratio applies to partition=non_iid_ratio"),
        ({"dirichlet_alpha": 0.5}, "dirichlet_alpha applies to partition=dirichlet"),
        ({"synthetic": {"samples": 10}}, "synthetic.samples applies to dataset=synthetic"),
        ({"device": "tpu"}, "device must be cpu, cuda"),
        ({"algorithm": ("sl", "sl")}, "lists a name twice"),
        ({"cut_layer": 0}, "cut_layer must be a positive integer"),
    ],
)
def test_out_of_range_values_are_refused(changes, message):
    with pytest.raises(SplitfedError, match=message):
        Config(**changes)


def test_unknown_key_and_bad_type_in_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("rounds = 3\nroundz = 4\n")
    with pytest.raises(SplitfedError, match="unknown config key 'roundz'"):
        Config.from_toml(path)
    path.write_text('rounds = "many"\n')
    with pytest.raises(SplitfedError, match="rounds in .* must be an integer, got 'many'"):
        Config.from_toml(path)
    path.write_text("rounds = [\n")
    with pytest.raises(SplitfedError, match="not valid TOML"):
        Config.from_toml(path)
    with pytest.raises(SplitfedError, match="cannot read config file"):
        Config.from_toml(tmp_path / "missing.toml")


def test_seeds_per_purpose_default_to_the_seed():
    c = Config(seed=3, init_seed=9)
    assert (c.seed_for("partition"), c.seed_for("init"), c.seed_for("sampling")) == (3, 9, 3)


def test_every_shipped_experiment_config_is_valid():
    from pathlib import Path

    from splitfed.config import read_toml
    from splitfed.sweep import expand
    from splitfed.sweep_report import load_claims

    root = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(p for p in root.glob("**/*.toml") if "results" not in p.relative_to(root).parts)
    assert files
    for path in files:
        if path.name.startswith("claims"):
            assert load_claims(path).algorithm, path  # what the report checks a sweep against
        elif "grid" in read_toml(path):
            assert expand(path, "runs/x"), path  # sweep grids
        else:
            Config.from_toml(path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('rounds = "1"', "an integer"),
        ('lr = "0.1"', "a number"),
        ('resume = "true"', "true or false"),
        ('cut_layer = "3"', "an integer or a module's name or none"),
        ('synthetic.shape = "1,8,8"', "a list of integers or none"),
    ],
)
def test_a_file_string_is_not_parsed_as_a_number(tmp_path, line, expected):
    """Only command-line flags are text to parse; in a TOML file the value's own type must fit."""
    path = tmp_path / "c.toml"
    path.write_text('dataset = "synthetic"\n' + line + "\n")
    key = line.split()[0]
    with pytest.raises(SplitfedError, match=rf"^{key} in {path} must be {expected}, got '.*' \(a string"):
        Config.from_toml(path)


def test_python_callers_get_no_string_parsing():
    with pytest.raises(SplitfedError, match="rounds must be an integer, got '1'"):
        Config(rounds="1")
    with pytest.raises(SplitfedError, match="lr must be a number"):
        Config(lr="0.1")


def test_command_line_strings_are_parsed():
    from dataclasses import fields

    from splitfed.config import coerce

    f = {x.name: x for x in fields(Config)}
    assert coerce(f["rounds"], "3", "--rounds", from_cli=True) == 3
    assert coerce(f["cut_layer"], "none", "--cut-layer", from_cli=True) is None
    shape = SETTINGS["synthetic.shape"]
    assert coerce(shape, "3x32x32", "--synthetic.shape", from_cli=True) == (3, 32, 32)
    assert coerce(f["algorithm"], "sl,fedavg", "--algorithm", from_cli=True) == ("sl", "fedavg")


def test_unreadable_toml_files_are_one_error(tmp_path):
    cases = {
        "not utf-8": b"rounds = 3\n\xff\xfe = 1\n",
        "deeply nested": b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "nested tables": b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n",
        "huge": b"# " + b"x" * (2 << 20) + b"\n",
    }
    messages = {
        "not utf-8": r"is not UTF-8 text \(byte 11 is 0xff\)",
        "deeply nested": "nests arrays or tables too deeply",
        "nested tables": "nests arrays or tables too deeply",
        "huge": "is larger than 1 MiB",
    }
    for name, raw in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_bytes(raw)
        with pytest.raises(SplitfedError, match=messages[name]):
            Config.from_toml(path)
    with pytest.raises(SplitfedError, match="contains a NUL byte"):
        Config.from_toml(str(tmp_path / "a\0b.toml"))
    with pytest.raises(SplitfedError, match="cannot read config file .*: Is a directory"):
        Config.from_toml(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"out": "runs/a\0b"}, "out 'runs/a\\\\x00b' contains a NUL byte"),
        ({"data_dir": "\0"}, "data_dir .* contains a NUL byte"),
        ({"out": "runs/\udcff"}, "out .* is not valid UTF-8 text"),
        ({"model_args": {"norm": "\udcff"}}, "model_args .* is not valid UTF-8 text"),
        ({"device": "cudax"}, "device must be cpu, cuda, cuda:N or auto"),
        ({"device": "cuda:abc"}, "device must be"),
        ({"threads": 2**31}, "threads=2147483648 asked; at most"),
    ],
)
def test_values_no_file_or_machine_can_hold_are_refused(changes, message):
    with pytest.raises(SplitfedError, match=message):
        Config(**changes)


def test_config_toml_holds_any_text_exactly(tmp_path):
    c = Config(out='runs/a\nb\t"c"\\d\x7f\x01 é', model_args={"odd key": "x\ny", "width": 3})
    path = tmp_path / "c.toml"
    path.write_text(c.to_toml())
    assert Config.from_toml(path) == c


def test_one_loader_reads_any_settings_table_into_its_dataclass():
    """typed.from_table: a dataclass of any module from a file's table, with the config's one-line errors
    (string annotations resolved, as under ``from __future__ import annotations``)."""
    from dataclasses import dataclass

    from splitfed.typed import from_table

    @dataclass(frozen=True)
    class Site:
        host: "str" = "localhost"
        retry_s: "float" = 30.0
        ids: "tuple[int, ...] | None" = None

    assert from_table(Site, {"retry_s": 5, "ids": [1, 2]}, "s.toml") == Site("localhost", 5.0, (1, 2))
    with pytest.raises(
        SplitfedError, match=r"^unknown deploy key 'port' in s.toml; valid keys: host, retry_s, ids$"
    ):
        from_table(Site, {"port": 1}, "s.toml", kind="deploy")
    with pytest.raises(
        SplitfedError, match=r"^deploy.ids in s.toml must be a list of integers or none, got 'x'"
    ):
        from_table(Site, {"ids": "x"}, "s.toml", kind="deploy", prefix="deploy.")


def test_each_list_of_values_is_defined_once():
    from splitfed import choices
    from splitfed.config import CHOICES
    from splitfed.engine.link import WIRE_DTYPES
    from splitfed.engine.optim import OPTIMIZERS

    assert CHOICES["optimizer"] is choices.OPTIMIZERS is OPTIMIZERS
    assert CHOICES["client_lr_schedule"] is CHOICES["lr_schedule"] is choices.LR_SCHEDULES
    assert tuple(WIRE_DTYPES) == CHOICES["wire_dtype"]


def test_the_loader_reads_lists_of_tables_and_names_what_is_missing():
    from dataclasses import dataclass, field

    from splitfed.typed import from_table

    @dataclass(frozen=True)
    class Figure:
        baseline: str
        margin: float
        where: dict[str, float] = field(default_factory=dict)

    @dataclass(frozen=True)
    class Claims:
        algorithm: str | None = None
        paper: tuple[Figure, ...] = ()

    table = {"algorithm": "sl", "paper": [{"baseline": "fedavg", "margin": 3, "where": {"p": 0.5}}]}
    assert from_table(Claims, table, "c.toml") == Claims("sl", (Figure("fedavg", 3.0, {"p": 0.5}),))
    cases = [
        ({"paper": [{"margin": 1}]}, "^paper\\[0\\] in c.toml needs baseline$"),
        (
            {"paper": [{"baseline": "x", "margin": 1, "y": 2}]},
            "^unknown paper\\[0\\] key 'y' in c.toml; valid",
        ),
        ({"paper": 3}, "^paper in c.toml must be a list of tables, got 3$"),
        ({"paper": [3]}, "^paper\\[0\\] in c.toml must be a table, got 3$"),
    ]
    for bad, message in cases:
        with pytest.raises(SplitfedError, match=message):
            from_table(Claims, bad, "c.toml")
