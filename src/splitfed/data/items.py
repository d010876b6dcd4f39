"""A user's ``torch.utils.data.Dataset`` read item by item at every draw, so its own transform runs anew.

A Dataset whose ``__getitem__`` augments at random would be frozen if read once into tensors. Here the
training samples are read again for every batch, under RNG states seeded from what names the draw
(seed, stream, epoch, position in the epoch: ``ClientStreams`` passes them), so an augmentation differs
between draws and repeats exactly under the same seed, after a resume too, with nothing saved.
"""

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import SplitfedError


class ItemSource:
    """Training rows of a Dataset, each row the item ``index[row]`` of ``datasets[owner[row]]``."""

    def __init__(
        self, datasets: Sequence[Any], owner: torch.Tensor, index: torch.Tensor, source: str
    ) -> None:
        self.datasets = list(datasets)
        self.owner = owner  # [rows] which Dataset holds the row (several: one per client given)
        self.index = index  # [rows] the row's item number in that Dataset
        self.source = source

    def subset(self, rows: torch.Tensor) -> "ItemSource":
        """The same source restricted to ``rows`` (a validation hold-out keeps the others)."""
        return ItemSource(self.datasets, self.owner[rows], self.index[rows], self.source)

    def read(self, rows: torch.Tensor, seed: int) -> torch.Tensor:
        """The inputs of ``rows``, read now: torch's, Python's and NumPy's global RNGs are seeded by
        ``seed`` around the reads (the transforms in use draw from one of them) and then restored, so the
        run's own random state is left as it was."""
        from torch.utils.data import default_collate

        rows = rows.cpu()
        owners, items = self.owner[rows].tolist(), self.index[rows].tolist()
        with seeded_rngs(seed):
            xs = [_input(self.datasets[o][i], self.source) for o, i in zip(owners, items, strict=True)]
        try:
            x = default_collate(xs)
        except (TypeError, RuntimeError) as e:  # a transform that returns other shapes or PIL images
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise SplitfedError(f"{self.source}: the Dataset's items cannot be stacked: {first}") from None
        if not isinstance(x, torch.Tensor):
            raise SplitfedError(
                f"{self.source}: the Dataset's inputs are {type(x).__name__}; they must be tensors"
            )
        return x.float() if x.is_floating_point() else x.long()  # as the materialised copy (user_data)


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """torch's CPU, Python's and NumPy's global RNGs seeded by ``seed`` inside, restored after: a
    transform draws from whichever its library uses (torchvision: torch; older code: random, NumPy).

    The CPU generator is set directly: ``torch.manual_seed`` would also queue the seeding of every
    accelerator, a stack trace each, which costs more than reading a batch.
    """
    cpu = torch.random.default_generator
    torch_state, py_state, np_state = cpu.get_state(), random.getstate(), np.random.get_state()
    try:
        cpu.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        yield
    finally:
        cpu.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def _input(item: Any, source: str) -> Any:
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0]
    raise SplitfedError(f"{source}: a Dataset item is a {type(item).__name__}; it must be a pair (x, y)")
