"""The data sets by name: the registry with the built-in loaders in it (each takes ``(data_dir,
**options)`` and returns a ``Dataset``), and what is known of each before it is loaded.

The names the rest of splitfed imported from here before the data sets' modules were split (the
``Dataset``, its augmentation, the readers of each family, the user's own data) are re-exported.
"""

from .augment import Augment, cifar_augment
from .dataset import DATASETS, Dataset
from .images import find_cifar10, find_fmnist  # registers digits, fmnist, cifar10
from .synthetic import SYNTHETIC_SAMPLES, SYNTHETIC_SHAPE, check_synthetic_fits  # registers synthetic
from .user import (
    DATA_FILE_SUFFIXES,
    DATA_KEYS,
    PYTHON_DATA,
    TEST_SHARE,
    fingerprint,
    held_out_test,
    is_data_file,
    load_data_file,
    user_data,
)

__all__ = [
    "DATASETS",
    "DATA_FILE_SUFFIXES",
    "DATA_KEYS",
    "PYTHON_DATA",
    "SYNTHETIC_SAMPLES",
    "SYNTHETIC_SHAPE",
    "TEST_SHARE",
    "Augment",
    "Dataset",
    "check_synthetic_fits",
    "cifar_augment",
    "find_cifar10",
    "find_fmnist",
    "fingerprint",
    "held_out_test",
    "is_data_file",
    "known_shape",
    "load_data_file",
    "user_data",
]

# (C, H, W) and classes of the built-in data sets, known before loading them (their readers insist on them)
_KNOWN_SHAPES = {"digits": ((1, 8, 8), 10), "fmnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}


def known_shape(
    dataset: str, synthetic_shape: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...], int] | None:
    """(input shape C,H,W, classes) of a data set before it is loaded; None for a registered one."""
    if dataset == "synthetic":
        return tuple(synthetic_shape or SYNTHETIC_SHAPE), 10
    return _KNOWN_SHAPES.get(dataset)
