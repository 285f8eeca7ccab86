"""The catalog: a name -> component registry per kind (dataset, poisoner, attack, defense, ...).

Recipes, the CLI and ``bdcli list`` name components by string. Each entry carries what the rest of
bdcli needs to know about it, so that adding a component touches its own module only:

* ``version``: bumped whenever the component's code changes its results. It is part of every output's
  fingerprint, so a result made by older code is never reused silently (see ``tests/test_catalog.py``,
  which pins each component's source digest to its version);
* ``display`` and ``order``: the name and position in the papers' tables;
* ``help``: from its docstring; each config field's help comes from the field's ``metadata["help"]``,
  or, for the names shared by many configs, from ``bdcli/cli/fields.py``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, **entry: Any) -> Callable[[T], T]:
        """``entry`` sets the component's catalog fields (``version``, ``display``, ``order``)."""
        unknown = set(entry) - {"version", "display", "order"}
        if unknown:
            raise ValueError(f"unknown catalog fields {sorted(unknown)} for {self.kind} {name!r}")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            for key, value in entry.items():
                setattr(obj, key, value)
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(f"unknown {self.kind} {name!r}{_nearest(name, self._items)}; known: "
                             f"{', '.join(sorted(self._items)) or 'none'}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


def _nearest(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Procedure:
    """A registered attack or defense: its typed config and the function that runs it. The CLI, the
    recipes and the Python API all build ``Config`` and call ``run``.

    ``run`` is the function, or ``"module:function"``, imported on first use: a component registers from
    a torch-free spec module (``bdcli/attacks/specs/``, ``bdcli/defenses/specs/``) with its config, help
    and catalog fields, so that the CLI, ``bdcli list`` and a recipe's ``--dry-run`` never import torch.

    ``inputs(cfg) -> {name: path or named set}`` lists what the procedure reads besides the step's
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
        *,
        version: int = 1,
        display: str | None = None,
        order: int = 100,
    ):
        self.name, self.Config, self.help = name, Config, help
        self._run = run
        self.inputs = inputs or (lambda cfg: {})
        # The command line shown under --help; the CLI writes a generic one when None.
        self.example = example
        self.version, self.display, self.order = version, display or name, order

    @property
    def module(self) -> str:
        """The module that holds the implementation (named without importing it)."""
        return self._run.split(":", 1)[0] if isinstance(self._run, str) else self._run.__module__

    @property
    def run(self) -> Callable:
        if isinstance(self._run, str):
            import importlib

            module, _, attr = self._run.partition(":")
            self._run = getattr(importlib.import_module(module), attr)
        return self._run


@dataclass(frozen=True)
class Entry:
    """One catalog line: what ``bdcli list`` prints and what fingerprints and tables read."""

    kind: str
    name: str
    version: int
    display: str
    order: int
    help: str
    Config: type | None
    module: str  # where the implementation lives
    spec_module: str | None = None  # where the config and the catalog entry live, when that is elsewhere


def entry(kind: str, name: str) -> Entry:
    """The catalog entry of component ``name`` of ``kind`` (poisoner, attack, defense, evaluator)."""
    obj = _registry(kind).get(name)
    if kind == "evaluator":
        return obj
    if isinstance(obj, Procedure):
        spec = obj.Config.__module__ if obj.Config.__module__ != obj.module else None
        return Entry(kind, name, obj.version, obj.display, obj.order, obj.help, obj.Config, obj.module, spec)
    # Poisoners are classes: the class attributes are the entry.
    return Entry(kind, name, getattr(obj, "version", 1), getattr(obj, "display", name), getattr(obj, "order", 100),
                 inspect.getdoc(obj) or "", getattr(obj, "Config", None), obj.__module__)


KINDS = ("poisoner", "attack", "defense", "evaluator", "prober")


def entries(kind: str | None = None) -> list[Entry]:
    kinds = KINDS if kind is None else (kind,)
    out = []
    for k in kinds:
        reg = _registry(k)
        out += sorted((entry(k, n) for n in reg.names()), key=lambda e: (e.order, e.name))
    return out


def display_name(name: str | None, kinds: tuple[str, ...] = ("poisoner", "attack", "defense")) -> str | None:
    """The papers' spelling of a component name (badnets -> BadNets, fine-pruning -> FP)."""
    if name is None:
        return None
    for k in kinds:
        reg = _registry(k)
        if name in reg:
            return entry(k, name).display
    return name


def order_of(name: str, kinds: tuple[str, ...]) -> int:
    for k in kinds:
        reg = _registry(k)
        if name in reg:
            return entry(k, name).order
    return 1000


def _registry(kind: str) -> Registry:
    if kind == "poisoner":
        from .poison import POISONERS

        return POISONERS
    if kind == "attack":
        from .attacks import ATTACKS

        return ATTACKS
    if kind == "defense":
        from .defenses import DEFENSES

        return DEFENSES
    if kind == "evaluator":
        from . import api  # noqa: F401  (registers the evaluator)
        from .steps import EVALUATORS

        return EVALUATORS
    if kind == "prober":
        from .probe import PROBES

        return PROBES
    raise UsageError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")


def import_components(package: str, path) -> None:
    """Import every module of a component package, so that a new component registers itself by
    existing: adding an attack is adding a module under ``bdcli/attacks/``."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


# Code every component runs through; its digest is pinned to ``bdcli.steps.ENGINE_VERSION``.
SHARED_CODE = ("engine", "train_config.py", "models", "data", "metrics", "poison/base.py", "attacks/base.py", "defenses/base.py",
               "defenses/head.py", "defenses/stop_distance.py", "api.py")
LOCK = "component-versions.json"


def source_digests() -> dict[str, dict[str, Any]]:
    """Each component's version with a digest of the source file that defines it, and the shared
    code's version with a digest of that code. ``tests/test_catalog.py`` compares them with the lock
    file ``bdcli/component-versions.json``: a changed digest must come with either a version bump (the
    results change, so old outputs must not be reused) or a deliberate lock update (they do not)."""
    import hashlib
    import importlib
    from pathlib import Path

    from .steps import ENGINE_VERSION

    root = Path(__file__).parent

    def digest(paths: list[Path]) -> str:
        h = hashlib.sha256()
        for p in sorted(paths):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
        return h.hexdigest()[:16]

    out: dict[str, dict[str, Any]] = {}
    for e in entries():
        files = [Path(importlib.import_module(m).__file__) for m in (e.module, e.spec_module) if m]
        out[f"{e.kind}/{e.name}"] = {"version": e.version, "digest": digest(files)}
    shared = []
    for part in SHARED_CODE:
        p = root / part
        shared += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    out["engine"] = {"version": ENGINE_VERSION, "digest": digest(shared)}
    return out


def update_lock() -> None:
    import json
    from pathlib import Path

    path = Path(__file__).parent / LOCK
    path.write_text(json.dumps(source_digests(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":  # python -m bdcli.registry --update-lock
    import sys

    if sys.argv[1:] == ["--update-lock"]:
        # Through the package, not this __main__ copy of the module, whose classes the registries don't hold.
        from bdcli.registry import update_lock as _update

        _update()
    else:
        sys.exit("usage: python -m bdcli.registry --update-lock")
