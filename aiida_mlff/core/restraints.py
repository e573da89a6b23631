"""Restrained relaxations along any collective variable: structures at chosen CV values without geometric edits.

Every function takes a CV object of :mod:`aiida_mlff.core.colvars` (``cv(positions, cell, pbc) -> (B,)``, with
``cv.period`` and ``cv.unit``) and targets in its internal units (Å, radians); nothing here knows what kind of CV it
is. A harmonic restraint ``0.5 kappa (s - target)^2`` (minimum image for periodic CVs) is added to any ASE calculator
(:class:`RestrainedCalculator`); :func:`relax_at_cv` stiffens it until the relaxed structure sits within a tolerance
of the target; :func:`cv_scan` walks a list of targets outwards from the start, each relaxation starting from its
neighbour's result. :func:`bond_surrogate` is a cheap shape-keeping calculator for when no trained potential exists
yet, and :func:`idpp_path` interpolates between two end structures.

Units: Å, eV, eV/Å, radians (CV units are those of the CV: ``cv.unit``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import NeighborList, natural_cutoffs

from .analytic import HarmonicBonds
from .ase_calculator import MLFFCalculator
from .colvars import CollectiveVariable, HarmonicBias

__all__ = [
    'TOLERANCE',
    'RestrainedCalculator',
    'bond_surrogate',
    'cv_scan',
    'cv_value',
    'default_kappa',
    'default_tolerance',
    'idpp_path',
    'relax_at_cv',
    'scan_order',
]

TOLERANCE = {'Å': 0.01, 'rad': math.radians(0.5), '': 0.01}
"""How close (internal CV units) :func:`relax_at_cv` must bring the CV to its target, by ``cv.unit``: 0.01 Å for
lengths, 0.5 degrees for angles, 0.01 for dimensionless CVs such as coordination numbers (about 1 % of each one's
natural scale). Any other unit gets 0.01 of that unit."""

_OTHER_TOLERANCE = 0.01
_REFERENCE_FORCE = 1.0  # eV per CV unit: the default kappa leaves a generalised force this large one tolerance off


def default_tolerance(cv: CollectiveVariable) -> float:
    """The tolerance of :data:`TOLERANCE` for the unit of ``cv``, in CV units."""
    return TOLERANCE.get(getattr(cv, 'unit', None), _OTHER_TOLERANCE)


def default_kappa(cv: CollectiveVariable, tolerance: float | None = None) -> float:
    """Initial restraint constant, eV per CV unit squared: 1 eV/unit divided by the tolerance.

    A generalised force of 1 eV per CV unit against the restraint then leaves the CV one tolerance off its target
    (100 eV/Å^2 for lengths, 115 eV/rad^2 for angles); :func:`relax_at_cv` stiffens it when the system pushes
    harder.
    """
    tol = default_tolerance(cv) if tolerance is None else float(tolerance)
    return _REFERENCE_FORCE / tol


def _cv_inputs(atoms: Atoms, dtype=torch.float64, requires_grad: bool = False):
    positions = torch.tensor(atoms.positions, dtype=dtype).unsqueeze(0).requires_grad_(requires_grad)
    if bool(np.any(atoms.pbc)):
        cell = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype).unsqueeze(0)
        pbc = torch.tensor(np.asarray(atoms.pbc, dtype=bool)).unsqueeze(0)
    else:
        cell = pbc = None
    return positions, cell, pbc


def cv_value(cv: CollectiveVariable, atoms: Atoms) -> float:
    """Value of ``cv`` for one structure (CV units; minimum image under periodic boundaries)."""
    positions, cell, pbc = _cv_inputs(atoms)
    with torch.no_grad():
        return float(cv(positions, cell, pbc)[0])


def _cv_gradient(cv: CollectiveVariable, atoms: Atoms) -> tuple[float, np.ndarray]:
    """CV value and its gradient (n, 3) in CV units per Å (float64 autograd)."""
    positions, cell, pbc = _cv_inputs(atoms, requires_grad=True)
    with torch.enable_grad():
        s = cv(positions, cell, pbc)
        (grad,) = torch.autograd.grad(s.sum(), positions, allow_unused=True)
    grad = torch.zeros_like(positions) if grad is None else grad
    return float(s[0].detach()), grad[0].numpy()


def _bias_parameter(attribute: str, doc: str) -> property:
    """A float property over ``self._bias.<attribute>[0]``; setting it also resets the calculator's results."""

    def get(self) -> float:
        return float(getattr(self._bias, attribute)[0])

    def set_(self, value: float) -> None:
        setattr(self._bias, attribute, torch.tensor([float(value)], dtype=torch.float64))
        self.reset()

    return property(get, set_, doc=doc)


class RestrainedCalculator(Calculator):
    """Any ASE calculator plus the harmonic restraint ``0.5 kappa (s - target)^2`` on a collective variable.

    The restraint uses the minimum-image displacement for periodic CVs and its forces come from torch autograd of
    the CV in float64. Besides ``energy``/``free_energy`` [eV] (restraint included) and ``forces`` [eV/Å], the
    results hold ``unrestrained_energy`` and ``restraint_energy`` [eV] and the CV value ``cv`` (CV units).

    Parameters
    ----------
    calculator
        The ASE calculator of the physical energy.
    cv
        The collective variable.
    target
        Restraint centre, CV units.
    kappa
        Force constant, eV per CV unit squared.
    """

    implemented_properties = ('energy', 'free_energy', 'forces')

    def __init__(self, calculator: Calculator, cv: CollectiveVariable, target: float, kappa: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calculator = calculator
        self.cv = cv
        self._bias = HarmonicBias(cv, [float(target)], float(kappa))

    target = _bias_parameter('centers', 'Restraint centre, CV units.')
    kappa = _bias_parameter('kappa', 'Force constant, eV per CV unit squared.')

    def restraint(self, atoms: Atoms) -> tuple[float, float, np.ndarray]:
        """Restraint energy [eV], CV value (CV units) and restraint forces (n, 3) [eV/Å] of ``atoms``."""
        positions, cell, pbc = _cv_inputs(atoms, requires_grad=True)
        with torch.enable_grad():
            energy, s = self._bias(positions, cell, pbc)
            (grad,) = torch.autograd.grad(energy.sum(), positions, allow_unused=True)
        grad = torch.zeros_like(positions) if grad is None else grad
        return float(energy[0].detach()), float(s[0].detach()), -grad[0].numpy()

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes) -> None:
        """Evaluate the wrapped calculator and add the restraint."""
        super().calculate(atoms, properties, system_changes)
        energy = float(self.calculator.get_potential_energy(self.atoms))
        forces = np.asarray(self.calculator.get_forces(self.atoms), dtype=float)
        e_restraint, value, f_restraint = self.restraint(self.atoms)
        self.results = {
            'energy': energy + e_restraint,
            'free_energy': energy + e_restraint,
            'forces': forces + f_restraint,
            'unrestrained_energy': energy,
            'restraint_energy': e_restraint,
            'cv': value,
        }


def _optimizer(name: str):
    from ase.optimize import BFGS, FIRE

    optimizers = {'BFGS': BFGS, 'FIRE': FIRE}
    if name not in optimizers:
        raise ValueError(f'optimizer must be one of {sorted(optimizers)}, got {name!r}')
    return optimizers[name]


def relax_at_cv(
    atoms: Atoms,
    calculator: Calculator,
    cv: CollectiveVariable,
    target: float,
    *,
    kappa: float | None = None,
    fmax: float = 0.01,
    steps: int = 500,
    tolerance: float | None = None,
    optimizer: str = 'BFGS',
    max_rounds: int = 6,
) -> tuple[Atoms, dict]:
    """Relax ``atoms`` with the CV restrained to ``target``, stiffening the restraint until the CV is within tolerance.

    Each round relaxes (``optimizer``, at most ``steps`` steps, to ``fmax``) under ``0.5 kappa (s - target)^2``;
    when the relaxed CV is more than ``tolerance`` off the target, ``kappa`` is multiplied by ``2 |error| /
    tolerance`` (at least 2, at most 100) and the next round starts from the structure reached. At most
    ``max_rounds`` rounds.

    Parameters
    ----------
    atoms
        Start structure (not modified; its constraints, e.g. ``FixAtoms``, are kept).
    calculator
        ASE calculator of the physical energy (a trained potential's, or :func:`bond_surrogate`).
    cv
        The collective variable.
    target
        CV units (Å, radians).
    kappa
        Initial restraint constant, eV per CV unit squared; default :func:`default_kappa`.
    fmax
        Force convergence of every round, eV/Å (restraint force included).
    steps
        Largest number of optimiser steps per round.
    tolerance
        Largest accepted ``|s - target|``, CV units; default :data:`TOLERANCE` by ``cv.unit``.
    optimizer
        ``'BFGS'`` or ``'FIRE'``.
    max_rounds
        Largest number of relaxations (stiffenings + 1).

    Returns
    -------
    tuple[Atoms, dict]
        The relaxed structure (no calculator) and ``info``: ``target``, ``value`` (achieved), ``error``
        (``value - target``, minimum image) in CV units; ``energy`` (eV, the calculator's energy WITHOUT the
        restraint, for a committee its mean) and ``restraint_energy`` (eV); ``kappa`` (final, eV/unit^2);
        ``tolerance``; ``max_force`` (eV/Å, restraint included); ``converged`` (forces below ``fmax`` and CV within
        tolerance); ``steps`` (optimiser steps of all rounds); ``rounds``.
    """
    tol = default_tolerance(cv) if tolerance is None else float(tolerance)
    restrained = RestrainedCalculator(calculator, cv, target, default_kappa(cv, tol) if kappa is None else kappa)
    work = atoms.copy()
    work.calc = restrained
    opt_class = _optimizer(optimizer)
    total, rounds, error = 0, 0, math.inf
    for rounds in range(1, max_rounds + 1):
        n_steps, error = _relax_round(work, restrained, opt_class, target, fmax, steps)
        total += n_steps
        if abs(error) <= tol or rounds == max_rounds:
            break
        restrained.kappa = _stiffer(restrained.kappa, error, tol)
    info = _relax_info(work, restrained, target, error, tol, fmax)
    info.update(steps=total, rounds=rounds)
    relaxed = work.copy()
    relaxed.calc = None
    return relaxed, info


def _relax_round(
    work: Atoms, restrained: RestrainedCalculator, opt_class, target: float, fmax: float, steps: int
) -> tuple[int, float]:
    """One restrained relaxation of ``work`` (in place): its optimiser steps and the CV's error (CV units)."""
    opt = opt_class(work, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    work.get_potential_energy()
    error = float(restrained.cv.difference(float(restrained.results['cv']), float(target)))
    return int(opt.nsteps), error


def _stiffer(kappa: float, error: float, tolerance: float) -> float:
    """``kappa`` (eV per CV unit squared) times ``2 |error| / tolerance``, that factor clipped to 2..100."""
    return kappa * min(max(2.0 * abs(error) / tolerance, 2.0), 100.0)


def _relax_info(
    work: Atoms, restrained: RestrainedCalculator, target: float, error: float, tol: float, fmax: float
) -> dict:
    """The ``info`` of :func:`relax_at_cv` but ``steps`` and ``rounds``, from the last evaluation of ``work``."""
    forces = work.get_forces()
    max_force = float(np.sqrt((forces**2).sum(-1)).max()) if len(work) else 0.0
    results = restrained.results
    return {
        'target': float(target),
        'value': float(results['cv']),
        'error': error,
        'energy': float(results['unrestrained_energy']),
        'restraint_energy': float(results['restraint_energy']),
        'kappa': restrained.kappa,
        'tolerance': tol,
        'max_force': max_force,
        'converged': bool(abs(error) <= tol and max_force <= fmax),
    }


def scan_order(cv: CollectiveVariable, start: float, targets: Sequence[float]) -> tuple[list[int], list[int]]:
    """Visiting order of ``targets`` walking outwards from ``start`` (CV units), one list per direction.

    The target nearest ``start`` (minimum image for periodic CVs) opens the upward list; both lists run away from
    ``start``, nearest first, so that each target's neighbour towards the start comes before it.
    """
    d = np.asarray(cv.difference(np.asarray(targets, dtype=float), float(start)), dtype=float)
    if len(d) == 0:
        return [], []
    nearest = int(np.argmin(np.abs(d)))
    up = [int(k) for k in np.argsort(d, kind='stable') if d[k] >= d[nearest]]
    down = [int(k) for k in np.argsort(-d, kind='stable') if d[k] < d[nearest]]
    return down, up


def cv_scan(
    atoms: Atoms, calculator: Calculator, cv: CollectiveVariable, targets: Sequence[float], **kwargs
) -> list[tuple[Atoms, dict]]:
    """Restrained relaxations at every target, walking outwards from the start value in both directions.

    The target nearest the CV value of ``atoms`` is relaxed from ``atoms``; every other one from the relaxed
    structure of its neighbour towards the start (see :func:`scan_order`), so that no structure is ever edited
    geometrically and each relaxation starts close to its target.

    Parameters
    ----------
    atoms
        Start structure.
    calculator
        ASE calculator (shared by all relaxations).
    cv
        The collective variable.
    targets
        CV units (Å, radians), any order.
    **kwargs
        Passed to :func:`relax_at_cv` (``kappa``, ``fmax``, ``steps``, ``tolerance``, ``optimizer``, ...).

    Returns
    -------
    list[tuple[Atoms, dict]]
        ``(structure, info)`` of :func:`relax_at_cv` in the order of ``targets``; each ``info`` also holds
        ``started_from``: the index of the target whose structure it started from (-1: ``atoms``).
    """
    targets = [float(t) for t in targets]
    down, up = scan_order(cv, cv_value(cv, atoms), targets)
    results: list = [None] * len(targets)
    for side, first in ((up, -1), (down, up[0] if up else -1)):
        previous = first
        for k in side:
            start = atoms if previous < 0 else results[previous][0]
            relaxed, info = relax_at_cv(start, calculator, cv, targets[k], **kwargs)
            info['started_from'] = previous
            results[k] = (relaxed, info)
            previous = k
    return results


class _SurrogateBonds(HarmonicBonds):
    """:class:`HarmonicBonds` with the ``dtype``/``device`` that :class:`MLFFCalculator` reads."""

    dtype = torch.float64
    device = torch.device('cpu')


def bond_surrogate(
    atoms: Atoms,
    cv: CollectiveVariable | None = None,
    *,
    k_bond: float = 20.0,
    k_angle: float = 2.0,
    mult: float = 1.2,
    max_angle: float = 175.0,
) -> MLFFCalculator:
    """A cheap, shape-keeping ASE calculator for structures along a CV before any potential is trained.

    Harmonic bonds on every covalent contact of ``atoms`` (``ase.neighborlist.natural_cutoffs`` scaled by ``mult``;
    minimum image under periodic boundaries) and harmonic angles between every two bonds sharing an atom, each with
    its rest value taken from ``atoms`` (so ``atoms`` is the minimum). Torsions and non-bonded atoms feel nothing:
    a restrained relaxation (:func:`cv_scan`) then moves what the CV needs and keeps bond lengths and angles.

    When ``cv`` is given, bonds whose length enters the CV are dropped, so that the surrogate never fights a
    restraint that stretches or breaks them (a proton-transfer coordinate breaks an O-H bond): a bond a-b between two
    atoms of ``cv.atoms`` is dropped when moving either of its atoms alone along the bond changes the CV to first
    order (both ``|ds/dr|`` above 1e-6 CV units per Å, by autograd at ``atoms``), i.e. when no stretch of the bond
    leaves the CV unchanged. A distance or distance difference drops its bonds; an angle or dihedral, whose value
    does not depend on bond lengths, keeps them. Angles are all kept (they only fix directions).

    Parameters
    ----------
    atoms
        The reference structure, also the rest geometry.
    cv
        Optional collective variable whose bonds to drop.
    k_bond
        eV/Å^2.
    k_angle
        eV/rad^2.
    mult
        Factor on the covalent radii for a contact to count as a bond.
    max_angle
        Degrees: angles closer to linear are left out (the angle's gradient is singular at 180 degrees).

    Returns
    -------
    MLFFCalculator
        Its ``potential`` is the :class:`~aiida_mlff.core.analytic.HarmonicBonds` (``bonds``, ``angles``); the
        dropped bonds are in ``potential.dropped_bonds``.
    """
    nl = NeighborList(natural_cutoffs(atoms, mult=mult), self_interaction=False, bothways=True, skin=0.0)
    nl.update(atoms)
    neighbours = {a: sorted(int(b) for b in nl.get_neighbors(a)[0]) for a in range(len(atoms))}
    pairs = sorted({(min(a, b), max(a, b)) for a, nbs in neighbours.items() for b in nbs})
    mic = bool(np.any(atoms.pbc))
    dropped: list[tuple[int, int]] = []
    if cv is not None and pairs:
        cv_atoms = set(int(i) for i in cv.atoms)
        _, grad = _cv_gradient(cv, atoms)
        for a, b in pairs:
            if a in cv_atoms and b in cv_atoms:
                u = atoms.get_distance(a, b, mic=mic, vector=True)
                u = u / np.linalg.norm(u)
                if min(abs(float(grad[a] @ u)), abs(float(grad[b] @ u))) > 1e-6:
                    dropped.append((a, b))
    bonds = [(a, b, k_bond, atoms.get_distance(a, b, mic=mic)) for a, b in pairs if (a, b) not in dropped]
    angles = []
    for j, nbs in neighbours.items():
        for x, i in enumerate(nbs):
            for k in nbs[x + 1 :]:
                theta = float(atoms.get_angle(i, j, k, mic=mic))
                if theta < max_angle:
                    angles.append((i, j, k, k_angle, theta))
    model = _SurrogateBonds(bonds, angles)
    model.dropped_bonds = dropped
    return MLFFCalculator(model)


def _check_ends(initial: Atoms, final: Atoms) -> None:
    problems = []
    if len(initial) != len(final):
        problems.append(f'number of atoms ({len(initial)} vs {len(final)})')
    elif not np.array_equal(initial.numbers, final.numbers):
        bad = np.flatnonzero(initial.numbers != final.numbers)
        problems.append(f'atomic numbers or order (first at atom {int(bad[0])}, {len(bad)} atoms in all)')
    if not np.array_equal(initial.pbc, final.pbc):
        problems.append(f'pbc ({initial.pbc.tolist()} vs {final.pbc.tolist()})')
    if not np.allclose(initial.cell.array, final.cell.array, atol=1e-8):
        problems.append('cell')
    if problems:
        raise ValueError('initial and final structures differ in: ' + '; '.join(problems))


def idpp_path(
    initial: Atoms, final: Atoms, images: int, *, fmax: float = 0.1, steps: int = 100, mic: bool | None = None
) -> list[Atoms]:
    """The image-dependent pair potential (IDPP) path between two end structures, end points included.

    A linear interpolation (minimum-image displacements under periodic boundaries) relaxed with ASE's IDPP
    (:func:`ase.mep.idpp_interpolate`; Smidstrup et al., J. Chem. Phys. 140, 214106 (2014)): pair distances vary
    smoothly between those of the ends, so atoms do not pass through each other as in a straight line.

    Parameters
    ----------
    initial, final
        The end structures: same atoms in the same order, same cell and pbc (else ``ValueError`` naming what differs).
    images
        Number of intermediate images (>= 0); ``images + 2`` structures come back.
    fmax
        IDPP convergence, eV/Å of the IDPP objective.
    steps
        Largest number of IDPP optimiser steps.
    mic
        Minimum image in the interpolation and the IDPP distances; default: when any direction is periodic.

    Returns
    -------
    list[Atoms]
        ``[initial, ..., final]`` as new objects without calculators; the ends have exactly the given positions.
    """
    from ase.mep import NEB, idpp_interpolate, interpolate

    _check_ends(initial, final)
    if images < 0:
        raise ValueError(f'images must be >= 0, got {images}')
    mic = bool(np.any(initial.pbc)) if mic is None else bool(mic)
    path = [initial.copy() for _ in range(images + 1)] + [final.copy()]
    for image in path:
        image.calc = None
    if images:
        interpolate(path, mic=mic, apply_constraint=False)
        band = NEB(path, method='improvedtangent')  # the method only matters for NEB forces, not for IDPP
        idpp_interpolate(band, traj=None, log=None, fmax=fmax, steps=steps, mic=mic)
    for image in path:
        image.calc = None
    path[0].positions = initial.positions
    path[-1].positions = final.positions
    return path
