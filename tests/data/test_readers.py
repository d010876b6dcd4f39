import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from splitfed import SplitfedError
from splitfed.data import DATASETS
from splitfed.data.readers import read_cifar_batch, read_idx

from .formats import write_cifar10, write_cifar_batch, write_fmnist, write_idx


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
