"""Datasets, held whole as tensors (normalised once at load) and registered by name; or the user's own."""

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._limits import check_fits
from .._rng import derive_seed, generator
from ..errors import SplitfedError
from ..registry import Registry
from .items import ItemSource, seeded_rngs
from .readers import read_cifar_batch, read_idx

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Dataset:
    """A train/test split as tensors: x [n, ...] (float32 images [n, C, H, W] already normalised, tabular
    rows [n, d], or integer inputs such as token ids), y int64 [n] in 0..num_classes-1."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: Augment | None = None  # applied to every training batch, on the batch's device
    val_x: torch.Tensor | None = None  # a validation split held out of the training data, if any
    val_y: torch.Tensor | None = None
    # The user's Dataset, read again at every draw so its own transform runs per draw (train_x then holds
    # one fixed reading, for shapes, checks and divergence); None: batches are gathered from train_x.
    items: ItemSource | None = None
    # Training-set indices per client when the data came split into clients (partition "given").
    parts: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        # One check for every loader, registered ones included: an empty split or a label outside the
        # classes fails later far from its cause (a division by zero, a CUDA device-side assert).
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if len(x) == 0:
                raise SplitfedError(f"data set {self.name}: the {split} split is empty; it needs samples")
            if len(y) != len(x) or y.dtype.is_floating_point or y.dtype == torch.bool:
                raise SplitfedError(
                    f"data set {self.name}: the {split} split has {len(x)} samples but {len(y)} labels of "
                    f"type {y.dtype}; it needs one integer label per sample"
                )
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= self.num_classes:
                raise SplitfedError(
                    f"data set {self.name}: {split} labels span {low}..{high}; "
                    f"its {self.num_classes} classes need labels in 0..{self.num_classes - 1}"
                )

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for images, (d,) for tabular rows, whatever the data hold."""
        return tuple(int(s) for s in self.train_x.shape[1:])

    def to(self, device: torch.device) -> "Dataset":
        move = {
            k: None if getattr(self, k) is None else getattr(self, k).to(device)
            for k in ("train_x", "train_y", "test_x", "test_y", "val_x", "val_y")
        }
        return Dataset(
            self.name,
            **move,
            num_classes=self.num_classes,
            augment=self.augment,
            items=self.items,
            parts=self.parts,
        )

    def hold_out(self, samples: int) -> "Dataset":
        """This data set with ``samples`` training samples moved to a validation split: one fixed draw
        (its own seed, like the data themselves), so every run and seed validates on the same samples."""
        if not 0 < samples < len(self.train_y):
            raise SplitfedError(
                f"validation_samples must be between 1 and {len(self.train_y) - 1} "
                f"(the {self.name} training set has {len(self.train_y)} samples), got {samples}"
            )
        order = torch.randperm(len(self.train_y), generator=generator(0, "validation", self.name))
        val, train = order[:samples].sort().values, order[samples:].sort().values
        parts = None
        if self.parts is not None:  # given clients keep their own samples, renumbered
            new_row = torch.full((len(self.train_y),), -1, dtype=torch.long)
            new_row[train] = torch.arange(len(train))
            parts = [new_row[p][new_row[p] >= 0] for p in self.parts]
        return Dataset(
            self.name,
            self.train_x[train],
            self.train_y[train],
            self.test_x,
            self.test_y,
            self.num_classes,
            self.augment,
            self.train_x[val],
            self.train_y[val],
            None if self.items is None else self.items.subset(train),
            parts,
        )


# A loader takes (data_dir, **options) and returns a Dataset.
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def _normalise(
    images: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(scale)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


@DATASETS.register("digits")
def digits(data_dir: str | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images); a fixed stratified 80/20 split.

    The split uses its own fixed seed so that the test set is the same for every run seed.
    """
    from sklearn.datasets import load_digits  # imported here: slow, and only this data set needs it

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None]  # [1797, 1, 8, 8], values 0..16
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    g = generator(0, "digits-split")
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        test[idx[: round(0.2 * len(idx))]] = True
    train = ~test
    mean, std = float(images[train.numpy()].mean() / 16), float(images[train.numpy()].std() / 16)
    x = _normalise(images, 16.0, (mean,), (std,))
    return Dataset("digits", x[train], labels[train], x[test], labels[test], num_classes=10)


_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fmnist(data_dir: str | None) -> dict[str, Path]:
    """The four IDX files: in data_dir (or its FashionMNIST/raw, fashion-mnist), else the Debian location."""
    roots = [Path(data_dir)] if data_dir else [Path(_FMNIST_SYSTEM_DIR), Path("data")]
    folders = [r / sub for r in roots for sub in ("", "FashionMNIST/raw", "fashion-mnist", "fashion_mnist")]
    for folder in folders:
        files = {k: _find_file(folder, stem) for k, stem in _FMNIST_FILES.items()}
        if all(files.values()):
            return files  # type: ignore[return-value]
    wanted = ", ".join(s + ".gz" for s in _FMNIST_FILES.values())
    raise SplitfedError(
        f"Fashion-MNIST not found in {', '.join(str(r) for r in roots)}: install the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
        f"or pass --data-dir DIR holding {wanted}"
    )


@DATASETS.register("fmnist")
def fmnist(data_dir: str | None = None) -> Dataset:
    """Fashion-MNIST from the original IDX files; normalised with mean 0.2860, std 0.3530 (spec §7)."""
    files = find_fmnist(data_dir)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise SplitfedError(
                f"{files[split + '_x']}: expected uint8 images [n, 28, 28], got {x.dtype} {list(x.shape)}"
            )
        if len(x) == 0:
            raise SplitfedError(
                f"{files[split + '_x']}: holds no images; the {split} split needs at least one"
            )
        # Labels must be stored as integers: a float 3.7 would otherwise become class 3 without a word.
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
            found = f"{y.dtype} {list(y.shape)}"
            if y.size and y.dtype.kind in "iuf":
                found += f" in {y.min()}..{y.max()}"
            raise SplitfedError(
                f"{files[split + '_y']}: expected {len(x)} integer labels (IDX type ubyte, byte, short or "
                f"int) in 0..9, got {found}"
            )
    mean, std = (0.2860,), (0.3530,)
    return Dataset(
        "fmnist",
        _normalise(arrays["train_x"][:, None], 255.0, mean, std),
        torch.from_numpy(arrays["train_y"].astype(np.int64)),
        _normalise(arrays["test_x"][:, None], 255.0, mean, std),
        torch.from_numpy(arrays["test_y"].astype(np.int64)),
        num_classes=10,
    )


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)
_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def find_cifar10(data_dir: str | None) -> Path:
    if not data_dir:
        raise SplitfedError(
            "cifar10 cannot be downloaded here: pass --data-dir DIR where DIR/cifar-10-batches-py holds "
            "data_batch_1..5 and test_batch (the python version, cifar-10-python.tar.gz, unpacked)"
        )
    for folder in (Path(data_dir) / "cifar-10-batches-py", Path(data_dir)):
        if all((folder / f).is_file() for f in _CIFAR_FILES):
            return folder
    raise SplitfedError(
        f"CIFAR-10 not found in {data_dir}: place the python-version batches there as "
        f"{data_dir}/cifar-10-batches-py/{{data_batch_1..5, test_batch}} (cifar-10-python.tar.gz, unpacked)"
    )


def cifar_augment(mean: tuple[float, ...], std: tuple[float, ...]) -> Augment:
    """Random crop 32 with padding 4 and horizontal flip (spec §7), on normalised batches.

    The padding value is what a black pixel becomes after normalisation, as if padding came first.
    """
    pad_value = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        offsets = torch.randint(0, 9, (2, b), generator=g).to(x.device)
        flip = (torch.rand(b, generator=g) < 0.5).to(x.device)
        fill = pad_value.to(x.device, x.dtype)
        padded = F.pad(x - fill, (4, 4, 4, 4)) + fill
        rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
        return torch.where(flip[:, None, None, None], out.flip(3), out)

    return augment


@DATASETS.register("cifar10")
def cifar10(data_dir: str | None = None) -> Dataset:
    """CIFAR-10 from the standard python batches in ``data_dir`` (torchvision's layout is accepted)."""
    folder = find_cifar10(data_dir)
    parts = [read_cifar_batch(folder / f) for f in _CIFAR_FILES]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    test_x, test_y = parts[5]
    return Dataset(
        "cifar10",
        _normalise(train_x, 255.0, _CIFAR_MEAN, _CIFAR_STD),
        torch.from_numpy(train_y),
        _normalise(test_x, 255.0, _CIFAR_MEAN, _CIFAR_STD),
        torch.from_numpy(test_y),
        num_classes=10,
        augment=cifar_augment(_CIFAR_MEAN, _CIFAR_STD),
    )


SYNTHETIC_SHAPE = (1, 28, 28)  # synthetic data's default C, H, W
SYNTHETIC_SAMPLES = 2000  # synthetic data's default number of training samples
# (C, H, W) and classes of the built-in data sets, known before loading them (their readers insist on them)
_KNOWN_SHAPES = {"digits": ((1, 8, 8), 10), "fmnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}


def known_shape(
    dataset: str, synthetic_shape: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...], int] | None:
    """(input shape C,H,W, classes) of a data set before it is loaded; None for a registered one."""
    if dataset == "synthetic":
        return tuple(synthetic_shape or SYNTHETIC_SHAPE), 10
    return _KNOWN_SHAPES.get(dataset)


def _synthetic_test_size(samples: int, classes: int) -> int:
    return max(classes * 20, samples // 5)


def check_synthetic_fits(shape: tuple[int, ...], samples: int, classes: int = 10) -> None:
    """Refuse synthetic data larger than the memory available, before generating any of it."""
    n_test = _synthetic_test_size(samples, classes)
    per_sample = 3 * 4 * math.prod(shape)  # float32: each sample's prototype, its noise, their sum
    check_fits(
        f"synthetic data ({samples} training + {n_test} test samples of {list(shape)})",
        (samples + n_test) * per_sample,
        per_sample * 6 // 5,  # a training sample brings a fifth of a test sample along
        "training samples",
    )


@DATASETS.register("synthetic")
def synthetic(
    data_dir: str | None = None,
    shape: tuple[int, ...] = SYNTHETIC_SHAPE,
    samples: int = SYNTHETIC_SAMPLES,
    classes: int = 10,
) -> Dataset:
    """Seeded class-conditional images: a smooth prototype per class plus noise; balanced classes.

    The data are fixed (their own seed), like a real data set; the run seed varies partition and training.
    """
    check_synthetic_fits(tuple(shape), samples, classes)
    g = generator(0, "synthetic", tuple(shape), samples, classes)
    c, h, w = shape
    coarse = torch.randn(classes, c, max(1, h // 4), max(1, w // 4), generator=g)
    prototypes = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    n_test = _synthetic_test_size(samples, classes)
    y = torch.arange(samples + n_test) % classes
    y = torch.cat([y[:samples][torch.randperm(samples, generator=g)], y[samples:]])
    x = prototypes[y] + 1.5 * torch.randn(len(y), c, h, w, generator=g)
    return Dataset("synthetic", x[:samples], y[:samples], x[samples:], y[samples:], num_classes=classes)


# --- the user's own data ------------------------------------------------------------------------------

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
