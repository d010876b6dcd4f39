"""The user's own data: tensors, arrays, a dict of them, a ``PATH.pt`` file of tensors, or torch
Datasets (the training one read per draw), checked and made into a ``Dataset`` on the CPU, with a test
set held out of them when none is given."""

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._rng import derive_seed, generator
from ..errors import SplitfedError
from .dataset import Dataset
from .items import ItemSource, seeded_rngs

TEST_SHARE = 0.2  # the share of each class held out as the test set when user data come without one
DATA_KEYS = ("x_train", "y_train", "x_test", "y_test", "num_classes")  # a data dict / PATH.pt file
DATA_FILE_SUFFIXES = (".pt", ".pth")
PYTHON_DATA = "python:"  # config.dataset of data given to run() as Python objects: python:<fingerprint>


def is_data_file(name: str) -> bool:
    """Whether config.dataset names a file of tensors (``--dataset path/to/data.pt``)."""
    return name.endswith(DATA_FILE_SUFFIXES)


def user_data(data: Any, name: str | None = None, source: str = "data") -> Dataset:
    """The user's data as a Dataset on the CPU.

    Accepted: ``(x_train, y_train)`` or ``(x_train, y_train, x_test, y_test)`` (tensors or arrays); a dict
    of those names, with an optional ``num_classes`` (what a ``--dataset PATH.pt`` file holds); a
    ``torch.utils.data.Dataset`` of (x, y) pairs, or a pair (train, test) of them: the training Dataset
    is read again at every draw (its transform runs per draw; ``items``), once more at the start for the
    labels and a fixed copy of the inputs; a TensorDataset and the test Dataset are read once. x is any
    shape [n, ...]: floating point becomes float32, integers stay integers (int64, e.g. token ids);
    nothing is normalised. y holds integer labels; the classes are num_classes if given, else
    the largest label + 1. Without a test set, a fixed TEST_SHARE of each class is held out as one.
    ``name`` defaults to ``python:<fingerprint of the tensors>``; ``source`` names the data in errors.
    """
    x_train, y_train, x_test, y_test, num_classes, train_ds = _unpack(data, source)
    x_train, y_train = _inputs(x_train, "x_train", source), _labels(y_train, "y_train", source)
    if len(x_train) != len(y_train):
        raise SplitfedError(
            f"{source}: x_train has {len(x_train)} samples but y_train has {len(y_train)} labels"
        )
    rows = torch.arange(len(y_train))
    items = None if train_ds is None else ItemSource([train_ds], torch.zeros_like(rows), rows, source)
    if x_test is None:
        test = held_out_test(y_train, source)
        x_train, y_train, x_test, y_test = x_train[~test], y_train[~test], x_train[test], y_train[test]
        items = None if items is None else items.subset(rows[~test])
    else:
        x_test, y_test = _inputs(x_test, "x_test", source), _labels(y_test, "y_test", source)
        if len(x_test) != len(y_test):
            raise SplitfedError(
                f"{source}: x_test has {len(x_test)} samples but y_test has {len(y_test)} labels"
            )
        if x_test.shape[1:] != x_train.shape[1:]:
            raise SplitfedError(
                f"{source}: x_test samples are {list(x_test.shape[1:])} but x_train samples are "
                f"{list(x_train.shape[1:])}"
            )
    if num_classes is None:
        num_classes = 1 + max((int(y.max()) for y in (y_train, y_test) if len(y)), default=0)
    if name is None:
        name = PYTHON_DATA + fingerprint(x_train, y_train, x_test, y_test, torch.tensor(num_classes))
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=num_classes, items=items)


def load_data_file(path: str) -> Dataset:
    """``--dataset PATH.pt``: a file written by ``torch.save`` of a dict (see ``user_data``), read without
    running any code (``weights_only``)."""
    if not Path(path).is_file():
        raise SplitfedError(
            f"data file {path} not found; it must be a torch.save'd dict with x_train, y_train "
            "(and optionally x_test, y_test, num_classes)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file, a pickle of other objects than tensors: say which, in a line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise SplitfedError(
            f"data file {path} cannot be read as tensors ({type(e).__name__}: {first}); write it with "
            "torch.save({'x_train': ..., 'y_train': ...}, path)"
        ) from None
    if not isinstance(data, dict):
        raise SplitfedError(
            f"data file {path} holds a {type(data).__name__}; it must hold a dict with x_train, y_train "
            "(and optionally x_test, y_test, num_classes)"
        )
    return user_data(data, name=path, source=f"data file {path}")


def fingerprint(*tensors: torch.Tensor) -> str:
    """A short digest of tensors' shapes, types and values: names user data in config.toml, so that a
    resumed run refuses other data."""
    h = hashlib.blake2b(digest_size=6)
    for t in tensors:
        h.update(repr((str(t.dtype), tuple(t.shape))).encode())
        flat = t.detach().cpu().contiguous().view(-1)
        for chunk in flat.split(1 << 22):  # bounded extra memory for large data
            h.update(chunk.numpy().tobytes())
    return h.hexdigest()


def _unpack(data: Any, source: str) -> tuple[Any, Any, Any, Any, int | None, Any]:
    """x_train, y_train, x_test, y_test, num_classes, and the training Dataset to read per draw (or None)."""
    from torch.utils.data import Dataset as TorchDataset

    forms = (
        "(x_train, y_train), (x_train, y_train, x_test, y_test), a dict of those names, "
        "or torch Datasets (train or (train, test))"
    )
    if isinstance(data, dict):
        unknown = [k for k in data if k not in DATA_KEYS]
        if unknown:
            raise SplitfedError(f"{source}: unknown key {unknown[0]!r}; the keys are {', '.join(DATA_KEYS)}")
        for key in ("x_train", "y_train"):
            if key not in data:
                raise SplitfedError(f"{source}: {key} is missing; the keys are {', '.join(DATA_KEYS)}")
        if ("x_test" in data) != ("y_test" in data):
            raise SplitfedError(f"{source}: x_test and y_test come together; one of them is missing")
        return (
            data["x_train"],
            data["y_train"],
            data.get("x_test"),
            data.get("y_test"),
            _num_classes(data.get("num_classes"), source),
            None,
        )
    if isinstance(data, TorchDataset):
        return (*_materialise(data, "train", source), None, None, None, _per_draw(data))
    if isinstance(data, tuple | list):
        if len(data) == 2 and all(isinstance(d, TorchDataset) for d in data):
            train, test = _materialise(data[0], "train", source), _materialise(data[1], "test", source)
            return (*train, *test, None, _per_draw(data[0]))
        if len(data) == 2:
            return data[0], data[1], None, None, None, None
        if len(data) == 4:
            return (*data, None, None)
        raise SplitfedError(f"{source} must be {forms}; got a {type(data).__name__} of {len(data)}")
    raise SplitfedError(f"{source} must be {forms}; got {type(data).__name__}")


def _num_classes(value: Any, source: str) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise SplitfedError(f"{source}: num_classes must be a positive integer, got {value!r}")


def _per_draw(ds: Any) -> Any:
    """The Dataset to read at every draw: any but a TensorDataset, whose items are fixed tensors (it
    keeps the gather from tensors, today's fast path)."""
    from torch.utils.data import TensorDataset

    return None if isinstance(ds, TensorDataset) and len(ds.tensors) == 2 else ds


def _materialise(ds: Any, split: str, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A map-style torch Dataset of (x, y) pairs as two tensors, read once under a fixed seed: a random
    transform gives the same copy in every run, so the data's fingerprint (and a resume) holds."""
    from torch.utils.data import TensorDataset, default_collate

    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1]  # already tensors: no copy
    try:
        n = len(ds)
    except TypeError:
        raise SplitfedError(
            f"{source}: the {split} Dataset has no length; an IterableDataset cannot be read into tensors"
        ) from None
    with seeded_rngs(derive_seed(0, "materialise", split)):
        items = [ds[i] for i in range(n)]
    for i, item in enumerate(items):
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise SplitfedError(
                f"{source}: item {i} of the {split} Dataset is a {type(item).__name__}; "
                "it must be a pair (x, y)"
            )
    try:
        x, y = default_collate(items) if items else (torch.empty(0), torch.empty(0, dtype=torch.int64))
    except (TypeError, RuntimeError) as e:  # e.g. samples of different shapes, or PIL images
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SplitfedError(
            f"{source}: the {split} Dataset's items cannot be stacked into tensors: {first}"
        ) from None
    return x, y


def _tensor(value: Any, key: str, source: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError):
        raise SplitfedError(
            f"{source}: {key} is a {type(value).__name__}; it must be a tensor or an array"
        ) from None


def _inputs(value: Any, key: str, source: str) -> torch.Tensor:
    x = _tensor(value, key, source)
    if x.dim() < 2:
        raise SplitfedError(
            f"{source}: {key} has shape {list(x.shape)}; it needs one row per sample, [n, ...] "
            "(a single feature is [n, 1])"
        )
    if x.is_complex():
        raise SplitfedError(f"{source}: {key} is complex ({x.dtype}); inputs must be real numbers")
    # Floating inputs train in float32 like the models' weights; integer inputs (token ids for an
    # nn.Embedding, say) keep their values.
    return x.float() if x.is_floating_point() else x.long()


def _labels(value: Any, key: str, source: str) -> torch.Tensor:
    y = _tensor(value, key, source)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise SplitfedError(
            f"{source}: {key} holds {y.dtype} values; labels must be integers 0..C-1 (convert whole-number "
            "labels with .long())"
        )
    if y.dim() != 1:
        raise SplitfedError(
            f"{source}: {key} has shape {list(y.shape)}; it must be one label per sample, [n]"
        )
    if len(y) and int(y.min()) < 0:
        raise SplitfedError(f"{source}: {key} holds the label {int(y.min())}; labels must be 0..C-1")
    return y.long()


def held_out_test(y: torch.Tensor, source: str) -> torch.Tensor:
    """Which samples form the test set (a bool mask): a fixed TEST_SHARE of each class (rounded), its own
    seed, as for digits, so every run and run seed tests on the same samples. Both splits keep the data's
    order."""
    g = generator(0, "test-split")
    perm = torch.randperm(len(y), generator=g)
    order = perm[torch.sort(y[perm], stable=True).indices]  # by class, random within a class
    counts = torch.bincount(y)
    take = torch.floor(counts * TEST_SHARE + 0.5).long()
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(y)) - first[y[order]]
    test = torch.zeros(len(y), dtype=torch.bool)
    test[order[rank < take[y[order]]]] = True
    if not test.any() or test.all():
        raise SplitfedError(
            f"{source}: {len(y)} samples are too few to hold out {TEST_SHARE:.0%} of each class as a test "
            "set; give x_test and y_test"
        )
    return test
