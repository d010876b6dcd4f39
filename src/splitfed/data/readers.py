"""Readers for the standard on-disk formats: IDX (MNIST/Fashion-MNIST) and CIFAR-10's python batches.

Both validate what they read and raise SplitfedError naming the file and what was wrong, so a truncated
download or a wrong file gives one clear line instead of garbage tensors.
"""

import gzip
import io
import math
import os
import pickle
import zlib
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from .._limits import check_fits
from ..errors import SplitfedError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# A loaded array becomes float32 tensors (4 bytes an element) with one temporary of the same size while
# normalising: what reading it really costs, beyond its own bytes.
_LOADED_BYTES_PER_ELEMENT = 8


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or not.

    The header's shape is checked against the file's length (uncompressed) or the decompressed stream
    (gzip), and against the memory available, before the data are read: a hostile header cannot make
    it allocate more than the file holds, nor a gzip bomb decompress more than the header announces.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if compressed:
                # GzipFile decompresses only as far as each read asks: bounded by the header's size
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    return _read_idx_stream(path, stream, None)
            return _read_idx_stream(path, f, os.fstat(f.fileno()).st_size)
    except (OSError, EOFError, zlib.error) as e:
        raise SplitfedError(f"cannot read IDX file {path}: {e}") from None


def _read_idx_stream(path: Path, stream: BinaryIO, file_size: int | None) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise SplitfedError(f"corrupt IDX file {path}: bad magic number {head.hex() or 'empty'}")
    ndim = head[3]
    dims = stream.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise SplitfedError(f"corrupt IDX file {path}: truncated header")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    count = math.prod(shape)  # Python ints: a product of four 2^16 is 2^64, not int64's wrapped 0
    expected = count * dtype.itemsize
    if file_size is not None and file_size - 4 - 4 * ndim != expected:
        raise SplitfedError(
            f"corrupt IDX file {path}: header says shape {shape} ({expected} bytes), "
            f"file holds {file_size - 4 - 4 * ndim} bytes of data"
        )
    check_fits(f"IDX file {path} (shape {shape})", expected + _LOADED_BYTES_PER_ELEMENT * count)
    raw = stream.read(expected + 1)  # one byte more than announced tells trailing data (a bomb) apart
    if len(raw) != expected:
        held = "more than that" if len(raw) > expected else f"{len(raw)} bytes"
        raise SplitfedError(
            f"corrupt IDX file {path}: header says shape {shape} ({expected} bytes), its data hold {held}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


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
            # a pickle's arrays are as large as the file (no compression); the loader adds float32 copies
            check_fits(
                f"CIFAR-10 batch {path}", os.fstat(f.fileno()).st_size * (1 + _LOADED_BYTES_PER_ELEMENT)
            )
            batch = _BatchUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except OSError as e:
        raise SplitfedError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        if isinstance(e, SplitfedError):
            raise
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(batch, dict):
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: missing 'data' or 'labels'")
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except ValueError as e:  # e.g. a ragged list
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: {e}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise SplitfedError(
            f"corrupt CIFAR-10 batch {path}: data must be uint8 [n, 3072], "
            f"got {data.dtype} {list(data.shape)}"
        )
    if data.shape[0] == 0:
        raise SplitfedError(f"corrupt CIFAR-10 batch {path}: it holds no images; a batch needs at least one")
    # Integers only: a float label such as 3.7 would otherwise become class 3 without a word.
    if (
        labels.shape != (data.shape[0],)
        or labels.dtype.kind not in "iu"
        or labels.min() < 0
        or labels.max() > 9
    ):
        raise SplitfedError(
            f"corrupt CIFAR-10 batch {path}: labels must be {data.shape[0]} integers in 0..9, "
            f"got {labels.dtype} {list(labels.shape)}"
            + (f" in {labels.min()}..{labels.max()}" if labels.size and labels.dtype.kind in "iuf" else "")
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
