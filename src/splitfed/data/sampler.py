"""Per-client batch sampling by index from tensors held once (no DataLoader per client).

Each client reads its data as an endless stream of epochs, every epoch a fresh permutation of its indices.
A batch takes the next b indices of the stream, crossing into the next epoch when one runs out, so every
batch has exactly b samples. Permutations are derived from (seed, client, epoch), so the sampler's whole
state is two integers per stream, saved in checkpoints.
"""

import torch

from .._rng import derive_seed, generator
from .dataset import Dataset


class ClientStreams:
    """Batches for each stream (one per client, plus any extra such as centralized's union)."""

    def __init__(self, data: Dataset, indices: list[torch.Tensor], seed: int) -> None:
        self.data = data
        self.indices = indices
        self.seed = seed
        self.epoch = [0] * len(indices)
        self.pos = [0] * len(indices)
        self._perm: dict[int, tuple[int, torch.Tensor]] = {}  # stream -> (epoch, its permutation)

    def _order(self, s: int) -> torch.Tensor:
        cached = self._perm.get(s)
        if cached is None or cached[0] != self.epoch[s]:
            g = generator(self.seed, "sample", s, self.epoch[s])
            order = torch.randperm(len(self.indices[s]), generator=g)  # CPU generator: same on any device
            perm = self.indices[s][order.to(self.indices[s].device)]
            cached = self._perm[s] = (self.epoch[s], perm.to(self.data.train_x.device))
        return cached[1]

    def next_indices(self, s: int, size: int) -> torch.Tensor:
        pieces, need = [], size
        while need:
            order = self._order(s)
            take = min(need, len(order) - self.pos[s])
            pieces.append(order[self.pos[s] : self.pos[s] + take])
            self.pos[s] += take
            need -= take
            if self.pos[s] == len(order):
                self.epoch[s], self.pos[s] = self.epoch[s] + 1, 0
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def batch(self, s: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``size`` training samples of stream ``s``, augmented if the data set says so."""
        x, y = self.batches([s], [size])
        return x, y

    def batches(self, streams: list[int], sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The next sizes[i] samples of each stream streams[i], concatenated in that order.

        One gather for all of them (a slot of many clients costs a few kernels, not a few per client);
        the same samples as drawing each stream's batch in turn.
        """
        keys = [(self.epoch[s], self.pos[s]) for s in streams]  # name each draw, for its augmentation
        pieces = [self.next_indices(s, size) for s, size in zip(streams, sizes, strict=True)]
        idx = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        x, y = self._inputs(streams, pieces, keys, idx), self.data.train_y[idx]
        if self.data.augment is not None:
            parts = x.split(sizes)
            x = torch.cat(
                [
                    self.data.augment(part, generator(self.seed, "augment", s, *key))
                    for part, s, key in zip(parts, streams, keys, strict=True)
                ]
            )
        return x, y

    def _inputs(
        self, streams: list[int], pieces: list[torch.Tensor], keys: list, idx: torch.Tensor
    ) -> torch.Tensor:
        """The batch's inputs: gathered from the tensors, or read from the user's Dataset, each stream's
        piece under a seed that names its draw (so a transform repeats under the same seed, resumed too)."""
        items = self.data.items
        if items is None:
            return self.data.train_x[idx]
        read = [
            items.read(piece, derive_seed(self.seed, "draw", s, *key))
            for piece, s, key in zip(pieces, streams, keys, strict=True)
        ]
        return (read[0] if len(read) == 1 else torch.cat(read)).to(self.data.train_x.device)

    def skip_to(self, s: int, consumed: int) -> None:
        """Put stream s where it is after ``consumed`` samples (a client re-entering a round)."""
        self.epoch[s], self.pos[s] = divmod(consumed, len(self.indices[s]))

    def state_dict(self) -> dict[str, list[int]]:
        return {"epoch": list(self.epoch), "pos": list(self.pos)}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        self.epoch, self.pos = list(state["epoch"]), list(state["pos"])
