"""Solvation: a molecule in a cubic periodic box of water at a target density.

The box is sized so that the *solution* (solute + waters) has the target density, either from a number of waters
(the box length follows exactly) or from a box length (the number of waters is the nearest whole number). Oxygens go
on well-spread points (farthest-point sampling of a randomly shifted fine grid) that keep every water atom at least
``min_distance`` from the solute and its periodic images; each water gets a random orientation chosen so that atoms
of different molecules stay at least ``water_contact`` apart. A starting structure for MD, not an equilibrated
liquid. Units: Å, amu, g/cm^3.
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers
from ase.units import _amu

__all__ = ['WATER_ANGLE', 'WATER_OH', 'solution_density', 'solvate']

#: rigid water geometry of the starting structure: O-H length [Å] and H-O-H angle [degrees] (TIP3P's)
WATER_OH = 0.9572
WATER_ANGLE = 104.52
#: g/cm^3 per (amu/Å^3)
_G_CM3_PER_AMU_A3 = _amu * 1e27
#: the closest O-O distance [Å] accepted between water sites (liquid water: about 2.8 Å, 3.1 Å per molecule)
_MIN_SPACING = 2.5
#: O-O distance [Å] the sites are pushed towards (the first peak of liquid water's g_OO), and the steps of that push
_TARGET_OO = 2.75
_SPREAD_STEPS = 30
#: spacing [Å] of the grid of candidate oxygen sites
_GRID = 0.7
#: random orientations tried per water before giving up
_ORIENTATION_TRIES = 200

_WATER_MASS = atomic_masses[atomic_numbers['O']] + 2 * atomic_masses[atomic_numbers['H']]


def solution_density(atoms: Atoms) -> float:
    """Mass density of a periodic structure in g/cm^3 (ASE's masses over the cell volume)."""
    return float(atoms.get_masses().sum() / atoms.get_volume() * _G_CM3_PER_AMU_A3)


def _box(solute_mass: float, n_waters: int | None, box_length: float | None, density: float) -> tuple[float, int]:
    """Box length [Å] and number of waters for a solution of ``density`` g/cm^3."""
    if (n_waters is None) == (box_length is None):
        raise ValueError('solvate: give exactly one of n_waters (a number of waters) and box_length (Å)')
    if not (math.isfinite(density) and density > 0):
        raise ValueError(f'solvate: density must be a positive number of g/cm^3, got {density!r}')
    if n_waters is not None:
        if int(n_waters) != n_waters or n_waters < 1:
            raise ValueError(f'solvate: n_waters must be a positive integer, got {n_waters!r}')
        mass = solute_mass + n_waters * _WATER_MASS
        return (mass * _G_CM3_PER_AMU_A3 / density) ** (1 / 3), int(n_waters)
    if not (math.isfinite(box_length) and box_length > 0):
        raise ValueError(f'solvate: box_length must be a positive length in Å, got {box_length!r}')
    n = round((density * box_length**3 / _G_CM3_PER_AMU_A3 - solute_mass) / _WATER_MASS)
    if n < 1:
        raise ValueError(f'solvate: a box of {box_length} Å at {density} g/cm^3 holds no water beside the solute')
    return float(box_length), n


def _water(rng: np.random.Generator) -> np.ndarray:
    """O, H, H positions [Å] of a randomly oriented water with O at the origin, (3, 3)."""
    half = math.radians(WATER_ANGLE) / 2
    local = WATER_OH * np.array([[0, 0, 0], [math.sin(half), 0, math.cos(half)], [-math.sin(half), 0, math.cos(half)]])
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)  # a uniform random rotation from a unit quaternion
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return local @ rot.T


def _wrap(d: np.ndarray, length: float) -> np.ndarray:
    """Minimum image of difference vectors [Å] in a cubic box of side ``length``."""
    return d - length * np.round(d / length)


def _sites(solute: Atoms, n_waters: int, length: float, min_distance: float, rng: np.random.Generator) -> np.ndarray:
    """``n_waters`` well-spread oxygen sites [Å], (n_waters, 3).

    Farthest-point sampling (from a random start) of a randomly shifted grid of spacing about ``_GRID`` Å, keeping
    only points at least ``min_distance`` from every solute atom (minimum image); then :func:`_spread`.
    """
    k = math.ceil(length / _GRID)
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing='ij'), -1).reshape(-1, 3)
    points = (grid + rng.uniform(size=3)) * (length / k)
    if len(solute):
        gaps = np.linalg.norm(_wrap(points[:, None] - solute.positions[None], length), axis=-1).min(axis=1)
        points = points[gaps >= min_distance]
    if len(points) < n_waters:
        raise ValueError(_no_room(n_waters, length, min_distance))
    chosen = [int(rng.integers(len(points)))]
    nearest = np.linalg.norm(_wrap(points - points[chosen[0]], length), axis=-1)
    for _ in range(n_waters - 1):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(_wrap(points - points[chosen[-1]], length), axis=-1))
    sites = _spread(points[chosen], solute.positions, length, min_distance)
    if n_waters > 1:
        separation = np.linalg.norm(_wrap(sites[:, None] - sites[None], length), axis=-1)
        if (separation + np.eye(n_waters) * length).min() < _MIN_SPACING:
            raise ValueError(_no_room(n_waters, length, min_distance))
    return sites


def _spread(sites: np.ndarray, solute: np.ndarray, length: float, min_distance: float) -> np.ndarray:
    """Push oxygen sites [Å] apart (towards ``_TARGET_OO``) and off the solute (to ``min_distance``).

    A few deterministic steps that move each pair by half its overlap along the pair (minimum image).
    """
    for _ in range(_SPREAD_STEPS):
        d = _wrap(sites[:, None] - sites[None], length)
        r = np.linalg.norm(d, axis=-1) + np.eye(len(sites)) * length
        push = (np.clip(_TARGET_OO - r, 0.0, None) / r)[..., None] * d
        move = 0.5 * push.sum(axis=1)
        if len(solute):
            ds = _wrap(sites[:, None] - solute[None], length)
            rs = np.linalg.norm(ds, axis=-1)
            move += ((np.clip(min_distance + 0.1 - rs, 0.0, None) / rs)[..., None] * ds).sum(axis=1)
        sites = np.mod(sites + move, length)
    return sites


def _no_room(n_waters: int, length: float, min_distance: float) -> str:
    return (
        f'solvate: {n_waters} waters do not fit beside the solute in a {length:.2f} Å box with min_distance '
        f'{min_distance} Å (oxygens would come closer than {_MIN_SPACING} Å); lower the density or min_distance'
    )


def _gap(trial: np.ndarray, others: np.ndarray, length: float) -> float:
    """Smallest minimum-image distance [Å] between the rows of ``trial`` and ``others`` (inf if none)."""
    return float(np.linalg.norm(_wrap(trial[:, None] - others[None], length), axis=-1).min(initial=np.inf))


def _place(
    sites: np.ndarray, solute: np.ndarray, length: float, rng: np.random.Generator, contacts: tuple[float, float]
) -> np.ndarray:
    """Positions [Å] (3 * len(sites), 3) of one water per site, O on the site.

    Each water is oriented so that every atom keeps ``contacts[0]`` from the solute and ``contacts[1]`` from the
    other waters.
    """
    min_distance, water_contact = contacts
    placed = np.zeros((0, 3))
    for site in sites:
        best, best_score = None, -np.inf
        for _ in range(_ORIENTATION_TRIES):
            trial = site + _water(rng)
            score = min(_gap(trial, solute, length) - min_distance, _gap(trial, placed, length) - water_contact)
            if score > best_score:
                best, best_score = trial, score
            if score >= 0:
                break
        if best_score < 0:
            raise ValueError(
                f'solvate: no orientation of the water at {site.round(2)} Å keeps min_distance {min_distance} Å '
                f'and water_contact {water_contact} Å; lower them or the density'
            )
        placed = np.concatenate([placed, best])
    return placed


def solvate(
    solute: Atoms,
    *,
    n_waters: int | None = None,
    box_length: float | None = None,
    density: float = 0.997,
    min_distance: float = 2.0,
    water_contact: float = 1.6,
    seed: int = 0,
) -> Atoms:
    """Put ``solute`` at the centre of a cubic periodic box of water at a target solution density.

    Parameters
    ----------
    solute
        The molecule (any cell and pbc are ignored; an empty Atoms gives pure water).
    n_waters, box_length
        Exactly one: the number of waters (the box length follows from the density) or the box length in Å (the
        number of waters is the nearest whole number for the density).
    density
        Target density of the solution (solute + waters) in g/cm^3; 0.997 is water at 298 K.
    min_distance
        Smallest distance [Å] between a water atom and a solute atom (or a periodic image of one).
    water_contact
        Smallest distance [Å] between atoms of different waters.
    seed
        Seed of the choice of sites and of the orientations: the same arguments give the same structure.

    Returns
    -------
    ase.Atoms
        The solute's atoms first (same order, translated rigidly), then the waters as O, H, H; a cubic cell and pbc
        True. ``info['n_waters']`` holds the number of waters.
    """
    solute = Atoms(numbers=solute.numbers, positions=solute.positions)
    length, n = _box(float(solute.get_masses().sum()), n_waters, box_length, density)
    if len(solute):
        extent = np.ptp(solute.positions, axis=0).max()
        if extent + 2 * min_distance >= length:
            raise ValueError(
                f'solvate: the solute ({extent:.2f} Å across) and min_distance ({min_distance} Å) do not fit in a '
                f'{length:.2f} Å box; add waters or give a larger box_length'
            )
        solute.translate(np.full(3, length / 2) - solute.positions.mean(axis=0))
    solute.set_cell([length] * 3)
    solute.pbc = True
    rng = np.random.default_rng(seed)
    sites = _sites(solute, n, length, min_distance, rng)
    water = Atoms('OH2' * n, positions=_place(sites, solute.positions, length, rng, (min_distance, water_contact)))
    system = solute + water
    system.set_cell([length] * 3)
    system.pbc = True
    system.info['n_waters'] = n
    return system
