"""Configuration samplers: pure functions from one structure to many, each seeded and reproducible.

Every function takes an :class:`ase.Atoms` (pymatgen objects are converted at the boundary by
:func:`aiida_mlff.core.structures.to_atoms`) and returns new ``ase.Atoms`` objects; the input is never modified.
Lengths are in Å, angles in degrees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import NeighborList, natural_cutoffs

__all__ = ['bonded_side', 'dihedral_scan', 'rattle', 'strain']


def rattle(atoms: Atoms, n: int, stdev: float = 0.05, seed: int = 0) -> list[Atoms]:
    """Return ``n`` copies of ``atoms`` with Gaussian displacements.

    Parameters
    ----------
    atoms
        The reference structure.
    n
        Number of rattled copies.
    stdev
        Standard deviation of each Cartesian displacement component, Å.
    seed
        Seed of the random generator: the same seed gives the same structures.
    """
    if n < 1:
        raise ValueError(f'n must be at least 1, got {n}')
    if stdev < 0:
        raise ValueError(f'stdev must be non-negative, got {stdev} Å')
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        new = _copy(atoms)
        new.positions = atoms.positions + rng.normal(0.0, stdev, size=atoms.positions.shape)
        frames.append(new)
    return frames


def strain(atoms: Atoms, n: int, max_strain: float = 0.02, seed: int = 0, rattle_stdev: float = 0.0) -> list[Atoms]:
    """Return ``n`` homogeneously strained copies of a periodic structure.

    Each copy gets a random symmetric strain tensor with components drawn uniformly from
    ``[-max_strain, max_strain]``; atoms move with the cell (scaled positions are kept), then are optionally rattled.

    Parameters
    ----------
    atoms
        A structure periodic in all three directions.
    n
        Number of strained copies.
    max_strain
        Largest absolute strain component (dimensionless, 0.02 is 2 %).
    seed
        Seed of the random generator.
    rattle_stdev
        Optional Gaussian displacement added after straining, Å.
    """
    if not all(atoms.pbc):
        raise ValueError('strain needs a structure periodic in all three directions (pbc = True, True, True)')
    if n < 1:
        raise ValueError(f'n must be at least 1, got {n}')
    if not 0 <= max_strain < 0.5:
        raise ValueError(f'max_strain must lie in [0, 0.5), got {max_strain}')
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        new = _copy(atoms)
        new.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        if rattle_stdev > 0:
            new.positions += rng.normal(0.0, rattle_stdev, size=new.positions.shape)
        frames.append(new)
    return frames


def bonded_side(atoms: Atoms, b: int, c: int) -> np.ndarray:
    """Return the indices of the atoms on the ``c`` side of the bond ``b``-``c`` (``c`` included).

    Bonds come from ASE's natural covalent radii scaled by 1.2. Raises ``ValueError`` when the bond is part of a
    ring, because then no side can be rotated alone.
    """
    cutoffs = natural_cutoffs(atoms, mult=1.2)
    nl = NeighborList(cutoffs, self_interaction=False, bothways=True, skin=0.0)
    nl.update(atoms)
    seen = {c}
    stack = [c]
    while stack:
        atom = stack.pop()
        for other in nl.get_neighbors(atom)[0]:
            other = int(other)
            if atom == c and other == b:
                continue
            if other == b:
                raise ValueError(f'the bond {b}-{c} is part of a ring: its sides cannot be rotated independently')
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return np.array(sorted(seen), dtype=int)


def dihedral_scan(
    atoms: Atoms,
    indices: Sequence[int],
    angles: Sequence[float],
    rattle_stdev: float = 0.0,
    seed: int = 0,
) -> list[Atoms]:
    """Rotate one side of the central bond so that the dihedral ``indices`` takes each value of ``angles``.

    Parameters
    ----------
    atoms
        The reference structure (a molecule, or a molecule in a periodic box).
    indices
        Four atom indices ``(a, b, c, d)``; the atoms bonded to ``c`` on its side of the ``b``-``c`` bond rotate
        about the ``b``-``c`` axis.
    angles
        Target dihedral angles, degrees.
    rattle_stdev
        Optional Gaussian displacement added after the rotation, Å.
    seed
        Seed of the random generator for the rattle.
    """
    if len(indices) != 4 or len(set(indices)) != 4:
        raise ValueError(f'indices must be four different atom indices, got {list(indices)}')
    a, b, c, d = (int(i) for i in indices)
    if max(a, b, c, d) >= len(atoms) or min(a, b, c, d) < 0:
        raise ValueError(f'indices {list(indices)} out of range for {len(atoms)} atoms')
    side = bonded_side(atoms, b, c)
    if a in side:
        raise ValueError(f'atom {a} lies on the rotating side of bond {b}-{c}')
    rng = np.random.default_rng(seed)
    frames = []
    for angle in angles:
        new = _copy(atoms)
        new.set_dihedral(a, b, c, d, float(angle), indices=side)
        if rattle_stdev > 0:
            new.positions += rng.normal(0.0, rattle_stdev, size=new.positions.shape)
        frames.append(new)
    return frames


def _copy(atoms: Atoms) -> Atoms:
    """Copy the structure only: no calculator, no stale results."""
    return Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), cell=atoms.cell.copy(), pbc=atoms.pbc)
