"""The config's sections ([sfl_v2] schedule, ...): read from TOML, from the flat old keys (with a note),
from the command line; a mistake is one line naming section.key; run ids are those of the flat names."""

import logging

import pytest

from splitfed import Config, SplitfedError
from splitfed import sections as sections_module
from splitfed.algorithms.base import check_knobs, knob_set
from splitfed.analysis.ids import run_id
from splitfed.cli import build_parser, config_from_args
from splitfed.sections import LEGACY, SETTINGS, SflV2
from splitfed.sweep import expand

# ids computed by splitfed before the sections (flat fields), for the same settings as LEGACY_A, LEGACY_B
LEGACY_A = dict(
    sflv2_schedule="interleaved",
    prox_mu=0.1,
    fed_lr=0.03,
    divergence_every=0,
    algorithm=("sfl_v2", "fedavgm"),
)
ID_A = "0722578a0f26"
LEGACY_B = dict(
    dataset="synthetic",
    synthetic_shape=(1, 8, 8),
    synthetic_samples=100,
    lr_schedule="step",
    lr_step_size=2,
    lr_gamma=0.5,
    control_variates=True,
    client_grad_scale="global_mean",
    tail_cut=3,
    fed_betas=(0.8, 0.9),
    fed_eps=0.01,
    fed_momentum=0.5,
    divergence_samples=10,
    divergence_clients=2,
)
ID_B = "517234c9be4d"
SECTIONED_B = dict(
    dataset="synthetic",
    synthetic={"shape": (1, 8, 8), "samples": 100},
    lr_schedule="step",
    lr_decay={"step_size": 2, "gamma": 0.5},
    correction={"control_variates": True},
    minibatch_sfl={"client_grad_scale": "global_mean"},
    ushaped_sl={"tail_cut": 3},
    fed_optimizer={"betas": (0.8, 0.9), "eps": 0.01, "momentum": 0.5},
    divergence={"samples": 10, "clients": 2},
)


@pytest.fixture
def notes(caplog, monkeypatch):
    """The deprecation notes logged (each name is noted once per process: start afresh)."""
    monkeypatch.setattr(sections_module, "_NOTED", set())
    caplog.set_level(logging.WARNING, logger="splitfed")
    return lambda: [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_every_flat_name_maps_to_one_section_key():
    assert sorted(LEGACY.values()) == sorted(SETTINGS)
    c = Config(**SECTIONED_B)
    assert {old: c.get(path) for old, path in LEGACY.items()} == {old: c.to_dict()[old] for old in LEGACY}


def test_a_section_from_toml_tables_inline_tables_and_dotted_keys(tmp_path, notes):
    for text in (
        '[sfl_v2]\nschedule = "interleaved"\n',
        'sfl_v2 = {schedule = "interleaved"}\n',
        'sfl_v2.schedule = "interleaved"\n',
    ):
        path = tmp_path / "c.toml"
        path.write_text(text)
        assert Config.from_toml(path).sfl_v2 == SflV2(schedule="interleaved")
    assert notes() == []


def test_flat_old_keys_are_read_with_one_note_each(tmp_path, notes):
    path = tmp_path / "c.toml"
    path.write_text('sflv2_schedule = "interleaved"\nprox_mu = 0.1\n')
    c = Config.from_toml(path)
    assert (c.sfl_v2.schedule, c.correction.prox_mu) == ("interleaved", 0.1)
    Config.from_toml(path)
    Config(sflv2_schedule="interleaved")
    assert notes() == [
        "note: config key sflv2_schedule is deprecated: it is now sfl_v2.schedule (in a file, [sfl_v2] "
        "schedule = ...; the flag --sfl-v2.schedule)",
        "note: config key prox_mu is deprecated: it is now correction.prox_mu (in a file, [correction] "
        "prox_mu = ...; the flag --correction.prox-mu)",
    ]


def test_python_callers_and_replace_take_every_spelling(notes):
    new = Config(sfl_v2={"schedule": "interleaved"})
    assert Config(sfl_v2=SflV2("interleaved")) == new
    assert Config().replace(**{"sfl_v2.schedule": "interleaved"}) == new
    assert Config().replace(sflv2_schedule="interleaved") == new
    # a key replaced keeps the section's other keys
    both = Config(fed_optimizer={"lr": 0.1, "eps": 0.01}).replace(**{"fed_optimizer.lr": 0.2})
    assert (both.fed_optimizer.lr, both.fed_optimizer.eps) == (0.2, 0.01)
    assert len(notes()) == 1


def test_a_run_directorys_own_config_toml_is_read_without_a_note(tmp_path, notes):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('sflv2_schedule = "interleaved"\ndivergence_every = 0\n')
    c = Config.from_toml(run / "config.toml")
    assert (c.sfl_v2.schedule, c.divergence.every) == ("interleaved", 0)
    assert notes() == []


def test_to_toml_writes_sections_and_reads_back(tmp_path, notes):
    c = Config(**SECTIONED_B)
    text = c.to_toml()
    assert "\n[fed_optimizer]\nmomentum = 0.5\nbetas = [0.8, 0.9]\neps = 0.01\n" in text
    assert "fed_lr" not in text and "[sfl_v2]\nschedule = " in text
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert Config.from_toml(path) == c
    assert notes() == []


def test_the_command_line_takes_section_flags_and_the_old_ones(notes):
    parser = build_parser()
    new = config_from_args(
        parser.parse_args(
            [
                "run",
                "--sfl-v2.schedule",
                "interleaved",
                "--lr-decay.gamma",
                "0.5",
                "--lr-schedule",
                "exponential",
                "--correction.control-variates",
            ]
        )
    )
    old = config_from_args(
        parser.parse_args(
            [
                "run",
                "--sflv2-schedule",
                "interleaved",
                "--lr-gamma",
                "0.5",
                "--lr-schedule",
                "exponential",
                "--control-variates",
            ]
        )
    )
    assert new == old
    assert (new.sfl_v2.schedule, new.lr_decay.gamma, new.correction.control_variates) == (
        "interleaved",
        0.5,
        True,
    )
    assert len(notes()) == 3
    help_text = parser._subparsers._group_actions[0].choices["run"].format_help()
    assert "[sfl_v2]:" in help_text and "--sfl-v2.schedule NAME" in help_text
    assert "--sflv2-schedule" not in help_text  # the old flags work, unlisted


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sfl_v2]\norder = 1\n", r"^unknown sfl_v2 key 'order' in .*c\.toml; valid keys: schedule$"),
        (
            '[sfl_v2]\nschedule = "x"\n',
            r"^sfl_v2\.schedule must be one of client_sequential, interleaved; got 'x'$",
        ),
        ("[fed_optimizer]\nlr = -1\n", r"^fed_optimizer\.lr must be a positive number"),
        (
            '[divergence]\nevery = "5"\n',
            r"^divergence\.every in .*c\.toml must be an integer, got '5' \(a string",
        ),
        ("sfl_v2 = 3\n", r"^sfl_v2 in .*c\.toml must be a table of schedule, got 3$"),
        ('lr_schedule = "step"\n', r"^lr_schedule=step needs lr_decay\.step_size$"),
        (
            'sflv2_schedule = "interleaved"\n[sfl_v2]\nschedule = "client_sequential"\n',
            r"^sfl_v2\.schedule is given twice: in \[sfl_v2\] and as sflv2_schedule$",
        ),
    ],
)
def test_a_bad_section_key_is_one_line(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(SplitfedError, match=message):
        Config.from_toml(path)


def test_run_ids_are_those_of_the_flat_names(notes):
    assert run_id(Config(**LEGACY_A)) == ID_A
    sectioned_a = dict(
        sfl_v2={"schedule": "interleaved"},
        correction={"prox_mu": 0.1},
        fed_optimizer={"lr": 0.03},
        divergence={"every": 0},
        algorithm=("sfl_v2", "fedavgm"),
    )
    assert run_id(Config(**sectioned_a)) == ID_A
    assert run_id(Config(**LEGACY_B)) == run_id(Config(**SECTIONED_B)) == ID_B
    assert Config(**LEGACY_B).run_identity()["sflv2_schedule"] == "client_sequential"


def test_a_grid_varies_a_section_key_by_its_path(tmp_path, notes):
    base = 'dataset = "synthetic"\nalgorithm = "sfl_v2"\n'
    new, old = tmp_path / "new.toml", tmp_path / "old.toml"
    new.write_text(base + '[[grid]]\n"sfl_v2.schedule" = ["client_sequential", "interleaved"]\n')
    old.write_text(base + '[[grid]]\nsflv2_schedule = ["client_sequential", "interleaved"]\n')
    points = expand(new, tmp_path / "a")
    assert [p.config.sfl_v2.schedule for p in points] == ["client_sequential", "interleaved"]
    assert [p.varied for p in points] == [
        {"sfl_v2.schedule": "client_sequential"},
        {"sfl_v2.schedule": "interleaved"},
    ]
    assert [p.name for p in points] == [p.name for p in expand(old, tmp_path / "b")]
    dotted = tmp_path / "dotted.toml"  # a TOML dotted key in the grid: the same path
    dotted.write_text(base + '[[grid]]\nsfl_v2.schedule = ["client_sequential", "interleaved"]\n')
    assert [(p.name, p.varied) for p in expand(dotted, tmp_path / "c")] == [
        (p.name, p.varied) for p in points
    ]
    assert len(notes()) == 1


def test_a_correction_and_a_fed_optimizer_knob_are_named_by_their_path():
    c = Config(algorithm=("minibatch_sfl",), correction={"prox_mu": 0.1})
    assert knob_set(c, "correction.prox_mu") and not knob_set(c, "correction.control_variates")
    check_knobs(c)  # a correction: any algorithm takes it
    with pytest.raises(SplitfedError, match=r"^fed_optimizer\.lr applies to .*fedavgm.* only"):
        check_knobs(Config(algorithm=("minibatch_sfl",), fed_optimizer={"lr": 0.1}))


def test_a_run_written_with_flat_keys_resumes_quietly(tmp_path, notes):
    """A run from before the sections: its config.toml has the flat names; --resume reads it as it is."""
    from splitfed import run
    from splitfed.sections import flatten
    from splitfed.typed import dump_toml, read_toml

    from .conftest import small_config

    out = tmp_path / "run"
    config = small_config(algorithm=("fedavg",), rounds=1, divergence={"every": 0}, out=str(out))
    run(config, progress=False)
    flat = flatten(read_toml(out / "config.toml"))  # as splitfed wrote it before the sections
    assert "divergence_every" in flat and "divergence" not in flat
    (out / "config.toml").write_text(dump_toml(flat))
    result = run(config.replace(rounds=2, resume=True), progress=False)
    assert [r["round"] for r in result.history] == [1, 2]
    assert notes() == []
    assert "[divergence]\nevery = 0\n" in (out / "config.toml").read_text()  # written with sections now


def test_a_deployment_file_holds_sections_and_reads_back_quietly(tmp_path, notes):
    from splitfed.services.deploy import Deployment, load, write_config

    config = Config(algorithm=("minibatch_sfl",), clients=3, sfl_v2={"schedule": "interleaved"}, out="r")
    path = write_config(tmp_path / "site.toml", config, Deployment())
    assert "[sfl_v2]\nschedule = " in path.read_text() and "resume" not in path.read_text()
    assert load(path)[0].replace(out="r") == config
    assert notes() == []
