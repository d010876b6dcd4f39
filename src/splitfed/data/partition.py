"""Client partitions of a training set: the paper's non-IID ratio (spec §4), Dirichlet, shards, IID.

Each partition function takes (labels, num_clients, seed, option) and returns one tensor of training-set
indices per client. No index is given twice.
"""

import math
from collections.abc import Callable

import numpy as np
import torch

from .._rng import derive_seed, generator
from ..errors import SplitfedError
from ..registry import Registry

Partition = Callable[..., list[torch.Tensor]]
PARTITIONS: Registry[Partition] = Registry("partition")


@PARTITIONS.register("non_iid_ratio")
def non_iid_ratio(labels: torch.Tensor, num_clients: int, seed: int, ratio: float) -> list[torch.Tensor]:
    """A share ``ratio`` of the data dealt out as label-sorted shards, the rest uniformly at random.

    p = 0 is IID; p = 1 gives each client one contiguous run of the label-sorted data.
    """
    n = len(labels)
    n_noniid = math.floor(ratio * n + 1e-9)  # the epsilon keeps e.g. 0.29 * 100 at 29, not 28
    n_iid = n - n_noniid
    # IID part: drawing each client's slice uniformly without replacement from the unassigned indices, in
    # turn, is the same as cutting consecutive slices off one uniform permutation.
    per_client = n_iid // num_clients
    perm = torch.randperm(n, generator=generator(seed, "partition"))
    iid = perm[: num_clients * per_client].view(num_clients, per_client)
    rest = perm[num_clients * per_client :]
    # Non-IID part: the remaining indices sorted by label, cut into contiguous shards; leftovers dropped.
    rest = rest[torch.sort(labels[rest], stable=True).indices]
    per_shard = n_noniid // num_clients
    shards = rest[: num_clients * per_shard].view(num_clients, per_shard)
    return [torch.cat([iid[i], shards[i]]) for i in range(num_clients)]


@PARTITIONS.register("iid")
def iid(labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
    """Equal uniform random slices (``n // num_clients`` each)."""
    return non_iid_ratio(labels, num_clients, seed, 0.0)


@PARTITIONS.register("shards")
def shards(labels: torch.Tensor, num_clients: int, seed: int, per_client: int) -> list[torch.Tensor]:
    """McMahan et al.'s pathological split: label-sorted data cut into shards, ``per_client`` each."""
    n_shards = num_clients * per_client
    size = len(labels) // n_shards
    if size == 0:
        raise SplitfedError(
            f"shards: {len(labels)} samples cannot fill {per_client} shards for each of {num_clients} clients"
        )
    g = generator(seed, "partition")
    perm = torch.randperm(len(labels), generator=g)
    ordered = perm[torch.sort(labels[perm], stable=True).indices][: n_shards * size].view(n_shards, size)
    deal = torch.randperm(n_shards, generator=g).view(num_clients, per_client)
    return [ordered[deal[i]].reshape(-1) for i in range(num_clients)]


@PARTITIONS.register("dirichlet")
def dirichlet(labels: torch.Tensor, num_clients: int, seed: int, alpha: float) -> list[torch.Tensor]:
    """Per class, client shares drawn from Dir(alpha); redrawn until every client holds some data.

    A client needs at least 10 samples where the data allow it (20+ per client), else 1.
    """
    n = len(labels)
    min_size = 10 if n >= 20 * num_clients else 1
    classes = torch.unique(labels).tolist()
    for attempt in range(1000):
        rng = np.random.default_rng(derive_seed(seed, "partition", attempt))
        parts: list[list[torch.Tensor]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = (labels == c).nonzero().squeeze(1)
            idx = idx[torch.from_numpy(rng.permutation(len(idx)))]
            shares = rng.dirichlet([alpha] * num_clients)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int).tolist()
            for i, piece in enumerate(torch.tensor_split(idx, cuts)):
                parts[i].append(piece)
        result = [torch.cat(p) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise SplitfedError(
        f"dirichlet alpha={alpha} leaves some of {num_clients} clients with fewer than {min_size} samples "
        "in 1000 draws; raise dirichlet_alpha or use fewer clients"
    )


@PARTITIONS.register("given")
def given(labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
    """The clients as the data came (data/given.py): nothing to deal. Named here so that it is listed."""
    raise SplitfedError(
        "partition given takes the clients from the data, which came as one data set; give per-client "
        "data (docs/api.md) or name another partition"
    )


def make_partition(
    name: str, labels: torch.Tensor, num_clients: int, seed: int, option: float | int | None = None
) -> list[torch.Tensor]:
    """Run partition ``name``; ``option`` is its knob (ratio, alpha or shards per client) if it has one."""
    if num_clients > len(labels):
        raise SplitfedError(f"clients={num_clients} exceeds the {len(labels)} training samples")
    fn = PARTITIONS.get(name)
    parts = fn(labels, num_clients, seed) if option is None else fn(labels, num_clients, seed, option)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise SplitfedError(
            f"partition {name} gives client {empty[0]} no samples "
            f"({len(labels)} samples, {num_clients} clients); use fewer clients"
        )
    return parts


def class_histogram(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """[num_clients, num_classes] sample counts."""
    return torch.stack([torch.bincount(labels[p], minlength=num_classes) for p in parts])


def format_histogram(hist: torch.Tensor, max_rows: int = 12) -> str:
    """A compact table: one row per client (the first ``max_rows``), one column per class."""
    num_clients, num_classes = hist.shape
    width = max(4, len(str(int(hist.max()))) + 1)
    head = "client" + "".join(f"{c:>{width}}" for c in range(num_classes)) + f"{'total':>{width + 2}}"
    rows = [head]
    for i in range(min(num_clients, max_rows)):
        counts = "".join(f"{int(v):>{width}}" for v in hist[i])
        rows.append(f"{i:>6}{counts}{int(hist[i].sum()):>{width + 2}}")
    if num_clients > max_rows:
        rows.append(f"  ... {num_clients - max_rows} more clients in partition.csv")
    return "\n".join(rows)
