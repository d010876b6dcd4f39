"""Federated data as researchers have them: already split into clients (one writer, speaker or hospital
each), given as Python objects, by anything with Flower Datasets' ``load_partition(i)``, or as files.

The clients' training samples are stacked into one Dataset, client after client, and ``Dataset.parts``
records each client's rows: the rest of splitfed (sampler, partition summary, divergence) then treats
the partition "given" like a dealt one. The test set is the shared one if given, else the union of the
clients' own test sets, else a fixed share of each client's data held out (``held_out_test``).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SplitfedError
from .dataset import Dataset
from .items import ItemSource
from .user import (
    DATA_KEYS,
    PYTHON_DATA,
    _inputs,
    _labels,
    _num_classes,
    _unpack,
    fingerprint,
    held_out_test,
    load_data_file,
)

FORMS = (
    "a list of per-client data, a dict {client id: data}, {'clients': [...], 'test': (x, y)}, or an object "
    "with load_partition(i); each client's data (x, y), (x, y, x_test, y_test), a dict of x_train, y_train "
    "(x_test, y_test), a torch Dataset, or columns (a dict or a Hugging Face Dataset) of features, labels"
)
LABEL_COLUMNS = ("label", "labels", "y", "target", "targets", "fine_label", "character")
FEATURE_COLUMNS = ("x", "image", "img", "pixel_values", "features", "input_ids", "tokens", "audio")


def is_per_client(data: Any) -> bool:
    """Whether ``data`` is split into clients (else it is one data set for a partition to deal).

    A tuple is always one data set's pieces; a list is clients unless it holds tensors or arrays (the
    older ``[x, y]``); a dict is one data set when it names any data key (x_train, ...), else clients.
    """
    if callable(getattr(data, "load_partition", None)):
        return True
    if isinstance(data, Mapping):
        return "clients" in data or not any(k in DATA_KEYS for k in data)
    if isinstance(data, list):
        return not all(isinstance(d, torch.Tensor | np.ndarray) for d in data)
    return False


def given_data(
    data: Any, clients: int | None = None, name: str | None = None, source: str = "data"
) -> Dataset:
    """Per-client data as one Dataset whose ``parts`` are the clients' rows, in the clients' order.

    ``clients`` is the count to ask an object with ``load_partition`` for when it does not say
    (``num_partitions``).
    """
    per_client, shared_test, num_classes = _clients(data, clients, source)
    if not per_client:
        raise SplitfedError(f"{source}: no clients given; it must be {FORMS}")
    unpacked = [_client(item, f"{source}: client {cid}") for cid, item in per_client]
    x = _stack([u[0] for u in unpacked], "x_train", source)
    y = torch.cat([u[1] for u in unpacked])
    owner = torch.cat([torch.full((len(u[1]),), i, dtype=torch.long) for i, u in enumerate(unpacked)])
    index = torch.cat([torch.arange(len(u[1])) for u in unpacked])
    items = None
    if any(u[4] is not None for u in unpacked):  # some clients' Datasets are read per draw: all are
        from torch.utils.data import TensorDataset

        datasets = [u[4] if u[4] is not None else TensorDataset(u[0], u[1]) for u in unpacked]
        items = ItemSource(datasets, owner, index, source)
    tests = [u[2:4] for u in unpacked if u[2] is not None]
    if shared_test is not None:
        x_test, y_test = shared_test
    elif tests:
        if len(tests) < len(unpacked):
            raise SplitfedError(
                f"{source}: {len(tests)} of {len(unpacked)} clients have a test set; give every client "
                "one, or none (a share of each client's data is then held out), or a shared 'test'"
            )
        x_test, y_test = _stack([t[0] for t in tests], "x_test", source), torch.cat([t[1] for t in tests])
    else:  # a fixed share of each client's data: clients keep their own distribution in the test set
        test = held_out_test(owner * (1 + int(y.max())) + y, source)  # per client and class
        keep = (~test).nonzero().squeeze(1)
        x_test, y_test = x[test], y[test]
        x, y, owner = x[keep], y[keep], owner[keep]
        items = None if items is None else items.subset(keep)
    if x_test.shape[1:] != x.shape[1:]:
        raise SplitfedError(
            f"{source}: test samples are {list(x_test.shape[1:])} but training samples are "
            f"{list(x.shape[1:])}"
        )
    classes = [u[5] for u in unpacked if u[5] is not None]
    if num_classes is None:
        num_classes = max(classes) if classes else 1 + max(int(y.max()), int(y_test.max()))
    parts = [(owner == i).nonzero().squeeze(1) for i in range(len(unpacked))]
    empty = [per_client[i][0] for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise SplitfedError(f"{source}: client {empty[0]} has no training samples; every client needs some")
    if name is None:
        name = PYTHON_DATA + fingerprint(x, y, x_test, y_test, owner, torch.tensor(num_classes))
    return Dataset(name, x, y, x_test, y_test, num_classes=num_classes, items=items, parts=parts)


def _clients(data: Any, clients: int | None, source: str) -> tuple[list[tuple[Any, Any]], Any, int | None]:
    """[(client id, its data)], the shared test set (x, y) or None, num_classes or None."""
    if callable(getattr(data, "load_partition", None)):
        n = _num_partitions(data, clients, source)
        return [(i, data.load_partition(i)) for i in range(n)], _flower_test(data, source), None
    if isinstance(data, Mapping) and "clients" in data:
        unknown = [k for k in data if k not in ("clients", "test", "x_test", "y_test", "num_classes")]
        if unknown:
            raise SplitfedError(
                f"{source}: unknown key {unknown[0]!r}; the keys are clients, test (or x_test, y_test), "
                "num_classes"
            )
        test = data.get("test")
        if "x_test" in data or "y_test" in data:
            test = (data.get("x_test"), data.get("y_test"))
        per_client, _, _ = _clients(data["clients"], clients, source)
        return per_client, _test(test, source), _num_classes(data.get("num_classes"), source)
    if isinstance(data, Mapping):
        return list(data.items()), None, None
    if isinstance(data, list):
        return list(enumerate(data)), None, None
    raise SplitfedError(f"{source} must be {FORMS}; got {type(data).__name__}")


def _num_partitions(data: Any, clients: int | None, source: str) -> int:
    """Flower's partitioners say ``num_partitions``; a FederatedDataset holds them by split."""
    n = getattr(data, "num_partitions", None)
    partitioners = getattr(data, "partitioners", None)
    if n is None and isinstance(partitioners, Mapping) and partitioners:
        train = partitioners.get("train", next(iter(partitioners.values())))
        n = train if isinstance(train, int) else getattr(train, "num_partitions", None)
    if n is None:
        n = clients
    if not isinstance(n, int) or n < 1:
        raise SplitfedError(
            f"{source}: load_partition needs the number of clients; give num_partitions or config.clients"
        )
    return n


def _flower_test(data: Any, source: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A FederatedDataset's centralised "test" split, if it has one: the global test set."""
    load_split = getattr(data, "load_split", None)
    if not callable(load_split):
        return None
    try:
        split = load_split("test")
    except (KeyError, ValueError):  # no split of that name
        return None
    return _test(split, source)


def _test(test: Any, source: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if test is None:
        return None
    x, y, *_ = _client(test, f"{source}: test")
    return x, y


def _client(item: Any, source: str) -> tuple[Any, ...]:
    """x, y, x_test, y_test (or None), the Dataset to read per draw (or None), num_classes (or None)."""
    if _is_columns(item):
        x, y = _columns(item, source)
        return x, y, None, None, None, None
    x, y, x_test, y_test, num_classes, per_draw = _unpack(item, source)
    x, y = _inputs(x, "x_train", source), _labels(y, "y_train", source)
    if len(x) != len(y):
        raise SplitfedError(f"{source}: x_train has {len(x)} samples but y_train has {len(y)} labels")
    if x_test is not None:
        x_test, y_test = _inputs(x_test, "x_test", source), _labels(y_test, "y_test", source)
        if len(x_test) != len(y_test):
            raise SplitfedError(
                f"{source}: x_test has {len(x_test)} samples but y_test has {len(y_test)} labels"
            )
    return x, y, x_test, y_test, per_draw, num_classes


def _is_columns(item: Any) -> bool:
    """A Hugging Face Dataset (a Flower partition), or a dict of columns that are not the data keys."""
    if hasattr(item, "column_names"):
        return True
    return isinstance(item, Mapping) and not any(k in DATA_KEYS for k in item)


def _columns(item: Any, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    names = list(item.column_names) if hasattr(item, "column_names") else list(item)
    label = next((c for c in LABEL_COLUMNS if c in names), None)
    features = next((c for c in FEATURE_COLUMNS if c in names), None)
    if features is None and label is not None and len(names) == 2:
        features = next(c for c in names if c != label)
    if label is None or features is None:
        raise SplitfedError(
            f"{source}: columns {', '.join(map(str, names))}: cannot tell the features from the labels "
            f"(labels: one of {', '.join(LABEL_COLUMNS)}; features: one of {', '.join(FEATURE_COLUMNS)}); "
            "give the client's data as (x, y)"
        )
    hint = f"{source}: column {features!r} (for images, give the partition .with_format('torch') or 'numpy')"
    x, y = _inputs(item[features], "x", hint), _labels(item[label], "y", source)
    if len(x) != len(y):
        raise SplitfedError(f"{source}: {len(x)} samples of {features!r} but {len(y)} labels in {label!r}")
    return x, y


def _stack(xs: list[torch.Tensor], key: str, source: str) -> torch.Tensor:
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        raise SplitfedError(
            f"{source}: the clients' {key} samples differ in shape ({', '.join(map(str, sorted(shapes)))}); "
            "every client's samples must have one shape"
        )
    kinds = {x.is_floating_point() for x in xs}
    if len(kinds) > 1:
        raise SplitfedError(f"{source}: some clients' {key} are floating point and others integers")
    return torch.cat(xs)


# --- the command line: a folder of client files, or one file with a clients list ----------------------

CLIENT_FILE = "client_{}.pt"  # client i's data in a folder: a data dict (x_train, y_train[, x_test, y_test])
TEST_FILE = "test.pt"  # the folder's shared test set: x_test, y_test


def is_given_folder(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / CLIENT_FILE.format(0)).is_file()


def load_given_folder(path: str) -> Dataset:
    """``--dataset DIR``: DIR/client_0.pt, client_1.pt, ... (numbered from 0 without gaps), each a data
    dict like a ``PATH.pt`` file, and an optional DIR/test.pt with x_test, y_test (the shared test set)."""
    folder = Path(path)
    files = sorted(folder.glob("client_*.pt"), key=lambda f: f.stem)
    clients = []
    while (folder / CLIENT_FILE.format(len(clients))).is_file():
        clients.append(_read(folder / CLIENT_FILE.format(len(clients))))
    if len(clients) != len(files):
        raise SplitfedError(
            f"data folder {path}: {len(files)} client_*.pt files but client_{len(clients)}.pt is missing; "
            "number them client_0.pt, client_1.pt, ... without gaps"
        )
    data: dict[str, Any] = {"clients": clients}
    if (folder / TEST_FILE).is_file():
        test = _read(folder / TEST_FILE)
        if not {"x_test", "y_test"} <= set(test):
            raise SplitfedError(
                f"{folder / TEST_FILE} must hold x_test and y_test; it holds {', '.join(test)}"
            )
        data["test"] = (test["x_test"], test["y_test"])
    return given_data(data, name=path, source=f"data folder {path}")


def load_given_file(path: str) -> Dataset:
    """``--dataset PATH.pt`` holding ``clients`` (a list of data dicts) and optionally x_test, y_test and
    num_classes; any other file is one data set (``load_data_file``)."""
    data = _read(Path(path)) if Path(path).is_file() else None
    if isinstance(data, dict) and "clients" in data:
        return given_data(data, name=path, source=f"data file {path}")
    return load_data_file(path)


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file or other objects than tensors: which, in a line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise SplitfedError(
            f"data file {path} cannot be read as tensors ({type(e).__name__}: {first}); write it with "
            "torch.save({'x_train': ..., 'y_train': ...}, path)"
        ) from None
