"""Synthetic data: seeded class-conditional images, fixed like a real data set (their own seed), of a
shape and size the config chooses; refused before generation when they would not fit in memory."""

import math

import torch
import torch.nn.functional as F

from .._limits import check_fits
from .._rng import generator
from .dataset import DATASETS, Dataset

SYNTHETIC_SHAPE = (1, 28, 28)  # synthetic data's default C, H, W
SYNTHETIC_SAMPLES = 2000  # synthetic data's default number of training samples


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
