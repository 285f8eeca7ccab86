"""A name -> component registry, one per kind of component (dataset, poisoner, attack, defense, ...).

Recipes and the CLI name components by string; a user adds one with the decorator, without editing any
central switch.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UsageError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


class Procedure:
    """A registered attack or defense: its typed config and the function that runs it. The CLI, the
    recipes and the Python API all build ``Config`` and call ``run``.

    ``inputs(cfg) -> {name: path or named set}`` lists what the procedure reads besides the command's
    model and data (a proxy corpus, say), so that it is hashed into the output's fingerprint.
    """

    def __init__(
        self,
        name: str,
        Config: type,
        run: Callable,
        help: str,
        inputs: Callable[[Any], dict] | None = None,
        example: str | None = None,
    ):
        self.name, self.Config, self.run, self.help = name, Config, run, help
        self.inputs = inputs or (lambda cfg: {})
        # The command line shown under --help; the CLI writes a generic one when None.
        self.example = example
