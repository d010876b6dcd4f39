"""A study as tables: run ids, the exact round trip of a run directory through runs.csv, metrics.csv.gz and
partitions.csv, a sweep that resumes from tables alone, and one report from tables and from directories."""

import csv
import dataclasses
import gzip
import json
import math
import shutil
from pathlib import Path

import pytest

from splitfed import Config, SplitfedError
from splitfed.analysis import codec, ids, load_study, report, tables
from splitfed.cli import main
from splitfed.config import MACHINE_FIELDS

# --- run ids


def test_a_run_id_is_a_digest_of_the_settings_that_differ_from_their_defaults():
    base = Config(algorithm=("fedavg",), lr=0.05, model_args={"width": 16, "depth": 2})
    rid = ids.run_id(base)
    assert len(rid) == 12 and int(rid, 16) >= 0
    assert ids.run_id(Config(model_args={"depth": 2, "width": 16}, lr=0.05, algorithm=("fedavg",))) == rid
    assert ids.run_id(base.replace(lr=0.01)) != rid  # a deciding value
    assert ids.run_id(base.replace(model_args={"width": 16.0, "depth": 2})) != rid  # 16 and 16.0 differ
    assert ids.run_id(base.replace(seed=1)) != rid
    elsewhere = {"data_dir": "/d", "device": "cpu", "threads": 2, "processes": 2, "execution": "sequential"}
    elsewhere |= {"cuda_graphs": False, "deterministic": True, "out": "/o", "resume": True, "model_every": 3}
    elsewhere |= {"figures": False, "channels_last": True}
    assert set(elsewhere) == MACHINE_FIELDS
    for name, value in elsewhere.items():  # where or how it executed never matters
        assert ids.run_id(base.replace(**{name: value})) == rid, name
    # a setting left at its default is not in the digest: the id of a run is the same before and after a
    # field with a default is added to Config (here: the digest of the deciding settings alone)
    assert ids.deciding_settings(base) == {
        "algorithm": ("fedavg",),
        "lr": 0.05,
        "model_args": base.model_args,
    }
    assert ids.run_id(
        base.replace(lr=Config().lr, algorithm=Config().algorithm, model_args={})
    ) == ids.digest({})


def test_a_new_field_with_a_default_renames_no_run(monkeypatch):
    base = Config(algorithm=("sl",), rounds=3)
    before = ids.run_id(base)

    @dataclasses.dataclass(frozen=True)
    class Later(Config):  # a later splitfed, with one more field
        new_knob: float = 0.5

    monkeypatch.setattr(ids, "Config", Later)
    later = Later(algorithm=("sl",), rounds=3)
    assert ids.run_id(later) == before
    assert ids.run_id(dataclasses.replace(later, new_knob=0.7)) != before


# --- a run directory through the tables and back

RECORDS = [
    {
        "algorithm": "fedavg",
        "round": 1,
        "test_accuracy": 0.5,
        "test_accuracy_per_class": [0.25, 1.0, 0.0],
        "participants": 2,
        "client_flops": 0.0,
        "bytes": {},
        "client_bytes_up": [3, 0],
        "train_loss": float("nan"),
        "stopped": False,
        "extra": None,
    },
    {
        "algorithm": "fedavg",
        "round": 2,
        "test_accuracy": 0.1 + 0.2,
        "test_accuracy_per_class": [],
        "participants": 2,
        "bytes": {"c.client": 7, "100%": 1, "smashed": 12},
        "client_bytes_up": [1e300, -0.0],
        "train_loss": float("inf"),
    },
    {"algorithm": "sl", "round": 1},  # a record of no metric
]


def _run_dir(path: Path, status: str = "finished") -> Path:
    path.mkdir(parents=True)
    config = Config(algorithm=("fedavg", "sl"), rounds=2, clients=2, lr=0.1, model_args={"width": 4})
    (path / "config.toml").write_text(config.replace(out=str(path)).to_toml())
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (path / "partition.csv").write_text("client,samples,class_0,class_1\r\n0,3,1,2\r\n1,4,4,0\r\n")
    (path / "data.json").write_text(json.dumps({"in_shape": [1, 8, 8], "num_classes": 2, "loss": "x"}))
    (path / "provenance.json").write_text(json.dumps([{"commit": "abc", "clean": True, "torch": "2.5"}]))
    if status == "finished":
        (path / "summary.csv").write_text("algorithm,rounds\nfedavg,2\nsl,2\n")
    else:
        (path / "diverged.txt").write_text("fedavg diverged in round 3\n")
    return path


def test_a_run_directory_goes_into_the_tables_and_back_exactly(tmp_path):
    run_dir = _run_dir(tmp_path / "study" / "some-old-name")
    assert tables.pack_study(tmp_path / "study") == ["some-old-name"]
    shutil.rmtree(run_dir)
    (row,) = tables.read_runs(tmp_path / "study")
    expected = Config(algorithm=("fedavg", "sl"), rounds=2, clients=2, lr=0.1, model_args={"width": 4})
    assert row["run"] == ids.run_id(expected) and row["status"] == "finished" and row["rounds_done"] == "3"
    assert row["algorithm"] == '["fedavg","sl"]' and row["lr"] == "0.1" and row["dataset"] == "digits"
    assert row["model_args"] == '{"width":4}' and row["model"] == "" and row["data.in_shape"] == "[1,8,8]"
    assert row["prov_commit"] == "abc" and row["prov_clean"] == "true" and row["prov_cuda"] == ""
    (run,) = load_study(tmp_path / "study")
    assert Config.from_dict({k: v for k, v in run.config.items() if v is not None}) == expected
    assert len(run.records) == len(RECORDS) and all(map(codec.same_record, run.records, RECORDS))
    assert math.isnan(run.records[0]["train_loss"]) and run.records[1]["client_bytes_up"][1] == -0.0
    assert isinstance(run.records[0]["participants"], int) and run.records[0]["bytes"] == {}
    assert tables.partition_of(tmp_path / "study", row["partition_id"]) == [
        ["client", "samples", "class_0", "class_1"],
        ["0", "3", "1", "2"],
        ["1", "4", "4", "0"],
    ]


def test_the_round_trip_check_fails_on_a_record_it_cannot_give_back(tmp_path):
    run_dir = _run_dir(tmp_path / "study" / "r")
    # a table whose keys read as a list's indices comes back as a list: packing refuses it
    record = {"algorithm": "fedavg", "round": 1, "bytes": {"0": 1, "1": 2}}
    (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(SplitfedError, match="does not flatten to a table and back exactly"):
        tables.pack_run(run_dir)


def test_config_cells_read_back_as_written():
    for value in [None, "", "fmnist", "true", "1", "null", "a,b", 0.1, 1.0, 3, True, [1, 8], {"w": 1}, "λ"]:
        assert json.dumps(codec.decode(codec.encode(value))) == json.dumps(value), value


def test_a_diverged_run_and_a_second_run_share_one_partition_row(tmp_path):
    _run_dir(tmp_path / "study" / "a", status="diverged")
    other = _run_dir(tmp_path / "other" / "b")
    (other / "config.toml").write_text(Config(algorithm=("fedavg", "sl"), rounds=2, lr=0.2).to_toml())
    tables.pack_study(tmp_path / "study")
    tables.update(tmp_path / "study", [tables.pack_run(other)])
    runs = {r["status"]: r for r in tables.read_runs(tmp_path / "study")}
    assert runs["diverged"]["note"] == "fedavg diverged in round 3" and "finished" in runs
    assert runs["diverged"]["partition_id"] == runs["finished"]["partition_id"]
    assert len(tables.read_partitions(tmp_path / "study")) == 1 + 2  # header + the partition's 2 clients
    with gzip.open(tmp_path / "study" / "metrics.csv.gz", "rt", newline="") as f:
        ordered = [row[0] for row in csv.reader(f)][1:]
    assert ordered == sorted(ordered)  # by run id, each run's rows in its file's order


# --- a sweep writes tables, resumes from them alone, and reports the same from tables as from directories

GRID = """
dataset = "synthetic"
synthetic_shape = [1, 8, 8]
synthetic_samples = 120
model = "digits_cnn"
cut_layer = 2
clients = 2
rounds = 2
local_iters = 1
batch_size = 8
divergence_every = 1
divergence_samples = 10
validation_samples = 16
device = "cpu"
figures = false  # each run's own figures: test_run draws them

[[grid]]
algorithm = ["minibatch_sfl", "fedavg"]
non_iid_ratio = [0.0, 1.0]
lr = [0.01, 0.05]
"""


def test_a_sweep_resumes_from_its_tables_alone_and_reports_the_same_from_tables_and_directories(
    tmp_path, capsys
):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    out = tmp_path / "study"
    assert main(["sweep", str(grid), "--out", str(out)]) == 0
    runs = tables.read_runs(out)
    assert len(runs) == 8 and {r["status"] for r in runs} == {"finished"}
    for r in runs:  # each run's records, from the tables, are its metrics.jsonl's
        lines = (out / r["run"] / "metrics.jsonl").read_text().splitlines()
        (run,) = (x for x in load_study(out) if x.run == r["run"])
        assert len(run.records) == len(lines) == 2
        assert all(map(codec.same_record, run.records, map(json.loads, lines)))

    # the same report from the run directories alone (a live sweep before its tables) and from the tables
    dirs = tmp_path / "live" / "study"  # the same name: report.md's title is the folder's
    dirs.mkdir(parents=True)
    for r in runs:
        shutil.copytree(out / r["run"], dirs / r["run"])
    report(dirs, tmp_path / "from-dirs", claims=None)
    for r in runs:
        shutil.rmtree(out / r["run"])
    report(out, tmp_path / "from-tables", claims=None)
    for name in ("report.md", "aggregate.csv"):
        assert (tmp_path / "from-tables" / name).read_bytes() == (tmp_path / "from-dirs" / name).read_bytes()
    assert "best lr" in (tmp_path / "from-tables" / "report.md").read_text()  # lr chosen on validation

    # another machine: the tables and grid.toml only; every point is done, nothing runs
    capsys.readouterr()
    assert main(["sweep", str(grid), "--out", str(out)]) == 0
    assert (
        "8 runs in" in (log := capsys.readouterr().out)
        and "8 already done" in log
        and not any((out / r["run"]).exists() for r in runs)
    )
    assert tables.read_runs(out) == runs
