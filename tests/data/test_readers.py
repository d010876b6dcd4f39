import gzip
import os
import pickle
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from splitfed import SplitfedError
from splitfed.data import DATASETS
from splitfed.data.readers import read_cifar_batch, read_idx

from .formats import idx_bytes, write_cifar10, write_cifar_batch, write_fmnist, write_idx


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == "uint8":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a.idx", array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_corrupt_files_are_named(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((3, 2), np.uint8), compress=False).read_bytes()
    cases = {
        "magic": b"\x01\x02" + good[2:],
        "truncated": good[:-1],
        "short header": good[:6],
        "empty": b"",
    }
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(SplitfedError, match=f"IDX file {path}"):
            read_idx(path)
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(SplitfedError, match="cannot read IDX file"):
        read_idx(bad_gzip)


def test_cifar_batch_round_trip(tmp_path):
    data, labels = write_cifar_batch(tmp_path / "data_batch_1", 7)
    x, y = read_cifar_batch(tmp_path / "data_batch_1")
    assert x.shape == (7, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(x.reshape(7, -1), data)
    assert y.tolist() == labels


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(SplitfedError, match="corrupt CIFAR-10 batch .*refusing to load posix.system"):
        read_cifar_batch(path)


def test_cifar_reader_checks_shapes_and_labels(tmp_path):
    path = tmp_path / "b"
    with path.open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(SplitfedError, match=r"data must be uint8 \[n, 3072\]"):
        read_cifar_batch(path)
    with path.open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(SplitfedError, match="labels must be 2 integers in 0..9"):
        read_cifar_batch(path)
    path.write_bytes(b"garbage")
    with pytest.raises(SplitfedError, match="corrupt CIFAR-10 batch"):
        read_cifar_batch(path)


def test_cifar10_dataset_from_torchvision_layout(tmp_path):
    write_cifar10(tmp_path, per_batch=10)
    ds = DATASETS.get("cifar10")(str(tmp_path))
    assert ds.train_x.shape == (50, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    assert ds.augment is not None
    x = ds.augment(ds.train_x[:4], torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32)


def test_cifar10_missing_says_what_to_place_where(tmp_path):
    with pytest.raises(SplitfedError, match="cifar-10-batches-py"):
        DATASETS.get("cifar10")(str(tmp_path))
    with pytest.raises(SplitfedError, match="pass --data-dir"):
        DATASETS.get("cifar10")(None)


def test_cifar_augment_is_a_padded_crop_or_its_mirror():
    from splitfed.data.datasets import cifar_augment

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    augment = cifar_augment(mean, std)
    x = torch.randn(32, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(1))
    black = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    padded = torch.nn.functional.pad(x - black, (4, 4, 4, 4)) + black  # a black border, normalised
    shifts = set()
    for img, src in zip(out, padded):
        found = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                img,
                (src[:, dy : dy + 32, dx : dx + 32].flip(2) if flip else src[:, dy : dy + 32, dx : dx + 32]),
            )
        ]
        assert found, "an augmented image is not a crop of the padded original"
        shifts.add(found[0])
    assert len(shifts) > 10  # the crops and flips actually vary
    again = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_fmnist_from_data_dir_and_raw_layout(tmp_path):
    write_fmnist(tmp_path / "FashionMNIST" / "raw")
    ds = DATASETS.get("fmnist")(str(tmp_path))
    assert ds.train_x.shape == (50, 1, 28, 28) and ds.test_y.shape == (20,)
    assert ds.train_y.tolist()[:11] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


def test_fmnist_missing_names_the_debian_package(tmp_path):
    with pytest.raises(SplitfedError, match="dataset-fashion-mnist"):
        DATASETS.get("fmnist")(str(tmp_path))


def test_fmnist_wrong_image_size_is_refused(tmp_path):
    write_fmnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((50, 8, 8), np.uint8))
    with pytest.raises(SplitfedError, match=r"expected uint8 images \[n, 28, 28\]"):
        DATASETS.get("fmnist")(str(tmp_path))


FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package():
    ds = DATASETS.get("fmnist")(None)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    # normalised with the spec's constants: the training set has mean ~0 and std ~1
    assert abs(float(ds.train_x.mean())) < 0.01 and abs(float(ds.train_x.std()) - 1) < 0.01


def test_digits_is_real_and_split_fixed():
    ds = DATASETS.get("digits")()
    assert len(ds.train_y) + len(ds.test_y) == 1797 and ds.in_shape == (1, 8, 8)
    again = DATASETS.get("digits")()
    assert torch.equal(ds.test_x, again.test_x)
    assert abs(float(ds.train_x.mean())) < 1e-4


def test_synthetic_is_seeded_and_balanced():
    a = DATASETS.get("synthetic")(None, shape=(3, 32, 32), samples=100)
    b = DATASETS.get("synthetic")(None, shape=(3, 32, 32), samples=100)
    assert torch.equal(a.train_x, b.train_x) and a.in_shape == (3, 32, 32)
    assert torch.bincount(a.train_y).tolist() == [10] * 10


def _fmnist_with(folder, name: str, raw: bytes) -> None:
    write_fmnist(folder)
    (folder / f"{name}.gz").write_bytes(gzip.compress(raw))


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        pytest.param(
            "train-labels-idx1-ubyte",
            idx_bytes(0x09, (50,), bytes([0xFF] + [1] * 49)),
            r"train-labels-idx1-ubyte.gz: expected 50 integer labels .* in 0..9, got int8 \[50\] in -1..1",
            id="negative int8 label",
        ),
        pytest.param(  # 3.7 must not become class 3
            "train-labels-idx1-ubyte",
            idx_bytes(0x0D, (50,), np.full(50, 3.7, ">f4").tobytes()),
            r"expected 50 integer labels .*, got float32",
            id="fractional float labels",
        ),
        pytest.param(
            "t10k-labels-idx1-ubyte",
            idx_bytes(0x0D, (20,), np.full(20, np.nan, ">f4").tobytes()),
            r"t10k-labels-idx1-ubyte.gz: expected 20 integer labels",
            id="NaN labels",
        ),
        pytest.param(
            "train-images-idx3-ubyte",
            idx_bytes(0x0C, (50, 28, 28), bytes(50 * 28 * 28 * 4)),
            r"expected uint8 images \[n, 28, 28\], got int32",
            id="int32 images",
        ),
        pytest.param(
            "t10k-images-idx3-ubyte",
            idx_bytes(0x08, (0, 28, 28), b""),
            r"t10k-images-idx3-ubyte.gz: holds no images; the test split needs at least one",
            id="empty test set",
        ),
    ],
)
def test_fmnist_refuses_hostile_label_and_image_files(tmp_path, name, raw, message):
    _fmnist_with(tmp_path, name, raw)
    with pytest.raises(SplitfedError, match=message):
        DATASETS.get("fmnist")(str(tmp_path))


def test_idx_header_sizes_are_exact_integers_checked_before_reading(tmp_path):
    # four dimensions of 2^16: 2^64 elements, which int64 arithmetic wraps to 0 = the empty data
    path = tmp_path / "overflow"
    path.write_bytes(idx_bytes(0x08, (2**16,) * 4, b""))
    with pytest.raises(SplitfedError, match=r"header says shape \(65536, 65536, 65536, 65536\)"):
        read_idx(path)
    # the same header gzipped: nothing to compare with before decompressing, so memory decides
    path = tmp_path / "overflow.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (2**16,) * 4, b"")))
    with pytest.raises(SplitfedError, match=r"IDX file .*overflow.gz \(shape .*\) needs .* PiB of memory"):
        read_idx(path)


def test_idx_gzip_bomb_is_not_decompressed_beyond_its_header(tmp_path):
    """A header announcing 10 bytes in front of 64 MiB of zeros: read 11 bytes, then refuse."""
    path = tmp_path / "bomb.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    body = idx_bytes(0x08, (10,), b"")
    chunks = [compressor.compress(body)] + [compressor.compress(bytes(1 << 20)) for _ in range(64)]
    path.write_bytes(b"".join(chunks) + compressor.flush())
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(
            SplitfedError, match=r"header says shape \(10,\) \(10 bytes\), its data hold more"
        ):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading the bomb allocated {peak} bytes"


def test_idx_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    from splitfed import _limits

    path = write_idx(tmp_path / "a.gz", np.zeros((100, 28, 28), np.uint8))
    monkeypatch.setattr(_limits, "available_memory", lambda: 10_000)
    with pytest.raises(SplitfedError, match=r"shape \(100, 28, 28\)\) needs .* of memory, but 9.8 KiB"):
        read_idx(path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([3.7, 1.0], r"labels must be 2 integers in 0..9, got float64 \[2\]"),
        ([float("nan"), 1.0], "labels must be 2 integers in 0..9, got float64"),
        ([-1, 2], r"labels must be 2 integers in 0..9, got int64 \[2\] in -1..2"),
        ([True, False], "labels must be 2 integers in 0..9, got bool"),
        ([[1], [2, 3]], "corrupt CIFAR-10 batch"),  # ragged
    ],
)
def test_cifar_labels_must_be_integers_in_range(tmp_path, labels, message):
    path = tmp_path / "b"
    with path.open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f)
    with pytest.raises(SplitfedError, match=message):
        read_cifar_batch(path)


def test_cifar_empty_batch_is_refused(tmp_path):
    path = tmp_path / "b"
    with path.open("wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    with pytest.raises(SplitfedError, match="holds no images"):
        read_cifar_batch(path)


def test_every_dataset_needs_nonempty_splits_and_labels_in_its_classes():
    from splitfed.data import Dataset

    x, y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 3])
    Dataset("ok", x, y, x, y, num_classes=4)
    with pytest.raises(SplitfedError, match="the test split is empty"):
        Dataset("d", x, y, x[:0], y[:0], num_classes=4)
    with pytest.raises(SplitfedError, match=r"train labels span 0..3; its 3 classes need labels in 0..2"):
        Dataset("d", x, y, x, y, num_classes=3)
    with pytest.raises(SplitfedError, match="4 samples but 4 labels of type torch.float32"):
        Dataset("d", x, y.float(), x, y, num_classes=4)
