"""A data set held whole as tensors (``Dataset``): its train and test splits (a validation split held
out of training on request), its classes, the augmentation of its training batches, and where the
user's own data came from (a Dataset read per draw, the clients' rows when given split into clients);
and the registry of the loaders that make one by name (``DATASETS``)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._rng import generator
from ..errors import SplitfedError
from ..registry import Registry
from .augment import Augment
from .items import ItemSource


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


# A loader takes (data_dir, **options) and returns a Dataset. The built-in ones register themselves with
# ``@DATASETS.register(name)`` in their modules (images.py, synthetic.py: `splitfed list` reads those
# decorators from the source); data/datasets.py imports them, so the registry is full wherever it is used.
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
