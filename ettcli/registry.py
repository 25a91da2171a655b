"""One registry type for every pluggable concern: families, datasets, recipes, plan presets, pruning methods.

A :class:`Registry` is an ordered name -> item mapping that refuses duplicates and answers an unknown name
with one :class:`~ettcli.errors.EttError` listing the known ones. It is the single source of the CLI's
choices and help text, so help and code cannot drift. Pure Python: importing it costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ettcli.errors import EttError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """Named items of one kind (``kind`` is what an item is called in messages, e.g. "dataset")."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name``; a name registers once (a second one is a programming error)."""
        if name in self:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self[name] = item
        return item

    def lookup(self, name: str) -> T:
        """The item called ``name``; an unknown name is an EttError that lists the known ones."""
        if name not in self:
            raise EttError(f"unknown {self.kind} '{name}'; choose one of: {self.choices()}")
        return self[name]

    def choices(self, where: Callable[[T], bool] | None = None) -> str:
        """The names, comma-separated, for messages and help (optionally only the items ``where`` accepts)."""
        return ", ".join(n for n, item in self.items() if where is None or where(item))
