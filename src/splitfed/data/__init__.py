"""Data: datasets held as tensors, client partitions, per-client index sampling."""

from .datasets import DATASETS, Dataset
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
