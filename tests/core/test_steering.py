"""Steered starts of umbrella windows: restrained MD from the nearest equilibrated neighbour, any CV."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import molecule

from aiida_mlff.core.analytic import HarmonicBonds
from aiida_mlff.core.colvars import Dihedral, Distance
from aiida_mlff.core.md.integrators import KB
from aiida_mlff.core.restraints import cv_value
from aiida_mlff.core.steering import MovingHarmonicBias, steered_starts

KT = KB * 300.0  # eV


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def h2o2():
    return molecule('H2O2')  # O, O, H, H; H-O-O-H dihedral 121 degrees


@pytest.fixture
def bonds(h2o2):
    """Harmonic O-O, O-H bonds and O-O-H angles at the geometry of ``h2o2``: the torsion is free."""
    d, a = h2o2.get_distance, h2o2.get_angle
    return HarmonicBonds(
        bonds=[(0, 1, 20.0, d(0, 1)), (0, 2, 30.0, d(0, 2)), (1, 3, 30.0, d(1, 3))],
        angles=[(2, 0, 1, 3.0, a(2, 0, 1)), (0, 1, 3, 3.0, a(0, 1, 3))],
    )


def min_distance(atoms) -> float:
    return float(atoms.get_all_distances()[np.triu_indices(len(atoms), 1)].min())


def test_moving_bias_centres():
    bias = MovingHarmonicBias(Distance(0, 1), [1.0, 2.0], [2.0, 1.0], kappa=1.0)
    bias.move_to(0.25)
    np.testing.assert_allclose(bias.centers.numpy(), [1.25, 1.75])
    with pytest.raises(ValueError, match='start centres'):
        MovingHarmonicBias(Distance(0, 1), [1.0, 2.0], [2.0], kappa=1.0)


def test_dihedral_windows_through_pi(h2o2, bonds):
    """Centres on both sides of 121 degrees, the upper ones across +-180: every window sits at its centre."""
    cv = Dihedral(2, 0, 1, 3)
    kappa = 5.0  # eV/rad^2: width sqrt(kT / kappa) = 4 degrees
    centers = np.radians([150.0, 175.0, -160.0, -135.0, 90.0, 60.0])
    structures, info = steered_starts(
        bonds, h2o2, cv, centers, kappa=kappa, temperature=300.0, timestep=0.5, steps_per_window=150
    )
    width = math.sqrt(KT / kappa)
    assert info['start_value'] == pytest.approx(math.radians(121.025), abs=1e-4)
    np.testing.assert_array_equal(info['started_from'], [-1, 0, 1, 2, -1, 4])
    assert not info['blown_up'].any()
    for atoms, center, value in zip(structures, centers, info['value'], strict=True):
        assert abs(cv.difference(cv_value(cv, atoms), center)) < 4 * width
        assert abs(cv.difference(value, center)) < 2 * width
        assert -math.pi <= value <= math.pi
        assert min_distance(atoms) > 0.7
        assert atoms.get_distance(0, 1) == pytest.approx(1.468, abs=0.15)
    assert np.all(info['std'] < 2 * width)


def test_distance_windows_and_blow_up_fallback(h2o2, bonds):
    """H...H distance (no term of its own): the 0.3 Å window blows up and falls back to the 1.2 Å structure."""
    cv = Distance(2, 3)
    kappa = 20.0  # eV/Å^2: width 0.036 Å
    start = cv_value(cv, h2o2)
    centers = [start + 0.3, 1.2, 0.3, start - 0.3]
    structures, info = steered_starts(
        bonds,
        h2o2,
        cv,
        centers,
        kappa=kappa,
        temperature=300.0,
        timestep=0.5,
        steps_per_window=100,
        min_distance=0.7,
        seed=3,
    )
    width = math.sqrt(KT / kappa)
    np.testing.assert_array_equal(info['blown_up'], [False, False, True, False])
    np.testing.assert_array_equal(info['started_from'], [-1, 3, 1, -1])
    assert 'closer than 0.7' in info['diagnostic'][2]
    np.testing.assert_array_equal(structures[2].positions, structures[1].positions)
    assert np.isnan(info['std'][2])
    for k in (0, 1, 3):
        assert abs(cv_value(cv, structures[k]) - centers[k]) < 4 * width
    assert all(min_distance(atoms) > 0.7 for atoms in structures)
