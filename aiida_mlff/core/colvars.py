"""Collective variables: one registry of CV types, differentiable torch functions and biases.

A collective variable (CV) names atoms by their index *inside each replica*; evaluated on a batch of B replicas it
returns one value per replica, shape (B,). Positions are either batch-first ``(B, n, 3)`` (replicas of the same
size) or flattened ``(N, 3)`` with ``offsets`` (B,), the global index of each replica's first atom (ragged batches,
as in :class:`aiida_mlff.core.atoms.AtomsBatch`). Vectors between atoms use the minimum image of periodic cells.

This module is the one place that knows each CV type: :data:`CV_TYPES` maps the ``type`` of a spec (the mapping in
job files, campaign files and AiiDA ``Dict`` inputs) to its class, and each class carries its period, its internal
unit and its file unit. Specs::

    {'type': 'distance', 'atoms': [i, j]}                       # Å
    {'type': 'angle', 'atoms': [i, j, k]}                       # vertex j; rad inside, deg in files
    {'type': 'dihedral', 'atoms': [i, j, k, l]}                 # (-pi, pi], period 2 pi; deg in files
    {'type': 'distance_difference', 'atoms': [i, j, k, l]}      # d(i, j) - d(k, l), Å
    {'type': 'point_plane', 'atoms': [p, a, b, c]}              # signed distance of p from plane abc, Å
    {'type': 'coordination', 'atoms': [...], 'partners': [...], 'r0': 1.3, 'n': 6, 'm': 12}   # dimensionless
    {'type': 'combination', 'terms': [{'cv': {...}, 'coefficient': 1.0}, ...]}                 # unit of its terms
    {'type': 'position', 'atoms': [i], 'axis': 'z'}             # a Cartesian coordinate of atom i, Å

Units: inside the engine Å for lengths, radians for angles, eV for bias energies, ``kappa`` in eV per internal CV
unit squared. Files, reports and the command line speak Å and degrees: :meth:`CollectiveVariable.to_file` and
:meth:`CollectiveVariable.to_internal` are the one conversion between the two. Umbrella windows along a CV
are placed by :mod:`aiida_mlff.core.windows`.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    'CV_TYPES',
    'FILE_UNITS',
    'Angle',
    'CVSpecError',
    'CollectiveVariable',
    'Combination',
    'Coordination',
    'Dihedral',
    'Distance',
    'DistanceDifference',
    'HarmonicBias',
    'PointPlane',
    'Position',
    'angle',
    'batch_offsets',
    'coordination',
    'cv_from_spec',
    'cv_spec_errors',
    'dihedral',
    'distance',
    'minimum_image',
    'point_plane',
    'switching_function',
]

#: internal unit -> (unit in files, reports and the CLI; factor from internal to file units). The only deg/rad
#: conversion of the package.
FILE_UNITS: dict[str, tuple[str, float]] = {'Å': ('Å', 1.0), 'rad': ('deg', 180.0 / math.pi), '': ('', 1.0)}


# ------------------------------------------------------------------------------------------ geometry (torch)
#: sweeps of the lattice reduction in :func:`_reduced_lattice`. A sweep reduces every pair of cell vectors (Gauss)
#: and every vector against +-1 combinations of the other two; reduction converges like Euclid's algorithm, so 8
#: sweeps bring cells sheared by integer combinations of their vectors up to 10^4 (checked) to Minkowski form.
_REDUCTION_SWEEPS = 8
#: the 27 integer shifts {-1, 0, 1}^3 searched around the rounded image, the zero shift first (it wins ties)
_SHIFTS = [(0, 0, 0)] + [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0,) * 3]
_PAIRS = [(i, j) for i in range(3) for j in range(3) if i != j]
_SIGNS = [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)]
#: a few reduced lattices, keyed by the identity and version of the cell and pbc tensors (MD passes the same ones)
_LATTICE_CACHE: dict[tuple, tuple] = {}
_LATTICE_CACHE_SIZE = 16


def _unit(v: Tensor) -> Tensor:
    """Rows of ``v`` normalised; zero rows stay zero."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _complete_cell(cell: Tensor, pbc: Tensor) -> Tensor:
    """A full-rank basis (B, 3, 3) [Å] with the periodic rows of ``cell``.

    Open rows are replaced by unit vectors orthogonal to the periodic ones, so a reduction never mixes the two.
    Branch-free, no host reads.
    """
    periodic = pbc.to(cell.dtype)
    rows = cell * periodic.unsqueeze(-1)
    n_periodic = pbc.sum(-1).view(-1, 1, 1)
    index = torch.arange(3, device=cell.device)
    # two periodic rows: the open row is their normal (rows[i+1] x rows[i+2] is non-zero only at the open row)
    normals = _unit(torch.linalg.cross(rows.roll(-1, dims=1), rows.roll(-2, dims=1)))
    two = rows + (1.0 - periodic).unsqueeze(-1) * normals
    # one periodic row a: the two open rows are u and w, orthonormal and orthogonal to a
    a = rows.sum(1)
    axis = (index == a.abs().argmin(-1, keepdim=True)).to(cell.dtype)
    u = _unit(torch.linalg.cross(a, axis))
    w = _unit(torch.linalg.cross(a, u))
    p = periodic.argmax(-1, keepdim=True)
    one = (
        rows
        + (index == (p + 1) % 3).to(cell.dtype).unsqueeze(-1) * u.unsqueeze(1)
        + (index == (p + 2) % 3).to(cell.dtype).unsqueeze(-1) * w.unsqueeze(1)
    )
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell)
    return torch.where(n_periodic == 3, rows, torch.where(n_periodic == 2, two, torch.where(n_periodic == 1, one, eye)))


def _reduce(basis: Tensor) -> tuple[Tensor, Tensor]:
    """Lattice reduction of the rows of ``basis`` (B, 3, 3) [Å], a fixed number of sweeps (no host reads).

    Returns
    -------
    tuple of Tensor
        The reduced basis and the integer (stored as floats) unimodular matrix ``U`` with ``reduced = U @ basis``.
    """
    b = basis.clone()
    u = torch.eye(3, dtype=basis.dtype, device=basis.device).repeat(basis.shape[0], 1, 1)
    signs = torch.tensor(_SIGNS, dtype=basis.dtype, device=basis.device)  # (4, 2)
    for _ in range(_REDUCTION_SWEEPS):
        for i, j in _PAIRS:  # Gauss: b_i -= round(b_i.b_j / b_j.b_j) b_j
            mu = torch.round((b[:, i] * b[:, j]).sum(-1) / (b[:, j] * b[:, j]).sum(-1)).unsqueeze(-1)
            b[:, i] = b[:, i] - mu * b[:, j]
            u[:, i] = u[:, i] - mu * u[:, j]
        for i in range(3):  # b_i against b_i +- b_j +- b_k
            j, k = (i + 1) % 3, (i + 2) % 3
            cand_b = b[:, i, None] + signs[:, :1] * b[:, j, None] + signs[:, 1:] * b[:, k, None]  # (B, 4, 3)
            cand_u = u[:, i, None] + signs[:, :1] * u[:, j, None] + signs[:, 1:] * u[:, k, None]
            length = cand_b.square().sum(-1)
            best = length.argmin(-1)
            rows = torch.arange(b.shape[0], device=b.device)
            shorter = (length[rows, best] < b[:, i].square().sum(-1) * (1.0 - 1e-10)).unsqueeze(-1)
            b[:, i] = torch.where(shorter, cand_b[rows, best], b[:, i])
            u[:, i] = torch.where(shorter, cand_u[rows, best], u[:, i])
    return b, u


def _inverse(rows: Tensor) -> Tensor:
    """Inverse of (B, 3, 3) matrices by cross products (``torch.linalg`` solvers read the host for error checks)."""
    crosses = torch.linalg.cross(rows.roll(-1, dims=1), rows.roll(-2, dims=1))  # row i: r_{i+1} x r_{i+2}
    det = (rows[:, 0] * crosses[:, 0]).sum(-1)
    return crosses.transpose(-1, -2) / det.view(-1, 1, 1)


def _reduced_lattice(cell: Tensor, pbc: Tensor | None) -> tuple[Tensor, ...]:
    """The reduced lattice of ``cell`` and ``pbc`` and what :func:`minimum_image` needs of it.

    Returns the reduced basis R (B, 3, 3) [Å], its inverse, ``U`` (R = U @ completed cell), the periodic rows of R
    (B, 3), the 27 neighbour shifts s (B, 27, 3; zero along open rows) and their vectors s @ R [Å]. Computed in
    float64 on detached copies, and cached for the same (unmodified) cell and pbc tensors.
    """
    key = None
    if not cell.is_inference() and (pbc is None or not pbc.is_inference()):
        key = (id(cell), cell._version, id(pbc), None if pbc is None else pbc._version, cell.device)
        hit = _LATTICE_CACHE.get(key)
        if hit is not None and hit[0] is cell and hit[1] is pbc:
            return hit[2]
    c = cell.detach().to(torch.float64).reshape(-1, 3, 3)
    p = (c.norm(dim=-1) > 0) if pbc is None else pbc.to(c.device).reshape(-1, 3)
    n_cells = max(c.shape[0], p.shape[0])
    c, p = c.expand(n_cells, 3, 3), p.expand(n_cells, 3)
    reduced, u = _reduce(_complete_cell(c, p))
    # reduced row r is periodic iff it combines periodic rows only (U never mixes periodic and open rows)
    periodic = (u.abs() * (~p).to(u.dtype).unsqueeze(1)).sum(-1) == 0
    periodic = periodic.to(u.dtype)
    near = torch.tensor(_SHIFTS, dtype=u.dtype, device=u.device) * periodic.unsqueeze(1)  # (B, 27, 3)
    value = (reduced, _inverse(reduced), u, periodic, near, near @ reduced)
    if key is not None:
        if len(_LATTICE_CACHE) >= _LATTICE_CACHE_SIZE:
            _LATTICE_CACHE.pop(next(iter(_LATTICE_CACHE)))
        _LATTICE_CACHE[key] = (cell, pbc, value)
    return value


def minimum_image(vectors: Tensor, cell: Tensor | None = None, pbc: Tensor | None = None) -> Tensor:
    """Minimum-image convention for difference vectors, exact for any (triclinic, partly periodic) cell.

    The cell is Minkowski-reduced (:func:`_reduce`, cached per cell tensor), each vector is rounded to its nearest
    image in fractional coordinates of the reduced cell, and the shortest of the 27 images around that one is taken.
    Only periodic directions are wrapped. The chosen lattice shift is a constant of the result, so gradients with
    respect to ``vectors`` (and ``cell``) are those of ``vectors - n @ cell``. Batched, with no host reads.

    Parameters
    ----------
    vectors
        (B, 3) or (B, P, 3) Å: difference vectors of replica b in ``vectors[b]``.
    cell
        (B, 3, 3) or (3, 3) Å, rows are lattice vectors; None for open boundaries.
    pbc
        (B, 3) or (3,) bool; None means periodic wherever the cell vector is non-zero.

    Returns
    -------
    Tensor
        The shape of ``vectors``, Å: the shortest ``vectors - n @ cell`` over integer n (n = 0 in open directions).
    """
    if cell is None:
        return vectors
    lattice = (x.to(vectors.dtype) for x in _reduced_lattice(cell, pbc))
    reduced, inverse, u, periodic, near, near_vectors = lattice
    n_cells = reduced.shape[0]
    v = vectors.reshape(n_cells, -1, 3)  # one cell for all vectors, or one per replica
    v_fixed = v.detach()
    n0 = torch.round(v_fixed @ inverse) * periodic.unsqueeze(1)  # (C, M, 3) in the reduced basis
    rounded = v_fixed - n0 @ reduced
    # |rounded - s R|^2 - |rounded|^2 for the 27 shifts s: one (C, M, 27) product, the zero shift scores 0
    score = near_vectors.square().sum(-1).unsqueeze(1) - 2.0 * rounded @ near_vectors.transpose(-1, -2)
    best = score.argmin(-1, keepdim=True).expand(*score.shape[:2], 3)  # (C, M, 3)
    n_best = n0 + near.gather(1, best)
    n_cell = n_best @ u  # integer shifts in the basis of ``cell``; zero along open directions
    shift = n_cell @ cell.to(vectors.dtype).reshape(-1, 3, 3).expand(n_cells, 3, 3)
    return (v - shift).reshape(vectors.shape)


def _gather(positions: Tensor, index: int, offsets: Tensor | None) -> Tensor:
    if positions.dim() == 3:
        return positions[:, index]
    if offsets is None:
        return positions[index].unsqueeze(0)
    return positions[offsets + index]


def _vector(positions: Tensor, a: int, b: int, cell, pbc, offsets) -> Tensor:
    """Minimum-image vector r_b - r_a, (B, 3)."""
    return minimum_image(_gather(positions, b, offsets) - _gather(positions, a, offsets), cell, pbc)


def _gather_many(positions: Tensor, index: Tensor, offsets: Tensor | None) -> Tensor:
    """Positions of atoms ``index`` (P,) in every replica, (B, P, 3)."""
    if positions.dim() == 3:
        return positions[:, index]
    if offsets is None:
        return positions[index].unsqueeze(0)
    return positions[offsets.unsqueeze(-1) + index.unsqueeze(0)]


def _pair_vectors(positions: Tensor, first: Tensor, second: Tensor, cell, pbc, offsets) -> Tensor:
    """Minimum-image vectors r_second - r_first of P pairs in every replica, (B, P, 3) Å."""
    v = _gather_many(positions, second, offsets) - _gather_many(positions, first, offsets)
    return minimum_image(v, cell, pbc)


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


def point_plane(positions: Tensor, p: int, a: int, b: int, c: int, cell=None, pbc=None, offsets=None) -> Tensor:
    """Signed distance in Å of atom p from the plane through atoms a, b, c, (B,).

    The plane normal is ``(r_b - r_a) x (r_c - r_a)``, normalised; the value is positive on the side it points to.
    Undefined (NaN) when a, b and c are collinear.
    """
    u = _vector(positions, a, b, cell, pbc, offsets)
    v = _vector(positions, a, c, cell, pbc, offsets)
    w = _vector(positions, a, p, cell, pbc, offsets)
    normal = torch.linalg.cross(u, v)
    return (w * normal).sum(-1) / normal.norm(dim=-1)


def _ones_polynomial(x: Tensor, degree: int) -> Tensor:
    """``1 + x + ... + x**degree`` by Horner's rule (finite gradients everywhere, also at x = 0)."""
    result = torch.ones_like(x)
    for _ in range(degree):
        result = result * x + 1.0
    return result


def switching_function(r: Tensor, r0: float, n: int = 6, m: int = 12) -> Tensor:
    """Rational switching function ``s(r) = (1 - (r/r0)**n) / (1 - (r/r0)**m)``, dimensionless.

    Evaluated as ``P_n(x) / P_m(x)`` with ``x = r/r0`` and ``P_k(x) = 1 + x + ... + x**(k-1)`` (the factor
    ``1 - x`` cancels exactly), so the removable singularity at r = r0 is gone: s(r0) = n/m and the gradient is the
    analytic one there. For x > 1 the same ratio is written in y = 1/x, ``y**(m-n) P_n(y) / P_m(y)``, so that large
    distances cannot overflow; both branches are evaluated on clamped inputs and are finite, so ``torch.where``
    passes no NaN gradients.

    Parameters
    ----------
    r
        Distances in Å, any shape.
    r0
        Switching distance in Å (s = n/m there).
    n, m
        Positive integer exponents, m > n; s falls from 1 at r = 0 to 0 as r grows.

    Returns
    -------
    Tensor
        s(r), the shape of ``r``.
    """
    x = r / r0
    low = x.clamp(max=1.0)
    high = 1.0 / x.clamp(min=1.0)
    s_low = _ones_polynomial(low, n - 1) / _ones_polynomial(low, m - 1)
    s_high = high ** (m - n) * _ones_polynomial(high, n - 1) / _ones_polynomial(high, m - 1)
    return torch.where(x <= 1.0, s_low, s_high)


def coordination(
    positions: Tensor,
    first: Tensor,
    second: Tensor,
    r0: float,
    n: int = 6,
    m: int = 12,
    cell=None,
    pbc=None,
    offsets=None,
) -> Tensor:
    """Coordination number ``sum_pairs s(r_ab)`` over the pairs ``(first[p], second[p])``, dimensionless, (B,).

    ``first`` and ``second`` are (P,) int64 atom indices; :func:`switching_function` gives s. Each pair is taken at
    its minimum image only (r0 well below half the cell height).
    """
    r = _pair_vectors(positions, first, second, cell, pbc, offsets).norm(dim=-1)
    return switching_function(r, r0, n, m).sum(-1)


# -------------------------------------------------------------------------------------------- spec checking
class CVSpecError(ValueError):
    """A CV spec with problems; ``errors`` lists every one, each starting with the field path."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__('; '.join(self.errors))


def _suggest(word: Any, choices) -> str:
    word = str(word)
    close = [c for c in sorted(choices) if word and c.startswith(word)] or difflib.get_close_matches(
        word, sorted(choices), n=1
    )
    return f"; did you mean '{close[0]}'?" if close else ''


def _is_index(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    return repr(list(value)) if isinstance(value, list | tuple) else repr(value)


def _indices_ok(value: Any, n_atoms: int | None, count: int | None = None) -> bool:
    """True for a list of valid atom indices (of length ``count`` if given, else non-empty), all below n_atoms."""
    if not isinstance(value, list | tuple) or (len(value) != count if count is not None else not value):
        return False
    return all(_is_index(a) and (n_atoms is None or a < n_atoms) for a in value)


def _a(word: str) -> str:
    return f'an {word}' if word[0] in 'aeiou' else f'a {word}'


def _below(n_atoms: int | None) -> str:
    return f'below {n_atoms}' if n_atoms is not None else '(integers >= 0)'


def _distinct(values: Sequence[int]) -> bool:
    return len(set(values)) == len(values)


# ----------------------------------------------------------------------------------------------- base class
class CollectiveVariable:
    """Base class: a function of the positions of each replica, (B,), that knows its spec, period and units.

    Attributes
    ----------
    type_name
        The spec ``type`` (the key in :data:`CV_TYPES`).
    period
        Period in internal units (2 pi for dihedrals) or None.
    unit
        Internal unit: 'Å', 'rad', or '' for dimensionless.
    file_unit
        Unit in files, reports and the CLI: 'Å', 'deg' or '' (from :data:`FILE_UNITS`).
    """

    type_name: ClassVar[str] = ''
    keys: ClassVar[tuple[str, ...]] = ('type', 'atoms')
    period: float | None = None
    unit: str = 'Å'
    file_unit: str = 'Å'

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.unit in FILE_UNITS:
            cls.file_unit = FILE_UNITS[cls.unit][0]

    # --- spec
    @classmethod
    def field_errors(cls, spec: Mapping, where: str, n_atoms: int | None) -> list[str]:
        """Problems of the fields of a spec of this type (the keys are checked by :func:`cv_spec_errors`)."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: Mapping) -> CollectiveVariable:
        """Build from a spec that :func:`cv_spec_errors` accepts."""
        raise NotImplementedError

    @property
    def spec(self) -> dict[str, Any]:
        """The spec (a plain dict of lists and numbers, defaults filled in) that builds this CV again."""
        return {'type': self.type_name, 'atoms': list(self.atoms)}

    def _check(self) -> None:
        errors = cv_spec_errors(self.spec, where=self.type_name)
        if errors:
            raise CVSpecError(errors)

    # --- labels
    def __repr__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        """Short label, e.g. ``dihedral(2,0,1,3)``."""
        return f'{self.type_name}({",".join(map(str, self.atoms))})'

    @property
    def atoms(self) -> tuple[int, ...]:
        """Every atom index (inside a replica) the CV uses, each once."""
        raise NotImplementedError

    # --- units
    def to_file(self, values):
        """Convert values from internal units (Å, rad) to file units (Å, deg).

        Parameters
        ----------
        values
            A number, a (nested) list, a numpy array or a torch tensor in internal units; None passes through.

        Returns
        -------
        float, list, numpy.ndarray or Tensor
            The same kind of object (a list comes back as a list of floats) in :attr:`file_unit`.
        """
        return _scaled(values, FILE_UNITS[self.unit][1])

    def to_internal(self, values):
        """Convert values from file units (Å, deg) to internal units (Å, rad); the inverse of :meth:`to_file`."""
        return _scaled(values, 1.0 / FILE_UNITS[self.unit][1])

    @property
    def file_period(self) -> float | None:
        """Period in file units (360.0 for a dihedral) or None."""
        return None if self.period is None else float(self.to_file(self.period))

    def difference(self, a, b):
        """``a - b`` in internal units, the minimum image for a periodic CV (numbers, numpy arrays or tensors)."""
        d = a - b
        if self.period is None:
            return d
        p = self.period
        if isinstance(d, Tensor):
            return d - p * torch.round(d.detach() / p)
        return d - p * np.round(np.asarray(d) / p)

    # --- evaluation
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
            (B,) in internal units.
        """
        raise NotImplementedError

    def evaluate(self, batch) -> Tensor:
        """Evaluate on an :class:`~aiida_mlff.core.atoms.AtomsBatch`, (B,)."""
        return self(batch.positions, batch.cell, batch.pbc, batch_offsets(batch))

    def value_and_gradient(self, positions: Tensor, cell=None, pbc=None, offsets=None) -> tuple[Tensor, Tensor]:
        """The CV (B,) and its gradient (B, A, 3) with respect to the positions of :attr:`atoms` (in that order).

        ``positions`` are flattened (N, 3) with ``offsets`` (B,). This generic version differentiates the CV by
        autograd; CV types with a closed form (distance, angle, dihedral, position) override it, so a biased MD step
        builds no autograd graph of the CV.
        """
        with torch.enable_grad():
            pos = positions.detach().requires_grad_(True)
            s = self(pos, cell, pbc, offsets)
            (grad,) = torch.autograd.grad(s.sum(), pos, allow_unused=True)
        grad = torch.zeros_like(pos) if grad is None else grad
        index = offsets.unsqueeze(1) + torch.as_tensor(self.atoms, device=offsets.device).unsqueeze(0)
        return s.detach(), grad[index]


def _scaled(values, factor: float):
    if values is None:
        return None
    if isinstance(values, Tensor):
        return values * factor if factor != 1.0 else values
    if isinstance(values, np.ndarray):
        return np.asarray(values, dtype=float) * factor
    if isinstance(values, list | tuple):
        return (np.asarray(values, dtype=float) * factor).tolist()
    return float(values) * factor


def batch_offsets(batch) -> Tensor:
    """(B,) int64 index of the first atom of each system of an ``AtomsBatch``."""
    counts = batch.counts
    return torch.cumsum(counts, 0) - counts


class _FixedAtoms(CollectiveVariable):
    """A CV of a fixed number of distinct atoms, ``{'type': ..., 'atoms': [...]}``."""

    n_atoms: ClassVar[int] = 2

    def __init__(self, *atoms: int) -> None:
        self._atoms = tuple(int(a) for a in atoms)
        self._check()

    @property
    def atoms(self) -> tuple[int, ...]:
        return self._atoms

    @classmethod
    def field_errors(cls, spec, where, n_atoms):
        atoms = spec.get('atoms')
        if not _indices_ok(atoms, n_atoms, cls.n_atoms) or not _distinct(atoms):
            return [
                f'{where}.atoms: {_a(cls.type_name)} needs {cls.n_atoms} distinct atom indices {_below(n_atoms)}, '
                f'got {_shown(atoms)}'
            ]
        return []

    @classmethod
    def from_spec(cls, spec):
        return cls(*spec['atoms'])


class Distance(_FixedAtoms):
    """Distance between atoms i and j [Å]."""

    type_name = 'distance'
    n_atoms = 2
    unit = 'Å'

    def __init__(self, i: int, j: int) -> None:
        super().__init__(i, j)
        self.i, self.j = self._atoms

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return distance(positions, self.i, self.j, cell, pbc, offsets)

    def value_and_gradient(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        r = _vector(positions, self.i, self.j, cell, pbc, offsets).detach()
        d = r.norm(dim=-1)
        u = r / d.unsqueeze(-1)
        return d, torch.stack([-u, u], dim=1)


class Angle(_FixedAtoms):
    """Angle i-j-k [rad] in [0, pi], vertex at j; degrees in files."""

    type_name = 'angle'
    n_atoms = 3
    unit = 'rad'

    def __init__(self, i: int, j: int, k: int) -> None:
        super().__init__(i, j, k)
        self.i, self.j, self.k = self._atoms

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return angle(positions, self.i, self.j, self.k, cell, pbc, offsets)


class Dihedral(_FixedAtoms):
    """Dihedral i-j-k-l [rad] in (-pi, pi], period 2 pi; degrees in files."""

    type_name = 'dihedral'
    n_atoms = 4
    unit = 'rad'
    period = 2.0 * math.pi

    def __init__(self, i: int, j: int, k: int, l: int) -> None:  # noqa: E741
        super().__init__(i, j, k, l)
        self.i, self.j, self.k, self.l = self._atoms

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return dihedral(positions, self.i, self.j, self.k, self.l, cell, pbc, offsets)

    def value_and_gradient(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        # the closed form of Blondel and Karplus (J. Comput. Chem. 17, 1132 (1996)), free of 1/sin singularities
        b1 = _vector(positions, self.i, self.j, cell, pbc, offsets).detach()
        b2 = _vector(positions, self.j, self.k, cell, pbc, offsets).detach()
        b3 = _vector(positions, self.k, self.l, cell, pbc, offsets).detach()
        n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
        length = b2.norm(dim=-1, keepdim=True)
        phi = torch.atan2((length * b1 * n2).sum(-1), (n1 * n2).sum(-1))
        g_i = -length / (n1 * n1).sum(-1, keepdim=True) * n1
        g_l = length / (n2 * n2).sum(-1, keepdim=True) * n2
        f1 = (b1 * b2).sum(-1, keepdim=True) / length**2
        f3 = (b3 * b2).sum(-1, keepdim=True) / length**2
        g_j = f3 * g_l - (1.0 + f1) * g_i
        g_k = f1 * g_i - (1.0 + f3) * g_l
        return phi, torch.stack([g_i, g_j, g_k, g_l], dim=1)


class PointPlane(_FixedAtoms):
    """Signed distance [Å] of atom p from the plane through atoms a, b, c (out-of-plane, pyramidalisation).

    The normal is ``(r_b - r_a) x (r_c - r_a)``, normalised: swapping b and c flips the sign. Not periodic.
    """

    type_name = 'point_plane'
    n_atoms = 4
    unit = 'Å'

    def __init__(self, p: int, a: int, b: int, c: int) -> None:
        super().__init__(p, a, b, c)
        self.p, self.a, self.b, self.c = self._atoms

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return point_plane(positions, self.p, self.a, self.b, self.c, cell, pbc, offsets)


class DistanceDifference(_FixedAtoms):
    """Difference of two distances d(i, j) - d(k, l) [Å] (e.g. a proton-transfer coordinate).

    The two pairs may share an atom (``[O1, H, O2, H]``), but i != j, k != l and the pairs must differ.
    """

    type_name = 'distance_difference'
    n_atoms = 4
    unit = 'Å'

    def __init__(self, i: int, j: int, k: int, l: int) -> None:  # noqa: E741
        super().__init__(i, j, k, l)
        self.i, self.j, self.k, self.l = self._atoms

    @property
    def atoms(self) -> tuple[int, ...]:  # noqa: D102
        return tuple(dict.fromkeys(self._atoms))

    @property
    def spec(self) -> dict[str, Any]:  # noqa: D102
        return {'type': self.type_name, 'atoms': list(self._atoms)}

    @property
    def name(self) -> str:  # noqa: D102
        return f'{self.type_name}({",".join(map(str, self._atoms))})'

    @classmethod
    def field_errors(cls, spec, where, n_atoms):  # noqa: D102
        atoms = spec.get('atoms')
        ok = _indices_ok(atoms, n_atoms, 4)
        if ok:
            i, j, k, l = atoms  # noqa: E741
            ok = i != j and k != l and {i, j} != {k, l}
        if not ok:
            return [
                f'{where}.atoms: a distance_difference needs 4 atom indices [i, j, k, l] {_below(n_atoms)} with '
                f'i != j, k != l and two different pairs, got {_shown(atoms)}'
            ]
        return []

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return distance(positions, self.i, self.j, cell, pbc, offsets) - distance(
            positions, self.k, self.l, cell, pbc, offsets
        )


class Coordination(CollectiveVariable):
    """Coordination number between two groups of atoms, dimensionless, not periodic.

    ``sum s(r_ab)`` over the *unordered* pairs {a, b} with a in ``atoms``, b in ``partners`` and a != b, each pair
    counted once: for disjoint groups that is len(atoms) * len(partners) pairs; when the groups overlap (or
    ``partners`` is omitted, meaning the group with itself) a pair found in both orders still counts once.
    s is :func:`switching_function` ``(1 - (r/r0)**n) / (1 - (r/r0)**m)``, smooth through r = r0 (s = n/m there).

    Parameters
    ----------
    atoms
        Group A, distinct atom indices.
    partners
        Group B, distinct atom indices; None for pairs within group A.
    r0
        Switching distance in Å.
    n, m
        Integer exponents, 0 < n < m (defaults 6 and 12).
    """

    type_name = 'coordination'
    keys = ('type', 'atoms', 'partners', 'r0', 'n', 'm')
    unit = ''
    exponents: ClassVar[dict[str, int]] = {'n': 6, 'm': 12}  # of s(r) = (1 - x^n) / (1 - x^m), x = r / r0

    def __init__(
        self,
        atoms: Sequence[int],
        partners: Sequence[int] | None = None,
        *,
        r0: float,
        n: int | None = None,
        m: int | None = None,
    ) -> None:
        n = self.exponents['n'] if n is None else n
        m = self.exponents['m'] if m is None else m
        self.group = tuple(int(a) for a in atoms)
        self.partners = self.group if partners is None else tuple(int(b) for b in partners)
        self.r0, self.n, self.m = float(r0), int(n), int(m)
        self._check()
        self.pairs = _unordered_pairs(self.group, self.partners)
        self._first = torch.tensor([a for a, _ in self.pairs], dtype=torch.long)
        self._second = torch.tensor([b for _, b in self.pairs], dtype=torch.long)

    @property
    def atoms(self) -> tuple[int, ...]:  # noqa: D102
        return tuple(dict.fromkeys(self.group + self.partners))

    @property
    def spec(self) -> dict[str, Any]:  # noqa: D102
        return {
            'type': self.type_name,
            'atoms': list(self.group),
            'partners': list(self.partners),
            'r0': self.r0,
            'n': self.n,
            'm': self.m,
        }

    @property
    def name(self) -> str:  # noqa: D102
        return f'{self.type_name}({",".join(map(str, self.group))}|{",".join(map(str, self.partners))})'

    @classmethod
    def field_errors(cls, spec, where, n_atoms):  # noqa: D102
        errors = []
        for key in ('atoms', 'partners'):
            value = spec.get(key)
            if key == 'partners' and value is None:
                continue
            if not _indices_ok(value, n_atoms) or not _distinct(value):
                errors.append(
                    f'{where}.{key}: a coordination needs a non-empty list of distinct atom indices '
                    f'{_below(n_atoms)}, got {_shown(value)}'
                )
        if not errors and not _unordered_pairs(spec['atoms'], spec.get('partners') or spec['atoms']):
            errors.append(f'{where}.partners: no pair of different atoms between atoms and partners')
        r0 = spec.get('r0')
        if r0 is None:
            errors.append(f'{where}.r0: missing; the switching distance in Å')
        elif not _is_number(r0) or r0 <= 0:
            errors.append(f'{where}.r0: must be a positive, finite distance in Å, got {r0!r}')
        n, m = (spec.get(key, default) for key, default in cls.exponents.items())
        n_ok = _is_index(n) and n > 0
        if not n_ok:
            errors.append(f'{where}.n: must be a positive integer, got {n!r}')
        if not (_is_index(m) and m > 0):
            errors.append(f'{where}.m: must be a positive integer, got {m!r}')
        elif n_ok and m <= n:
            errors.append(f'{where}.m: must be larger than n ({n}) for s to fall to 0, got {m!r}')
        return errors

    @classmethod
    def from_spec(cls, spec):  # noqa: D102
        return cls(spec['atoms'], spec.get('partners'), r0=spec['r0'], n=spec.get('n'), m=spec.get('m'))

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        first, second = self._first.to(positions.device), self._second.to(positions.device)
        return coordination(positions, first, second, self.r0, self.n, self.m, cell, pbc, offsets)


class Position(_FixedAtoms):
    """One Cartesian coordinate (``axis`` x, y or z) of atom i [Å], as it is (positions are never wrapped).

    For a height above a surface, a coordinate along a channel, or model surfaces such as Müller-Brown.
    """

    type_name = 'position'
    keys = ('type', 'atoms', 'axis')
    n_atoms = 1
    unit = 'Å'
    axes = ('x', 'y', 'z')

    def __init__(self, i: int, axis: str = 'z') -> None:
        self.axis = axis
        super().__init__(i)
        self.i = self._atoms[0]
        self.component = self.axes.index(axis)

    @property
    def spec(self) -> dict[str, Any]:  # noqa: D102
        return {'type': self.type_name, 'atoms': [self._atoms[0]], 'axis': self.axis}

    @property
    def name(self) -> str:  # noqa: D102
        return f'position({self._atoms[0]},{self.axis})'

    @classmethod
    def field_errors(cls, spec, where, n_atoms):  # noqa: D102
        errors = super().field_errors(spec, where, n_atoms)
        axis = spec.get('axis', 'z')
        if axis not in cls.axes:
            errors.append(f"{where}.axis: one of 'x', 'y', 'z', got {_shown(axis)}")
        return errors

    @classmethod
    def from_spec(cls, spec):  # noqa: D102
        return cls(spec['atoms'][0], spec.get('axis', 'z'))

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return _gather(positions, self.i, offsets)[..., self.component]

    def value_and_gradient(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        s = self(positions, cell, pbc, offsets).detach()
        grad = torch.zeros(len(s), 1, 3, dtype=positions.dtype, device=positions.device)
        grad[:, 0, self.component] = 1.0
        return s, grad


def _unordered_pairs(group: Sequence[int], partners: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs (a, b), a in group, b in partners, a != b, each unordered pair once, in first-seen order."""
    seen, pairs = set(), []
    for a in group:
        for b in partners:
            key = (min(a, b), max(a, b))
            if a != b and key not in seen:
                seen.add(key)
                pairs.append((int(a), int(b)))
    return pairs


class Combination(CollectiveVariable):
    """Linear combination ``sum_t coefficient_t * cv_t`` of CVs that share one internal unit.

    Combinations are never periodic, even of periodic terms: the value is the plain weighted sum of each term's
    principal value (a dihedral in (-pi, pi]), so keep windows away from the seams of periodic terms.

    Parameters
    ----------
    terms
        ``(cv, coefficient)`` pairs; coefficients are dimensionless, finite and non-zero.
    """

    type_name = 'combination'
    keys = ('type', 'terms')
    term_keys: ClassVar[tuple[str, ...]] = ('cv', 'coefficient')
    unit = ''

    def __init__(self, terms: Sequence[tuple[CollectiveVariable, float]]) -> None:
        self.terms = [(cv, float(c)) for cv, c in terms]
        self._check()
        self.unit = self.terms[0][0].unit
        self.file_unit = FILE_UNITS[self.unit][0]
        self.period = None

    @property
    def atoms(self) -> tuple[int, ...]:  # noqa: D102
        return tuple(dict.fromkeys(a for cv, _ in self.terms for a in cv.atoms))

    @property
    def spec(self) -> dict[str, Any]:  # noqa: D102
        return {'type': self.type_name, 'terms': [{'cv': cv.spec, 'coefficient': c} for cv, c in self.terms]}

    @property
    def name(self) -> str:  # noqa: D102
        text = ''
        for k, (cv, c) in enumerate(self.terms):
            sign = '-' if c < 0 else ('+' if k else '')
            size = abs(c)
            text += f'{sign}{cv.name}' if size == 1.0 else f'{sign}{size:g}*{cv.name}'
        return f'{self.type_name}({text})'

    @classmethod
    def field_errors(cls, spec, where, n_atoms):  # noqa: D102
        terms = spec.get('terms')
        if not isinstance(terms, list | tuple) or not terms:
            return [
                f"{where}.terms: a combination needs a non-empty list of {{'cv': ..., 'coefficient': ...}}, "
                f'got {terms!r}'
            ]
        errors, units = [], {}
        for k, term in enumerate(terms):
            here = f'{where}.terms[{k}]'
            if not isinstance(term, Mapping):
                errors.append(f"{here}: must be a mapping {{'cv': ..., 'coefficient': ...}}, got {term!r}")
                continue
            errors += _unknown_key_errors(term, cls.term_keys, here)
            coefficient = term.get('coefficient', 1.0)
            if not _is_number(coefficient) or coefficient == 0:
                errors.append(f'{here}.coefficient: must be a finite, non-zero number, got {coefficient!r}')
            if 'cv' not in term:
                errors.append(f'{here}.cv: missing; the spec of the term')
                continue
            term_errors = cv_spec_errors(term['cv'], f'{here}.cv', n_atoms)
            errors += term_errors
            if not term_errors:
                units[k] = _unit_of(term['cv'])
        if units:
            first = next(iter(units))
            for k, unit in units.items():
                if unit != units[first]:
                    errors.append(
                        f"{where}.terms[{k}].cv: unit '{unit}' differs from the '{units[first]}' of terms[{first}]; "
                        'the terms of a combination need one unit'
                    )
        return errors

    @classmethod
    def from_spec(cls, spec):  # noqa: D102
        return cls([(cv_from_spec(term['cv']), term.get('coefficient', 1.0)) for term in spec['terms']])

    def __call__(self, positions, cell=None, pbc=None, offsets=None):  # noqa: D102
        return sum(c * cv(positions, cell, pbc, offsets) for cv, c in self.terms)


def _unit_of(spec: Mapping) -> str:
    """Internal unit of a valid spec (recursing into combinations)."""
    cls = CV_TYPES[spec['type']]
    return _unit_of(spec['terms'][0]['cv']) if cls is Combination else cls.unit


#: spec ``type`` -> CV class: the one list of CV types.
CV_TYPES: dict[str, type[CollectiveVariable]] = {
    cls.type_name: cls
    for cls in (Distance, Angle, Dihedral, DistanceDifference, Coordination, PointPlane, Position, Combination)
}


def _unknown_key_errors(spec: Mapping, allowed: Sequence[str], where: str) -> list[str]:
    return [
        f'{where}.{key}: unknown key{_suggest(key, allowed)} (allowed: {", ".join(allowed)})'
        for key in spec
        if key not in allowed
    ]


def cv_spec_errors(spec: Any, where: str = 'cv', n_atoms: int | None = None) -> list[str]:
    """Every problem of a CV spec at once, each message starting with its field path.

    Parameters
    ----------
    spec
        A mapping such as ``{'type': 'dihedral', 'atoms': [2, 0, 1, 3]}`` (see the module docstring).
    where
        Path of the spec in the user's input, e.g. ``'system.cv'``.
    n_atoms
        Number of atoms of the structure; atom indices must be below it. None: not checked.

    Returns
    -------
    list[str]
        Empty when the spec is valid.
    """
    if not isinstance(spec, Mapping):
        return [f'{where}: must be a mapping with a `type` (one of {", ".join(CV_TYPES)}), got {spec!r}']
    kind = spec.get('type')
    if kind is None:
        return [f'{where}.type: missing; one of {", ".join(CV_TYPES)}']
    if not isinstance(kind, str) or kind not in CV_TYPES:
        all_keys = sorted({key for cls in CV_TYPES.values() for key in cls.keys})
        return [
            f'{where}.type: unknown CV type {kind!r}{_suggest(kind, CV_TYPES)} (known: {", ".join(CV_TYPES)})',
            *_unknown_key_errors(spec, all_keys, where),
        ]
    cls = CV_TYPES[kind]
    return _unknown_key_errors(spec, cls.keys, where) + cls.field_errors(spec, where, n_atoms)


def cv_from_spec(
    spec: Mapping | CollectiveVariable, n_atoms: int | None = None, where: str = 'cv'
) -> CollectiveVariable:
    """Build a CV from its spec, e.g. ``cv_from_spec({'type': 'dihedral', 'atoms': [2, 0, 1, 3]})``.

    Parameters
    ----------
    spec
        A spec mapping (an existing CV is returned as it is).
    n_atoms
        Number of atoms of the structure, to check the indices against; None: not checked.
    where
        Path of the spec in the user's input, for the error messages.

    Raises
    ------
    CVSpecError
        With every problem in ``errors`` (see :func:`cv_spec_errors`).
    """
    if isinstance(spec, CollectiveVariable):
        return spec
    errors = cv_spec_errors(spec, where=where, n_atoms=n_atoms)
    if errors:
        raise CVSpecError(errors)
    return CV_TYPES[spec['type']].from_spec(spec)


# ------------------------------------------------------------------------------------------------------ bias
class HarmonicBias:
    """Umbrella bias ``0.5 * kappa * (s - center)**2`` with one centre per replica.

    All umbrella windows thus run as one batch: replica b feels the bias centred at ``centers[b]``. For periodic CVs
    the displacement ``s - center`` is taken as its minimum image.

    Parameters
    ----------
    cv
        The collective variable.
    centers
        (B,) centres in internal CV units, one per replica (a scalar applies to every replica).
    kappa
        Force constant(s) in eV per internal CV unit squared, scalar or (B,).
    """

    def __init__(
        self, cv: CollectiveVariable, centers: float | Sequence[float] | Tensor, kappa: float | Sequence[float]
    ):
        self.cv = cv
        self.centers = torch.as_tensor(centers, dtype=torch.float64).reshape(-1)
        self.kappa = torch.as_tensor(kappa, dtype=torch.float64).reshape(-1)

    def __repr__(self) -> str:
        return f'HarmonicBias({self.cv.name}, {len(self.centers)} centres, kappa={self.kappa.tolist()})'

    @property
    def cvs(self) -> list[CollectiveVariable]:
        """The one CV this bias acts on."""
        return [self.cv]

    def energy_of(self, values: Tensor, replicas: Tensor) -> Tensor:
        """Bias energy [eV] of CV values (P,) or (P, 1) under the centres (and force constants) of ``replicas`` (P,)."""
        s = values.reshape(-1)
        centers = self.centers.to(device=s.device, dtype=s.dtype)
        kappa = self.kappa.to(device=s.device, dtype=s.dtype)
        c = centers[replicas] if len(centers) > 1 else centers.expand(len(s))
        k = kappa[replicas] if len(kappa) > 1 else kappa.expand(len(s))
        return 0.5 * k * self.cv.difference(s, c) ** 2

    def displacement(self, s: Tensor) -> Tensor:
        """Minimum-image ``s - center``, (B,)."""
        return self.cv.difference(s, self.centers.to(device=s.device, dtype=s.dtype))

    def energy_from_cv(self, s: Tensor) -> Tensor:
        """Bias energy [eV] from CV values s (B,)."""
        k = self.kappa.to(device=s.device, dtype=s.dtype)
        return 0.5 * k * self.displacement(s) ** 2

    def energy_and_derivative(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Bias energy [eV] (B,) and its derivative dE/ds [eV per CV unit] (B, 1) at CV values s (B, 1) or (B,)."""
        s = s.reshape(-1)
        k = self.kappa.to(device=s.device, dtype=s.dtype)
        d = self.displacement(s)
        return 0.5 * k * d**2, (k * d).unsqueeze(-1)

    def __call__(self, positions: Tensor, cell=None, pbc=None, offsets=None) -> tuple[Tensor, Tensor]:
        """Return (bias energy [eV], CV value) per replica, both (B,); differentiable in positions."""
        s = self.cv(positions, cell, pbc, offsets)
        return self.energy_from_cv(s), s
