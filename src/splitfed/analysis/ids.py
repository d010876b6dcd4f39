"""Names of a study's rows: a run id and a partition id are digests of what decides their numbers.

A run id is the first 12 hex digits of sha256 over the canonical JSON (sorted keys, no spaces, lists for
tuples) of the run's identity (``Config.run_identity()``: every field but ``config.MACHINE_FIELDS``, a
section's keys by their flat names as before the sections: ``sflv2_schedule`` for ``sfl_v2.schedule``),
keeping only the fields whose value differs from the field's default. So where or how a run executed (device,
threads, out) never changes its id, and neither does a later splitfed that adds a field with a default, nor a
grid that gains a table or a key: a run keeps its id for as long as its numbers mean the same thing. A
partition's option left unset is its default (``config.PARTITION_OPTIONS``), as the run resolves it: a grid's
``non_iid_ratio`` left out and the 0.8 a run's config.toml records are one setting.
"""

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..config import PARTITION_OPTIONS, Config

ID_DIGITS = 12  # 48 bits: a collision among a million runs has odds of about 2e-3; a study holds hundreds


def _canonical(value: Any) -> Any:
    """The value as JSON holds it: tuples become lists, so a tuple and the list TOML gives are one value."""
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def digest(value: Any) -> str:
    """The first ID_DIGITS hex digits of sha256 over the canonical JSON of ``value``."""
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


def deciding_settings(config: Config) -> dict[str, Any]:
    """The fields of the run's identity whose value differs from the field's default (a partition's option
    left unset counts as the partition's default)."""
    defaults = Config.defaults()  # of the Config at hand: a later one may have more fields
    identity = config.run_identity()
    option = PARTITION_OPTIONS.get(identity.get("partition"))
    if option is not None and identity.get(option[0]) == option[1]:
        identity[option[0]] = None  # the partition's default, as unset
    return {k: v for k, v in identity.items() if _canonical(v) != _canonical(defaults[k])}


def run_id(config: Config) -> str:
    """The run's id: a digest of the settings that decide its numbers (see the module docstring)."""
    return digest(deciding_settings(config))


def partition_id(rows: Sequence[Sequence[str]]) -> str:
    """A partition's id: a digest of its table (partition.csv's rows as text: header, then a row per
    client of its sample count and class counts)."""
    return digest([list(r) for r in rows])
