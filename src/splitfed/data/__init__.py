"""Data: datasets held as tensors (a user's Dataset read per draw), client partitions dealt or given,
per-client index sampling."""

from .dataset import Dataset
from .datasets import DATASETS
from .partition import PARTITIONS, class_histogram, format_histogram, make_partition
from .sampler import ClientStreams

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "ClientStreams",
    "Dataset",
    "class_histogram",
    "format_histogram",
    "make_partition",
]
