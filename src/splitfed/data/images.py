"""The built-in image data sets, read from their standard files (or scikit-learn's bundle) and
normalised once at load: digits, Fashion-MNIST and CIFAR-10."""

from pathlib import Path

import numpy as np
import torch

from .._rng import generator
from ..errors import SplitfedError
from .augment import cifar_augment
from .dataset import DATASETS, Dataset
from .readers import read_cifar_batch, read_idx


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
