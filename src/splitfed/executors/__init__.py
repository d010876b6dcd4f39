"""Executors: run an algorithm's definition — in this process one participant at a time (``sequential``)
or with independent participants vectorised (``batched``); across processes (``distributed``); or as the
network services (``splitfed.services``). None of them knows an algorithm's name."""

from .local import LocalExecutor, make_executor
from .train import train

__all__ = ["LocalExecutor", "make_executor", "train"]
