"""Collective variables as differentiable torch functions, and harmonic (umbrella) biases.

A collective variable (CV) names atoms by their index *inside each replica*; evaluated on a batch of B replicas it
returns one value per replica, shape (B,). Positions are either batch-first ``(B, n, 3)`` (replicas of the same
size) or flattened ``(N, 3)`` with ``offsets`` (B,), the global index of each replica's first atom (ragged batches,
as in :class:`aiida_mlff.core.atoms.AtomsBatch`). Vectors between atoms use the minimum image of periodic cells.

Units: Å for distances, radians for angles and dihedrals (dihedrals in (-pi, pi], period 2 pi), eV for bias
energies, ``kappa`` in eV per CV unit squared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    'Angle',
    'CollectiveVariable',
    'Dihedral',
    'Distance',
    'DistanceDifference',
    'HarmonicBias',
    'angle',
    'dihedral',
    'distance',
    'minimum_image',
]


def minimum_image(vectors: Tensor, cell: Tensor | None = None, pbc: Tensor | None = None) -> Tensor:
    """Minimum-image convention for difference vectors.

    Parameters
    ----------
    vectors
        (B, 3) Å, one difference vector per replica.
    cell
        (B, 3, 3) or (3, 3) Å, rows are lattice vectors; None for open boundaries.
    pbc
        (B, 3) or (3,) bool; None means periodic wherever the cell vector is non-zero.

    Returns
    -------
    Tensor
        (B, 3) Å. Exact for orthorhombic cells; for triclinic cells the fractional-rounding image, which is the
        minimum image whenever the vector is shorter than half the smallest cell height.
    """
    if cell is None:
        return vectors
    cell = cell.to(vectors.dtype).expand(vectors.shape[0], 3, 3)
    if pbc is None:
        pbc = cell.norm(dim=-1) > 0
    pbc = pbc.to(vectors.device).expand(vectors.shape[0], 3)
    if not bool(pbc.any()):
        return vectors
    eye = torch.eye(3, dtype=vectors.dtype, device=vectors.device).expand_as(cell)
    rows_ok = pbc.unsqueeze(-1)
    safe = torch.where(rows_ok, cell, eye)  # open directions get a unit vector that is never wrapped
    frac = torch.linalg.solve(safe.transpose(-1, -2), vectors.unsqueeze(-1)).squeeze(-1)
    frac = frac - torch.where(pbc, torch.round(frac.detach()), torch.zeros_like(frac))
    return (frac.unsqueeze(1) @ safe).squeeze(1)


def _gather(positions: Tensor, index: int, offsets: Tensor | None) -> Tensor:
    if positions.dim() == 3:
        return positions[:, index]
    if offsets is None:
        return positions[index].unsqueeze(0)
    return positions[offsets + index]


def _vector(positions: Tensor, a: int, b: int, cell, pbc, offsets) -> Tensor:
    """Minimum-image vector r_b - r_a, (B, 3)."""
    return minimum_image(_gather(positions, b, offsets) - _gather(positions, a, offsets), cell, pbc)


def distance(positions: Tensor, i: int, j: int, cell=None, pbc=None, offsets=None) -> Tensor:
    """Distance |r_j - r_i| in Å, (B,)."""
    return _vector(positions, i, j, cell, pbc, offsets).norm(dim=-1)


def angle(positions: Tensor, i: int, j: int, k: int, cell=None, pbc=None, offsets=None) -> Tensor:
    """Angle i-j-k at atom j in radians, [0, pi], (B,)."""
    a = _vector(positions, j, i, cell, pbc, offsets)
    b = _vector(positions, j, k, cell, pbc, offsets)
    # atan2 of |a x b| and a . b: accurate near 0 and pi, unlike acos
    return torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))


def dihedral(positions: Tensor, i: int, j: int, k: int, l: int, cell=None, pbc=None, offsets=None) -> Tensor:  # noqa: E741
    """Dihedral i-j-k-l in radians, (-pi, pi] (IUPAC sign: positive clockwise looking along j->k), (B,)."""
    b1 = _vector(positions, i, j, cell, pbc, offsets)
    b2 = _vector(positions, j, k, cell, pbc, offsets)
    b3 = _vector(positions, k, l, cell, pbc, offsets)
    n1 = torch.linalg.cross(b1, b2)
    n2 = torch.linalg.cross(b2, b3)
    y = (b2.norm(dim=-1, keepdim=True) * b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return torch.atan2(y, x)


class CollectiveVariable:
    """Base class: a function of the positions of each replica, (B,).

    Attributes
    ----------
    period
        Period of the CV (2 pi for dihedrals) or None.
    unit
        'Å' or 'rad'.
    """

    period: float | None = None
    unit: str = 'Å'

    def __repr__(self) -> str:
        return self.name

    def __call__(self, positions: Tensor, cell=None, pbc=None, offsets=None) -> Tensor:
        """Evaluate the CV on every replica.

        Parameters
        ----------
        positions
            (B, n, 3) or flattened (N, 3) Å.
        cell, pbc
            (B, 3, 3) Å and (B, 3) bool, or None for open boundaries.
        offsets
            (B,) int64, index of each replica's first atom in flattened ``positions``.

        Returns
        -------
        Tensor
            (B,) in CV units.
        """
        raise NotImplementedError

    @property
    def name(self) -> str:
        """Short label, e.g. ``dihedral(0,1,2,3)``."""
        return f'{type(self).__name__.lower()}({",".join(map(str, self.atoms))})'

    @property
    def atoms(self) -> tuple[int, ...]:
        """Atom indices inside a replica."""
        raise NotImplementedError

    def evaluate(self, batch) -> Tensor:
        """Evaluate on an :class:`~aiida_mlff.core.atoms.AtomsBatch`, (B,)."""
        return self(batch.positions, batch.cell, batch.pbc, batch_offsets(batch))


def batch_offsets(batch) -> Tensor:
    """(B,) int64 index of the first atom of each system of an ``AtomsBatch``."""
    counts = batch.counts
    return torch.cumsum(counts, 0) - counts


class Distance(CollectiveVariable):
    """Distance between atoms i and j [Å]."""

    def __init__(self, i: int, j: int) -> None:
        self.i, self.j = int(i), int(j)
        self.period, self.unit = None, 'Å'

    @property
    def atoms(self) -> tuple[int, ...]:  # noqa: D102
        return (self.i, self.j)

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return distance(positions, self.i, self.j, cell, pbc, offsets)


class Angle(CollectiveVariable):
    """Angle i-j-k [rad], vertex at j."""

    def __init__(self, i: int, j: int, k: int) -> None:
        self.i, self.j, self.k = int(i), int(j), int(k)
        self.period, self.unit = None, 'rad'

    @property
    def atoms(self) -> tuple[int, ...]:  # noqa: D102
        return (self.i, self.j, self.k)

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return angle(positions, self.i, self.j, self.k, cell, pbc, offsets)


class Dihedral(CollectiveVariable):
    """Dihedral i-j-k-l [rad] in (-pi, pi], period 2 pi."""

    def __init__(self, i: int, j: int, k: int, l: int) -> None:  # noqa: E741
        self.i, self.j, self.k, self.l = int(i), int(j), int(k), int(l)
        self.period, self.unit = 2.0 * math.pi, 'rad'

    @property
    def atoms(self) -> tuple[int, ...]:  # noqa: D102
        return (self.i, self.j, self.k, self.l)

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return dihedral(positions, self.i, self.j, self.k, self.l, cell, pbc, offsets)


class DistanceDifference(CollectiveVariable):
    """Difference of two distances d(i, j) - d(k, l) [Å] (e.g. a proton-transfer coordinate)."""

    def __init__(self, i: int, j: int, k: int, l: int) -> None:  # noqa: E741
        self.i, self.j, self.k, self.l = int(i), int(j), int(k), int(l)
        self.period, self.unit = None, 'Å'

    @property
    def atoms(self) -> tuple[int, ...]:  # noqa: D102
        return (self.i, self.j, self.k, self.l)

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return distance(positions, self.i, self.j, cell, pbc, offsets) - distance(
            positions, self.k, self.l, cell, pbc, offsets
        )


class HarmonicBias:
    """Umbrella bias ``0.5 * kappa * (s - center)**2`` with one centre per replica.

    All umbrella windows thus run as one batch: replica b feels the bias centred at ``centers[b]``. For periodic CVs
    the displacement ``s - center`` is taken as its minimum image.

    Parameters
    ----------
    cv
        The collective variable.
    centers
        (B,) centres in CV units, one per replica (a scalar applies to every replica).
    kappa
        Force constant(s) in eV per CV unit squared, scalar or (B,).
    """

    def __init__(
        self, cv: CollectiveVariable, centers: float | Sequence[float] | Tensor, kappa: float | Sequence[float]
    ):
        self.cv = cv
        self.centers = torch.as_tensor(centers, dtype=torch.float64).reshape(-1)
        self.kappa = torch.as_tensor(kappa, dtype=torch.float64).reshape(-1)

    def __repr__(self) -> str:
        return f'HarmonicBias({self.cv.name}, {len(self.centers)} centres, kappa={self.kappa.tolist()})'

    def displacement(self, s: Tensor) -> Tensor:
        """Minimum-image ``s - center``, (B,)."""
        c = self.centers.to(device=s.device, dtype=s.dtype)
        d = s - c
        if self.cv.period is not None:
            p = self.cv.period
            d = d - p * torch.round(d.detach() / p)
        return d

    def energy_from_cv(self, s: Tensor) -> Tensor:
        """Bias energy [eV] from CV values s (B,)."""
        k = self.kappa.to(device=s.device, dtype=s.dtype)
        return 0.5 * k * self.displacement(s) ** 2

    def __call__(self, positions: Tensor, cell=None, pbc=None, offsets=None) -> tuple[Tensor, Tensor]:
        """Return (bias energy [eV], CV value) per replica, both (B,); differentiable in positions."""
        s = self.cv(positions, cell, pbc, offsets)
        return self.energy_from_cv(s), s
