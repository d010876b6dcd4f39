import json

from splitfed.bench import VARIANTS, markdown
from splitfed.bench_plain import fastest
from splitfed.cli import main
from splitfed.setup import prepare


def test_the_benchmark_runs_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--models", "digits_cnn", "--clients", "2", "--samples", "64", "--repeats", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == [label for label, *_ in VARIANTS]  # every algorithm, both executions
    assert rows["floor"]["ratio_to_floor"] == 1.0 and rows["centralized"]["ratio_to_centralized"] == 1.0
    assert {r["floor_is"] for r in rows.values()} == {"floor"}  # no CUDA graphs on a CPU: the eager loop
    # every variant processed the same samples per round: the comparison is like for like
    assert {r["samples_per_round"] for r in result["results"]} == {64}
    assert all(r["ratio_to_floor"] > 0 for r in result["results"])
    out_text = capsys.readouterr().out
    assert "cpu" in result["machine"] and "x floor" in out_text and "x central" in out_text
    assert main(["bench", "--markdown", str(out)]) == 0  # the table of docs/performance.md
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | N |") and len(table) == 2 + len(rows)


def test_the_benchmark_can_time_a_subset(tmp_path):
    out = tmp_path / "b.json"
    argv = ["bench", "--models", "digits_cnn", "--clients", "2", "--samples", "64", "--repeats", "1"]
    assert main([*argv, "--variants", "sfl_v2", "--out", str(out)]) == 0
    variants = [r["variant"] for r in json.loads(out.read_text())["results"]]
    assert variants == ["floor", "torch", "centralized", "sfl_v2"]  # the references are always timed


def test_the_benchmark_runs_every_variant_in_channels_last_order_when_asked(tmp_path, monkeypatch):
    import splitfed.bench as bench

    made = []  # the configs the scenarios were prepared from
    monkeypatch.setattr(bench, "prepare", lambda cfg: made.append(cfg) or prepare(cfg))
    out = tmp_path / "b.json"
    argv = ["bench", "--models", "digits_cnn", "--clients", "2", "--samples", "64", "--repeats", "1"]
    assert main([*argv, "--variants", "sfl_v2", "--channels-last", "--out", str(out)]) == 0
    assert [cfg.channels_last for cfg in made] == [True]  # the floor and the engine's variants alike
    assert json.loads(out.read_text())["settings"]["channels_last"] is True


def test_each_reference_is_the_fastest_way_plain_pytorch_ran_and_the_table_says_which():
    times = {"floor": [2.0, 2.2, 2.1], "floor[graphs]": [1.0, 1.1, 0.9], "torch": [5.0], "sfl_v2": [0.5]}
    assert fastest(times, ["floor", "floor[graphs]"]) == "floor[graphs]"  # by median, never a variant
    assert fastest(times, ["torch", "torch[graphs]"]) == "torch"  # a way not timed is not a candidate
    assert fastest(times, []) is None
    row = {"model": "cnn4", "clients": 100, "tau": 3, "variant": "sfl_v2", "round_s": 0.5}
    row |= {"ratio_to_floor": 0.5, "ratio_to_centralized": 1.0, "ratio_to_torch": 0.1}
    eager = markdown([row | {"floor_is": "floor", "torch_is": "torch"}])
    assert len(eager.splitlines()) == 3  # the plain references need no note
    graphed = markdown([row | {"floor_is": "floor[graphs]", "torch_is": "torch"}]).splitlines()
    assert graphed[-1] == "cnn4 N = 100: × floor against floor[graphs], × plain PyTorch against torch"
