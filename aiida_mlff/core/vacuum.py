"""Vacuum between periodic images: tells a molecule (or cluster) in a box from a slab, a wire or a bulk phase.

Units: Å.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

__all__ = ['is_molecule_in_box', 'vacuum_widths']


def vacuum_widths(atoms: Atoms) -> np.ndarray:
    """Widest empty slab between periodic images along each cell direction, (3,) Å.

    Along direction i the atoms' fractional coordinates s_i are wrapped onto a circle; the widest gap between
    neighbours on it, times the spacing of the lattice planes ``1 / |b_i|`` (b_i the reciprocal vector, no 2 pi),
    is the thickness of the widest atom-free slab parallel to the other two cell vectors. Exact for any triclinic
    cell and for atoms that straddle the cell boundary. Non-periodic directions (or no atoms) give inf.
    """
    widths = np.full(3, np.inf)
    if len(atoms) == 0:
        return widths
    cell = atoms.cell.complete()
    frac = np.mod(atoms.positions @ np.linalg.inv(cell), 1.0)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # distance between lattice planes, Å
    for i in np.flatnonzero(atoms.pbc):
        s = np.sort(frac[:, i])
        gaps = np.append(np.diff(s), s[0] + 1.0 - s[-1])
        widths[i] = gaps.max() * spacing[i]
    return widths


def is_molecule_in_box(atoms: Atoms, vacuum: float) -> bool:
    """Whether ``atoms`` is an isolated molecule (then k-points and stress are meaningless).

    True when no direction is periodic or every periodic direction has at least ``vacuum`` Å of empty space
    between images (:func:`vacuum_widths`).
    """
    return bool(np.all(vacuum_widths(atoms) >= vacuum))
