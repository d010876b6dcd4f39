import json

from splitfed.cli import main


def test_the_benchmark_runs_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = [
        "bench",
        "--models",
        "digits_cnn",
        "--clients",
        "2",
        "--samples",
        "64",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    variants = [r["variant"] for r in result["results"]]
    assert variants == [
        "centralized",
        "torch",
        "minibatch_sfl",
        "minibatch_sfl[vmap]",
        "sfl_v1",
        "sfl_v2",
        "sl",
        "fedavg",
    ]
    central = result["results"][0]
    assert central["ratio_to_centralized"] == 1.0
    # every variant processed the same samples per round: the comparison is like for like
    assert {r["samples_per_round"] for r in result["results"]} == {64}
    assert [r["factor"] for r in result["scaling"]] == [1, 1, 1, 2, 2, 2, 4, 4, 4]
    assert "cpu" in result["machine"] and "x central" in capsys.readouterr().out
