from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from aiida_mlff.core import sampling


@pytest.fixture
def h2o2() -> Atoms:
    atoms = molecule('H2O2')
    atoms.center(vacuum=4.0)
    return atoms


def hooh_indices(atoms: Atoms) -> tuple[int, int, int, int]:
    o = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == 'O']
    h = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == 'H']
    d = atoms.get_all_distances()
    h_on = {oi: min(h, key=lambda hi: d[oi, hi]) for oi in o}
    return h_on[o[0]], o[0], o[1], h_on[o[1]]


def test_rattle_is_seeded_and_has_the_requested_spread():
    atoms = bulk('Si', cubic=True).repeat(3)
    a = sampling.rattle(atoms, n=5, stdev=0.1, seed=7)
    b = sampling.rattle(atoms, n=5, stdev=0.1, seed=7)
    c = sampling.rattle(atoms, n=5, stdev=0.1, seed=8)
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(a, b, strict=True))
    assert not np.allclose(a[0].positions, c[0].positions)
    displacements = np.concatenate([x.positions - atoms.positions for x in a])
    assert displacements.std() == pytest.approx(0.1, rel=0.1)
    assert not np.allclose(a[0].positions, a[1].positions)
    assert np.array_equal(atoms.positions, bulk('Si', cubic=True).repeat(3).positions)  # input untouched


def test_rattle_rejects_bad_arguments():
    with pytest.raises(ValueError, match='n must be'):
        sampling.rattle(molecule('H2O'), n=0)
    with pytest.raises(ValueError, match='stdev'):
        sampling.rattle(molecule('H2O'), n=1, stdev=-1)


def test_strain_moves_atoms_with_the_cell():
    atoms = bulk('Si', cubic=True)
    frames = sampling.strain(atoms, n=6, max_strain=0.03, seed=3)
    volumes = [f.get_volume() / atoms.get_volume() for f in frames]
    assert all(0.9 < v < 1.1 for v in volumes)
    assert len({round(v, 8) for v in volumes}) == 6
    for frame in frames:
        np.testing.assert_allclose(frame.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-12)
        eps = np.linalg.solve(atoms.cell.array, frame.cell.array) - np.eye(3)
        np.testing.assert_allclose(eps, eps.T, atol=1e-12)
        assert np.abs(eps).max() <= 0.03 + 1e-12
    again = sampling.strain(atoms, n=6, max_strain=0.03, seed=3)
    assert np.array_equal(frames[2].cell.array, again[2].cell.array)


def test_strain_needs_a_periodic_structure():
    with pytest.raises(ValueError, match='periodic'):
        sampling.strain(molecule('H2O'), n=2)


def test_dihedral_scan_reaches_every_angle_and_keeps_bonds(h2o2):
    idx = hooh_indices(h2o2)
    angles = [0.0, 60.0, 111.0, 180.0, 270.0]
    frames = sampling.dihedral_scan(h2o2, idx, angles)
    reference = h2o2.get_all_distances()
    for angle, frame in zip(angles, frames, strict=True):
        assert frame.get_dihedral(*idx) == pytest.approx(angle % 360, abs=1e-8)
        # bond lengths and the O-O axis are unchanged: only one side rotated rigidly
        a, b, c, d = idx
        for i, j in [(a, b), (b, c), (c, d)]:
            assert frame.get_distance(i, j) == pytest.approx(reference[i, j], abs=1e-10)
        np.testing.assert_allclose(frame.positions[[a, b, c]], h2o2.positions[[a, b, c]], atol=1e-12)


def test_dihedral_scan_rattle_is_seeded(h2o2):
    idx = hooh_indices(h2o2)
    a = sampling.dihedral_scan(h2o2, idx, [90.0, 120.0], rattle_stdev=0.02, seed=4)
    b = sampling.dihedral_scan(h2o2, idx, [90.0, 120.0], rattle_stdev=0.02, seed=4)
    assert np.array_equal(a[1].positions, b[1].positions)


def test_dihedral_scan_refuses_rings_and_bad_indices():
    benzene = molecule('C6H6')
    with pytest.raises(ValueError, match='ring'):
        sampling.dihedral_scan(benzene, [6, 0, 1, 7], [10.0])
    with pytest.raises(ValueError, match='four different'):
        sampling.dihedral_scan(benzene, [0, 0, 1, 2], [10.0])
    with pytest.raises(ValueError, match='out of range'):
        sampling.dihedral_scan(molecule('H2O2'), [0, 1, 2, 9], [10.0])
