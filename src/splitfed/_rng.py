"""Seeds derived per purpose, so that changing one source of randomness leaves the others fixed.

Every random choice in splitfed (partition, init, which batch a client draws, client order, augmentation)
comes from a generator keyed by (seed, purpose, ...). Nothing depends on a generator's running state, so a
resumed run needs no saved RNG state to repeat the uninterrupted one bit for bit.
"""

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(seed: int, *keys: object) -> torch.Generator:
    """A fresh CPU generator for (seed, *keys)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g
