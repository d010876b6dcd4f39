"""Name -> factory registries for models, algorithms, datasets and partitions (timm style)."""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import SplitfedError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories, filled by the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SplitfedError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
