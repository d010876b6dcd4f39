"""The round record, defined once (engine/record.py): what each side may write, and what is refused."""

import pytest

from splitfed.engine.record import DEPLOYMENT, FIELDS, SIMULATION, fields, record_problem, round_record

TIMES = {"train_time_s": 1.0, "round_time_s": 2.0, "wall_time_s": 3.0}
COMMON = {"algorithm": "fedavg", "round": 1, "train_loss": 0.5, "participants": 2, "samples": 64}
COMMON |= {"client_flops": 1e6, "server_flops": 2e6, "client_bytes_up": [10, 30], "client_bytes_down": [4, 0]}
SIMULATED = COMMON | TIMES | {"server_steps": 8, "bytes": {"smashed": 40}}
DEPLOYED = COMMON | TIMES | {"dropped_clients": [], "wire_bytes": {"fed_server_in": 40}}


def test_each_side_builds_its_record_in_the_definitions_order_with_the_means_per_client():
    record = round_record(SIMULATION, **dict(reversed(SIMULATED.items())))
    assert list(record) == [k for k in FIELDS if k in record]
    assert record["bytes_up_per_client"] == 20.0 and record["bytes_down_per_client"] == 2.0
    assert set(round_record(DEPLOYMENT, **DEPLOYED)) == set(DEPLOYED) | {
        "bytes_up_per_client",
        "bytes_down_per_client",
    }


@pytest.mark.parametrize(
    ("source", "values", "word"),
    [
        (SIMULATION, SIMULATED | {"note": 1.0}, "note is no field of it"),
        (SIMULATION, SIMULATED | {"dropped_clients": []}, "dropped_clients is the deployment's alone"),
        (DEPLOYMENT, DEPLOYED | {"server_steps": 3}, "server_steps is the simulation's alone"),
        (DEPLOYMENT, {k: v for k, v in DEPLOYED.items() if k != "samples"}, "samples is missing"),
        (SIMULATION, SIMULATED | {"samples": 64.0}, "samples is float, not int"),
        (SIMULATION, SIMULATED | {"participants": True}, "participants is bool, not int"),
        (SIMULATION, SIMULATED | {"bytes": {1: 2}}, "bytes holds what JSON cannot"),
    ],
)
def test_a_key_the_definition_lacks_or_a_value_of_another_type_is_refused(source, values, word):
    with pytest.raises(ValueError, match=word):
        round_record(source, **values)


def test_every_field_is_written_by_one_side_or_both_and_each_side_writes_the_common_ones():
    assert {f.only for f in FIELDS.values()} == {"", SIMULATION, DEPLOYMENT}
    common = {k for k, f in FIELDS.items() if not f.only}
    assert common <= set(fields(SIMULATION)) and common <= set(fields(DEPLOYMENT))
    assert not set(fields(SIMULATION)) - common & set(fields(DEPLOYMENT))


def test_a_history_record_is_checked_against_the_definition():
    simulated, deployed = round_record(SIMULATION, **SIMULATED), round_record(DEPLOYMENT, **DEPLOYED)
    assert record_problem(simulated, 1) is None and record_problem(deployed, 1) is None
    assert record_problem(simulated, 2) == "is not the record of round 2"
    assert record_problem(simulated | {"stopped": True}, 1) is None
    assert "is the simulation's alone" in record_problem(deployed | {"bytes": {}}, 1)
    assert "wall_time_s" in record_problem({k: v for k, v in simulated.items() if k != "wall_time_s"}, 1)
