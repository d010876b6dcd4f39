"""A round's record: the one line of metrics.jsonl a trained round writes, defined once.

The simulation (executors/train.py) and the deployment (services/fed_server.py) build it with
``round_record``, which refuses a key the definition lacks, one of the other side's alone, or a value of
another type; a checkpoint's history is checked with ``record_problem`` before a resumed run rebuilds
metrics.jsonl from it. A field is marked ``only`` where one side cannot measure it, ``optional`` where some
rounds lack it (a round between evaluations has no test accuracy).
"""

from dataclasses import dataclass
from typing import Any

SIMULATION, DEPLOYMENT = "simulation", "deployment"


@dataclass(frozen=True)
class Field:
    """One key of a round's record: its JSON type (``float`` takes integers too), what it means, whether
    some rounds lack it, and which side alone writes it ("" for both)."""

    kind: type
    meaning: str
    optional: bool = False
    only: str = ""


FIELDS: dict[str, Field] = {
    "algorithm": Field(str, "the algorithm's name"),
    "round": Field(int, "the round, counted from 1"),
    **{
        f"divergence_{side}{form}": Field(
            float,
            f"{side}-side gradient divergence at the round-start model{meaning} (spec §6; divergence_every "
            "rounds; it needs every client's data in one place)",
            optional=True,
            only=SIMULATION,
        )
        for side in ("client", "server")
        for form, meaning in (
            ("", ""),
            ("_relative", ", relative to the mean's norm"),
            ("_per_param", ", per √dim"),
        )
    },
    "test_accuracy": Field(float, "accuracy of the round's model on the test set (eval_every rounds)", True),
    "test_loss": Field(float, "mean loss on the test set (with test_accuracy)", True),
    "test_accuracy_per_class": Field(list, "accuracy on the test set per class (with test_accuracy)", True),
    "val_accuracy": Field(
        float,
        "accuracy on the validation split (the fed server evaluates on the test set only)",
        True,
        SIMULATION,
    ),
    "val_loss": Field(float, "mean loss on the validation split (with val_accuracy)", True, SIMULATION),
    "train_loss": Field(float, "mean training loss over the round's samples"),
    "lr_client": Field(float, "the client-side optimizer's learning rate in the round (lr_schedule)", True),
    "lr_server": Field(float, "the server-side optimizer's learning rate in the round (lr_schedule)", True),
    "participants": Field(int, "clients that trained the round (and whose models were combined)"),
    "dropped_clients": Field(
        list, "clients the round went on without (stragglers, failures)", only=DEPLOYMENT
    ),
    "samples": Field(int, "samples trained (forward and backward through the whole model)"),
    "server_steps": Field(
        int, "optimizer steps of the part after the cut (counted on one process's sides)", only=SIMULATION
    ),
    "client_flops": Field(float, "training FLOPs on the clients (forward and backward)"),
    "server_flops": Field(float, "training FLOPs on the main server"),
    "bytes_up_per_client": Field(float, "mean over the participants of client_bytes_up"),
    "bytes_down_per_client": Field(float, "mean over the participants of client_bytes_down"),
    "bytes": Field(dict, "payload bytes by kind of message, as the Link counts them", only=SIMULATION),
    "client_bytes_up": Field(list, "bytes each client sent (every client, 0 for one out of the round)"),
    "client_bytes_down": Field(list, "bytes each client received"),
    "wire_bytes": Field(
        dict, "serialized bytes in and out of each server, framing included", only=DEPLOYMENT
    ),
    "train_time_s": Field(float, "seconds the training took (without evaluation and divergence)"),
    "round_time_s": Field(float, "seconds the whole round took"),
    "wall_time_s": Field(float, "the seconds of every round so far (a resumed run's included)"),
    # the edge-time model (engine/timeline.py) on the config's profile: the round as it would take on those
    # devices and links, from what the round computed and sent
    "sim_round_s": Field(float, "simulated seconds of the round on the profile's devices", True, SIMULATION),
    "sim_time_s": Field(float, "simulated seconds of every round so far", True, SIMULATION),
    "sim_client_compute_s": Field(list, "simulated seconds each client computed", True, SIMULATION),
    "sim_client_transfer_s": Field(
        list, "simulated seconds each client's links carried its messages", True, SIMULATION
    ),
    "sim_client_idle_s": Field(list, "simulated seconds each client waited", True, SIMULATION),
    "sim_round_s_by_profile": Field(
        dict, "with several profiles: each one's simulated seconds of the round", True, SIMULATION
    ),
    "sim_critical_s": Field(
        dict, "the round's critical path, simulated seconds by kind of work", True, SIMULATION
    ),
    "stopped": Field(
        bool, "on_round stopped the algorithm after this round (StopAlgorithm)", True, SIMULATION
    ),
}


def fields(source: str) -> dict[str, Field]:
    """The keys ``source`` ("simulation" or "deployment") may write."""
    return {k: f for k, f in FIELDS.items() if f.only in ("", source)}


def round_record(source: str, **values: Any) -> dict[str, Any]:
    """A round's record from ``source``, keys in the definition's order, the per-client means derived from
    client_bytes_up/down and participants; a key the definition lacks, one ``source`` does not write, a
    missing required one or a value of another type is a ValueError (a bug in the caller, not bad input)."""
    per_client = {"bytes_up_per_client": "client_bytes_up", "bytes_down_per_client": "client_bytes_down"}
    for mean, counts in per_client.items():
        values[mean] = sum(values[counts]) / values["participants"]
    ordered = {k: values[k] for k in FIELDS if k in values}
    problem = _check(ordered | values, fields(source))
    if problem is not None:
        raise ValueError(f"the {source}'s round record: {problem} (engine/record.py defines it)")
    return ordered


def _check(record: dict[str, Any], allowed: dict[str, Field]) -> str | None:
    missing = [k for k, f in allowed.items() if not f.optional and k not in record]
    if missing:
        return f"{missing[0]} is missing"
    for key, value in record.items():
        field = allowed.get(key)
        if field is None:
            return f"{key} is " + (f"the {FIELDS[key].only}'s alone" if key in FIELDS else "no field of it")
        if isinstance(value, list | dict) and isinstance(value, field.kind) and not _json_like(value):
            return f"{key} holds what JSON cannot (string keys; numbers, strings, lists and objects)"
        if not _is(field.kind, value):
            return f"{key} is {type(value).__name__}, not {field.kind.__name__}"
    return None


def _is(kind: type, value: Any) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind) and (kind not in (list, dict) or _json_like(value))


def _json_like(value: Any, depth: int = 0) -> bool:
    if isinstance(value, dict):
        return depth < 8 and all(isinstance(k, str) and _json_like(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return depth < 8 and all(_json_like(v, depth + 1) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def record_problem(record: Any, n: int) -> str | None:
    """What keeps ``record`` from being round n's record as either side writes it (metrics.jsonl is rebuilt
    from a checkpoint's history: JSON's types only, nothing else unpickled), or None."""
    if not isinstance(record, dict) or record.get("round") != n:
        return f"is not the record of round {n}"
    if not _is(float, record.get("wall_time_s")):
        return "has no wall_time_s"
    deployed = any(FIELDS[k].only == DEPLOYMENT for k in record if k in FIELDS)
    problem = _check(record, fields(DEPLOYMENT if deployed else SIMULATION))
    return None if problem is None else f"is not a round record ({problem})"
