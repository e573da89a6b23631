"""The architecture registry: a name -> the builder of a potential that keeps :mod:`aiida_mlff.core.contract`.

A builder is a function ``builder(elements, cutoff, committee, seed, **hyperparameters)`` returning a potential;
its signature is the list of hyperparameters a campaign may set (``options.TRAIN['model']`` is checked against it).

Where builders come from, in the order a name is looked up:

1. :func:`register_architecture` at run time (a decorator; tests and notebooks);
2. this package's own architectures (:data:`BUILTIN`, imported only when first used);
3. other packages, through the entry-point group ``mlff.architectures``::

       [project.entry-points."mlff.architectures"]
       my-net = "my_package.potentials:build_my_net"

The registry imports no architecture module at import time, so the modules that define architectures (``models``,
``reference_models``, a plugin's) and those that read potential files (``potential_io``) all depend on it and not on
each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    'ARCHITECTURES',
    'BUILTIN',
    'DEFAULT_ARCHITECTURE',
    'ENTRY_POINT_GROUP',
    'ArchitectureError',
    'build',
    'register_architecture',
]

ENTRY_POINT_GROUP = 'mlff.architectures'
DEFAULT_ARCHITECTURE = 'bp-chiral'

#: this package's architectures: name -> 'module:function', imported on first use
BUILTIN: dict[str, str] = {
    'bp-chiral': 'aiida_mlff.core.models:build_bp_chiral',
    'torsion-analytic': 'aiida_mlff.core.reference_models:build_torsion',
    'surface-analytic': 'aiida_mlff.core.reference_models:build_surface',
    'mace': 'aiida_mlff.core.mace_model:build_mace',
    'xtb-delta': 'aiida_mlff.core.baselines:build_xtb_delta',
}


class ArchitectureError(ValueError):
    """An architecture is unknown, or its builder cannot be imported."""


def _load(target: str, name: str, origin: str) -> Callable[..., Any]:
    """Import ``'module:function'``; raise :class:`ArchitectureError` naming the architecture and where it came from."""
    module_name, _, attribute = target.partition(':')
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ArchitectureError(f'architecture {name!r} ({origin} {target}) cannot be imported: {error}') from error


class _Registry(Mapping[str, Callable[..., Any]]):
    """A read-only mapping name -> builder that imports a builder only when it is asked for.

    Listing names (``in``, ``sorted``, ``len``) reads entry-point metadata but imports nothing.
    """

    def __init__(self) -> None:
        self._registered: dict[str, Callable[..., Any]] = {}
        self._loaded: dict[str, Callable[..., Any]] = {}
        self._plugins: dict[str, str] | None = None

    def _plugin_targets(self) -> dict[str, str]:
        if self._plugins is None:
            self._plugins = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        return self._plugins

    def register(self, name: str, builder: Callable[..., Any]) -> None:
        """Add or replace ``name`` at run time (takes precedence over built-ins and plug-ins)."""
        self._registered[name] = builder

    def origin(self, name: str) -> str:
        """Where ``name`` comes from: ``'registered'``, ``'built-in'`` or ``'entry point'``."""
        if name in self._registered:
            return 'registered'
        if name in BUILTIN:
            return 'built-in'
        if name in self._plugin_targets():
            return 'entry point'
        raise KeyError(name)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name in self._registered:
            return self._registered[name]
        if name not in self._loaded:
            if name in BUILTIN:
                self._loaded[name] = _load(BUILTIN[name], name, 'built-in')
            elif name in self._plugin_targets():
                self._loaded[name] = _load(self._plugin_targets()[name], name, f'entry point of {ENTRY_POINT_GROUP}')
            else:
                raise KeyError(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._registered, *BUILTIN, *self._plugin_targets()]))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        return name in self._registered or name in BUILTIN or name in self._plugin_targets()


#: every architecture this process can build: name -> builder (lazy; see the module docstring)
ARCHITECTURES = _Registry()


def register_architecture(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder`` under ``name`` at run time (it shadows a built-in or plug-in name)."""

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        ARCHITECTURES.register(name, builder)
        return builder

    return wrap


def build(
    architecture: str = DEFAULT_ARCHITECTURE,
    *,
    elements,
    cutoff: float | None = None,
    committee: int = 1,
    seed: int = 0,
    **hyperparameters,
):
    """Build a potential of ``architecture`` (cutoff in Å; None: the builder's default).

    Raises
    ------
    ArchitectureError
        The name is not registered (the message lists the known ones), or its builder cannot be imported.
    """
    if architecture not in ARCHITECTURES:
        raise ArchitectureError(f'unknown architecture {architecture!r}; registered: {sorted(ARCHITECTURES)}')
    builder = ARCHITECTURES[architecture]
    if cutoff is not None:
        hyperparameters['cutoff'] = cutoff
    return builder(elements=elements, committee=committee, seed=seed, **hyperparameters)
