"""Writers for the standard on-disk formats, so tests can make small files the readers must accept."""

import gzip
import pickle
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    codes = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_fmnist(folder: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def write_cifar_batch(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """A batch as the original files hold it: a dict with bytes keys, data uint8 [n, 3072], labels a list."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    with path.open("wb") as f:
        pickle.dump(
            {b"batch_label": b"test", b"labels": labels, b"data": data, b"filenames": []}, f, protocol=2
        )
    return data, labels


def write_cifar10(folder: Path, per_batch: int = 10) -> Path:
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        write_cifar_batch(batches / name, per_batch, seed=i)
    return batches


def idx_bytes(type_code: int, shape: tuple[int, ...], data: bytes) -> bytes:
    """An IDX file with any header, however hostile: type code, dimensions and data as given."""
    return bytes([0, 0, type_code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape) + data
