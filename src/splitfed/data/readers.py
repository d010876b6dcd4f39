"""Readers for the standard on-disk formats: IDX (MNIST/Fashion-MNIST) and CIFAR-10's python batches.

Both validate what they read and raise SplitfedError naming the file and what was wrong, so a truncated
download or a wrong file gives one clear line instead of garbage tensors.
"""

import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import SplitfedError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or not."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise SplitfedError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SplitfedError(f"corrupt IDX file {path}: bad magic number {raw[:4].hex() or 'empty'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise SplitfedError(f"corrupt IDX file {path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise SplitfedError(
            f"corrupt IDX file {path}: header says shape {shape} ({expected} bytes), "
            f"file holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches contain (dicts, lists, bytes, numpy arrays).

    A pickle can run arbitrary code on load; a data file must not be able to.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2: harmless
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (images uint8 [n, 3, 32, 32], labels int64 [n])."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except OSError as e:
        raise SplitfedError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(batch, dict):
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: missing 'data' or 'labels'")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise SplitfedError(
            f"corrupt CIFAR-10 batch {path}: data must be uint8 [n, 3072], "
            f"got {data.dtype} {list(data.shape)}"
        )
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: labels must be {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels
