"""A run's result as an object: stopping one algorithm, an interrupted run, and ``load_run``."""

import json

import pytest
import torch

import splitfed
from splitfed import SplitfedError, StopAlgorithm, load_run, run

from .conftest import small_config

pytestmark = pytest.mark.usefixtures("one_thread")

TIMES = ("train_time_s", "round_time_s", "wall_time_s")


def _same_records(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in TIMES} == {
            k: v for k, v in y.items() if k not in TIMES
        }


def _stop_at(name, rnd, signal=StopAlgorithm):
    def on_round(record):
        if record["algorithm"] == name and record["round"] == rnd:
            raise signal

    return on_round


def test_stopping_one_algorithm_lets_the_others_run_and_a_resume_keeps_it_stopped(tmp_path):
    config = small_config(algorithm=("minibatch_sfl", "fedavg"), rounds=3, out=str(tmp_path))
    result = run(config, on_round=_stop_at("minibatch_sfl", 1))
    rounds = {name: [r["round"] for r in records] for name, records in result.by_algorithm.items()}
    assert rounds == {"minibatch_sfl": [1], "fedavg": [1, 2, 3]}
    assert result.stopped == ["minibatch_sfl"] and not result.interrupted
    assert [row["algorithm"] for row in result.summary] == ["minibatch_sfl", "fedavg"]
    assert set(result.models) == {"minibatch_sfl", "fedavg"}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["stopped"] is True and "stopped" not in lines[1]
    # resumed with a round more: fedavg trains it, the stopped algorithm stays stopped
    more = run(config.replace(rounds=4, resume=True))
    rounds = {name: [r["round"] for r in records] for name, records in more.by_algorithm.items()}
    assert rounds == {"minibatch_sfl": [1], "fedavg": [1, 2, 3, 4]}
    _same_records(more.by_algorithm["minibatch_sfl"], result.by_algorithm["minibatch_sfl"])


def test_an_interrupted_run_writes_and_returns_what_it_trained_and_a_resume_finishes_it(tmp_path):
    config = small_config(algorithm=("minibatch_sfl", "fedavg"), rounds=3)
    whole = run(config.replace(out=str(tmp_path / "whole")))
    out = tmp_path / "cut"
    part = run(config.replace(out=str(out), figures=True), on_round=_stop_at("fedavg", 2, KeyboardInterrupt))
    assert part.interrupted
    rounds = {name: [r["round"] for r in records] for name, records in part.by_algorithm.items()}
    assert rounds == {"minibatch_sfl": [1, 2, 3], "fedavg": [1, 2]}
    assert list(part.models) == ["minibatch_sfl"]  # the finished algorithm's model
    assert [row["algorithm"] for row in part.summary] == ["minibatch_sfl", "fedavg"]
    assert (out / "accuracy.png").is_file() and not (out / "summary.csv").exists()  # unfinished
    trained = []
    resumed = run(config.replace(out=str(out), resume=True), on_round=lambda r: trained.append(r["round"]))
    assert trained == [3]  # fedavg's last round: the finished algorithm is kept, not trained again
    assert not resumed.interrupted
    _same_records(resumed.history, whole.history)


def test_load_run_returns_what_run_returned(tmp_path):
    result = run(small_config(algorithm=("sfl_v1", "fedavg"), out=str(tmp_path)))
    loaded = load_run(tmp_path)
    assert isinstance(loaded, splitfed.RunResult)
    assert loaded.config == result.config and loaded.out_dir == result.out_dir
    assert loaded.history == result.history
    assert loaded.summary == result.summary
    assert loaded.final_accuracy == result.final_accuracy and not loaded.interrupted
    assert list(loaded.models) == list(result.models)
    for name, model in result.models.items():
        for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.models[name].state_dict().items()):
            assert k == k2 and torch.equal(a, b)


def test_load_run_of_a_python_model_needs_the_model_for_its_models_only(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )
    result = run(small_config(model=None, algorithm=("fedavg",), cut_layer=2, out=str(tmp_path)), model=model)
    loaded = load_run(tmp_path)
    assert loaded.history == result.history  # the metrics need no model
    with pytest.raises(SplitfedError, match="Python object"):
        loaded.models["fedavg"]
    again = load_run(tmp_path, model=model)
    for a, b in zip(
        result.models["fedavg"].state_dict().values(), again.models["fedavg"].state_dict().values()
    ):
        assert torch.equal(a, b)


def test_load_run_refuses_what_is_not_a_run_in_one_line(tmp_path):
    with pytest.raises(SplitfedError, match="not a run directory") as e:
        load_run(tmp_path)
    assert "\n" not in str(e.value)
    run(small_config(algorithm=("fedavg",), rounds=1, out=str(tmp_path / "r")))
    with (tmp_path / "r" / "metrics.jsonl").open("a") as f:
        f.write('{"algorithm": "sl", "round": 1}\n')
    with pytest.raises(SplitfedError, match="line 2 is not a round record of this run"):
        load_run(tmp_path / "r")
