"""Restrained relaxations along any CV: the restraint's forces, relax_at_cv, cv_scan, the bond surrogate and IDPP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from aiida_mlff.core.colvars import Dihedral, Distance, DistanceDifference, cv_from_spec
from aiida_mlff.core.restraints import (
    TOLERANCE,
    RestrainedCalculator,
    bond_surrogate,
    cv_scan,
    cv_value,
    idpp_path,
    relax_at_cv,
    scan_order,
)

DIHEDRAL = Dihedral(2, 0, 1, 3)  # H-O-O-H of ase's H2O2 (O, O, H, H)


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def h2o2() -> Atoms:
    return molecule('H2O2')


@pytest.fixture
def oho() -> Atoms:
    """A symmetric-ish O-H...O toy (HO-H...OH): the shared proton 2 is bonded to O 0, 1.5 Å from O 3."""
    positions = [[0.0, 0.0, 0.0], [-0.3, 0.93, 0.0], [1.0, 0.0, 0.0], [2.5, 0.0, 0.0], [2.8, 0.93, 0.1]]
    return Atoms('OHHOH', positions=positions)


def periodic(atoms: Atoms, length: float = 7.0) -> Atoms:
    """``atoms`` in a cubic box, shifted so that the molecule straddles the boundary, positions wrapped."""
    out = atoms.copy()
    out.set_cell([length] * 3)
    out.pbc = True
    out.positions += [length - 0.5, 0.3, 0.2]
    out.wrap()
    return out


def numerical_forces(atoms: Atoms, h: float = 1e-5) -> np.ndarray:
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for x in range(3):
            e = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.calc = atoms.calc
                moved.positions[a, x] += sign * h
                e.append(moved.get_potential_energy())
            forces[a, x] = -(e[0] - e[1]) / (2 * h)
    return forces


@pytest.mark.parametrize('pbc', [False, True])
@pytest.mark.parametrize('cv', [Distance(0, 1), DIHEDRAL, DistanceDifference(0, 2, 1, 2)], ids=str)
def test_restrained_forces_match_finite_differences(h2o2, cv, pbc):
    atoms = periodic(h2o2) if pbc else h2o2.copy()
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    target = cv_value(cv, atoms) + 0.3  # through +pi for the dihedral: the restraint takes the minimum image
    atoms.calc = RestrainedCalculator(bond_surrogate(h2o2), cv, target, kappa=3.0)
    np.testing.assert_allclose(atoms.get_forces(), numerical_forces(atoms), atol=1e-6)
    results = atoms.calc.results
    d = float(cv.difference(results['cv'], target))
    assert results['restraint_energy'] == pytest.approx(0.5 * 3.0 * d**2)
    assert results['energy'] == pytest.approx(results['unrestrained_energy'] + results['restraint_energy'])


SPECS = {
    'distance': ({'type': 'distance', 'atoms': [0, 1]}, 0.1),
    'angle': ({'type': 'angle', 'atoms': [2, 0, 1]}, math.radians(10.0)),
    'dihedral': ({'type': 'dihedral', 'atoms': [2, 0, 1, 3]}, math.radians(-40.0)),
    'distance_difference': ({'type': 'distance_difference', 'atoms': [0, 2, 1, 2]}, 0.2),
    'point_plane': ({'type': 'point_plane', 'atoms': [3, 2, 0, 1]}, 0.3),
    'coordination': ({'type': 'coordination', 'atoms': [2], 'partners': [0, 1, 3], 'r0': 1.3}, -0.05),
    'combination': (
        {
            'type': 'combination',
            'terms': [
                {'cv': {'type': 'distance', 'atoms': [0, 2]}, 'coefficient': 1.0},
                {'cv': {'type': 'distance', 'atoms': [1, 3]}, 'coefficient': 1.0},
            ],
        },
        0.1,
    ),
}


@pytest.mark.parametrize('pbc', [False, True])
@pytest.mark.parametrize('kind', sorted(SPECS))
def test_relax_at_cv_every_cv_type(h2o2, kind, pbc):
    spec, shift = SPECS[kind]
    cv = cv_from_spec(spec)
    atoms = periodic(h2o2) if pbc else h2o2
    target = cv_value(cv, atoms) + shift
    relaxed, info = relax_at_cv(atoms, bond_surrogate(atoms, cv), cv, target)
    assert abs(cv.difference(cv_value(cv, relaxed), target)) <= info['tolerance']
    assert info['converged']
    distances = relaxed.get_all_distances(mic=pbc)[np.triu_indices(len(relaxed), 1)]
    assert distances.min() > 0.7


def test_relax_at_cv_stiffens_until_within_tolerance(h2o2):
    """The O-O bond of the surrogate resists the pull: the first kappa leaves the distance too short."""
    cv = Distance(0, 1)
    relaxed, info = relax_at_cv(h2o2, bond_surrogate(h2o2), cv, 1.75)
    assert info['rounds'] > 1
    assert abs(cv_value(cv, relaxed) - 1.75) <= TOLERANCE['Å']
    assert info['value'] == pytest.approx(cv_value(cv, relaxed))
    assert info['converged']
    # the surrogate's energy without the restraint: one stretched O-O bond, 20 eV/Å^2 (the rest relaxes)
    assert info['energy'] == pytest.approx(0.5 * 20.0 * (info['value'] - h2o2.get_distance(0, 1)) ** 2, rel=0.05)
    assert relaxed.calc is None
    np.testing.assert_array_equal(h2o2.positions, molecule('H2O2').positions)  # input untouched


@pytest.mark.parametrize('pbc', [False, True])
def test_relax_at_cv_dihedral_through_pi(h2o2, pbc):
    atoms = periodic(h2o2) if pbc else h2o2
    target = math.radians(-170.0)  # 69 degrees away from the start, across +-180
    relaxed, info = relax_at_cv(atoms, bond_surrogate(atoms), DIHEDRAL, target)
    assert abs(DIHEDRAL.difference(cv_value(DIHEDRAL, relaxed), target)) <= TOLERANCE['rad']
    assert info['converged']
    assert info['energy'] < 1e-3  # a torsion costs the surrogate nothing
    assert relaxed.get_distance(0, 1, mic=pbc) == pytest.approx(atoms.get_distance(0, 1, mic=pbc), abs=0.01)


def test_relax_at_cv_proton_transfer(oho):
    cv = DistanceDifference(0, 2, 3, 2)  # d(O0, H2) - d(O3, H2): -0.5 Å at the start
    surrogate = bond_surrogate(oho, cv)
    assert surrogate.potential.dropped_bonds == [(0, 2)]
    relaxed, info = relax_at_cv(oho, surrogate, cv, 0.4)
    assert abs(info['value'] - 0.4) <= TOLERANCE['Å']
    assert info['converged']
    distances = relaxed.get_all_distances()[np.triu_indices(len(relaxed), 1)]
    assert distances.min() > 0.7
    assert relaxed.get_distance(2, 3) < relaxed.get_distance(0, 2)  # the proton moved over
    # stretching the O-H bond: kept, the surrogate bond fights the restraint (0.5 * 20 eV/Å^2 * (0.4 Å)^2)
    stretch = Distance(0, 2)
    _, fought = relax_at_cv(oho, bond_surrogate(oho), stretch, 1.4)
    _, free = relax_at_cv(oho, bond_surrogate(oho, stretch), stretch, 1.4)
    assert fought['energy'] == pytest.approx(1.6, rel=0.05)
    assert free['energy'] < 1e-4
    assert free['value'] == pytest.approx(1.4, abs=TOLERANCE['Å'])


def test_surrogate_keeps_dihedral_bonds(h2o2):
    surrogate = bond_surrogate(h2o2, DIHEDRAL)
    assert surrogate.potential.dropped_bonds == []
    assert len(surrogate.potential.bonds) == 3
    assert len(surrogate.potential.angles) == 2
    assert bond_surrogate(h2o2, Distance(0, 1)).potential.dropped_bonds == [(0, 1)]
    h2o2.calc = surrogate
    assert h2o2.get_potential_energy() == pytest.approx(0.0, abs=1e-12)


def test_scan_order_walks_outwards():
    cv = Distance(0, 1)
    down, up = scan_order(cv, 1.0, [0.7, 1.3, 0.9, 1.05, 1.2, 0.8])
    assert up == [3, 4, 1]
    assert down == [2, 5, 0]
    # periodic: targets across +-pi seen from 2.8 rad
    down, up = scan_order(DIHEDRAL, 2.8, [-3.0, 2.0, 3.0, 2.5, -2.5])
    assert up == [2, 0, 4]
    assert down == [3, 1]


def test_cv_scan_starts_each_point_from_its_neighbour(h2o2):
    targets = np.radians([150.0, 90.0, 120.0, 180.0, -150.0, 60.0])
    results = cv_scan(h2o2, bond_surrogate(h2o2), DIHEDRAL, targets, fmax=0.02)
    assert [info['started_from'] for _, info in results] == [2, 2, -1, 0, 3, 1]
    for (atoms, info), target in zip(results, targets, strict=True):
        assert abs(DIHEDRAL.difference(cv_value(DIHEDRAL, atoms), target)) <= TOLERANCE['rad']
        assert info['converged']
        assert atoms.get_distance(0, 1) == pytest.approx(h2o2.get_distance(0, 1), abs=0.01)


def test_cv_scan_distance_difference(oho):
    cv = DistanceDifference(0, 2, 3, 2)
    targets = [-0.8, -0.6, -0.3, 0.0, 0.3]
    results = cv_scan(oho, bond_surrogate(oho, cv), cv, targets)
    assert [info['started_from'] for _, info in results] == [1, -1, 1, 2, 3]
    for (atoms, info), target in zip(results, targets, strict=True):
        assert abs(info['value'] - target) <= TOLERANCE['Å']
        assert cv_value(cv, atoms) == pytest.approx(info['value'])


def test_idpp_path_ends_exact_and_monotone(h2o2):
    surrogate = bond_surrogate(h2o2)
    start, _ = relax_at_cv(h2o2, surrogate, DIHEDRAL, math.radians(80.0))
    end, _ = relax_at_cv(start, surrogate, DIHEDRAL, math.radians(160.0))
    path = idpp_path(start, end, 5)
    assert len(path) == 7
    np.testing.assert_array_equal(path[0].positions, start.positions)
    np.testing.assert_array_equal(path[-1].positions, end.positions)
    values = [cv_value(DIHEDRAL, image) for image in path]
    assert np.all(np.diff(values) > 0)
    assert all(image.get_distance(0, 1) == pytest.approx(start.get_distance(0, 1), abs=0.05) for image in path)
    assert len(idpp_path(h2o2, h2o2, 0)) == 2


def test_idpp_path_proton_transfer_monotone(oho):
    cv = DistanceDifference(0, 2, 3, 2)
    surrogate = bond_surrogate(oho, cv)
    start, _ = relax_at_cv(oho, surrogate, cv, -0.5)
    end, _ = relax_at_cv(start, surrogate, cv, 0.5)
    values = [cv_value(cv, image) for image in idpp_path(start, end, 4)]
    assert values[0] == pytest.approx(-0.5, abs=0.01)
    assert values[-1] == pytest.approx(0.5, abs=0.01)
    assert np.all(np.diff(values) > 0)


def test_idpp_path_minimum_image():
    box = Atoms('H2', positions=[[0.2, 1.0, 1.0], [1.0, 1.0, 1.0]], cell=[5.0, 5.0, 5.0], pbc=True)
    final = box.copy()
    final.positions[0] = [4.6, 1.0, 1.0]  # moved 0.6 Å backwards across the boundary
    path = idpp_path(box, final, 2)
    steps = [
        np.linalg.norm(path[k + 1].get_distance(0, 1, mic=True) - path[k].get_distance(0, 1, mic=True))
        for k in range(3)
    ]
    assert max(steps) < 0.4  # never the 4.4 Å way round
    np.testing.assert_array_equal(path[-1].positions, final.positions)


def test_idpp_path_rejects_different_structures(h2o2, oho):
    with pytest.raises(ValueError, match='number of atoms'):
        idpp_path(h2o2, oho, 3)
    swapped = h2o2[[2, 1, 0, 3]]
    with pytest.raises(ValueError, match='atomic numbers or order'):
        idpp_path(h2o2, swapped, 3)
    boxed = h2o2.copy()
    boxed.set_cell([6.0, 6.0, 6.0])
    boxed.pbc = True
    with pytest.raises(ValueError, match=r'pbc .*; cell'):
        idpp_path(h2o2, boxed, 3)
