"""Conversions at the boundary: whatever structure a user hands over becomes an :class:`ase.Atoms`."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

__all__ = ['closest_pair', 'to_atoms']


def to_atoms(obj: Any) -> Atoms:
    """Return an ``ase.Atoms`` for an ``ase.Atoms``, a pymatgen ``Structure``/``Molecule`` or a file path.

    Objects with a ``get_ase`` method (such as AiiDA's ``StructureData``) are converted through it, so this module
    needs no AiiDA import.
    """
    if isinstance(obj, Atoms):
        return obj.copy()
    if hasattr(obj, 'get_ase'):
        return obj.get_ase()
    cls = type(obj).__module__
    if cls.startswith('pymatgen'):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_atoms(obj)
    if isinstance(obj, str):
        from ase.io import read

        return read(obj)
    raise TypeError(f'cannot convert an object of type {type(obj).__name__} to ase.Atoms')


def closest_pair(atoms: Atoms) -> tuple[int, int, float]:
    """Return ``(i, j, distance)`` for the closest pair of atoms (minimum image in periodic directions), Å."""
    n = len(atoms)
    if n < 2:
        return -1, -1, float('inf')
    d = atoms.get_all_distances(mic=bool(np.any(atoms.pbc)))
    d[np.diag_indices(n)] = np.inf
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(min(i, j)), int(max(i, j)), float(d[i, j])
