"""The solvation sampler: density, contacts, an intact solute, reproducibility, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.units import _amu

from aiida_mlff.core.solvate import WATER_ANGLE, WATER_OH, solution_density, solvate


def h2o2():
    return molecule('H2O2')


def contacts(system, n_solute: int):
    """Smallest solute-water and water-water (different molecules) distances [Å], minimum image."""
    d = system.get_all_distances(mic=True)
    molecule_of = np.concatenate([np.full(n_solute, -1), np.repeat(np.arange((len(system) - n_solute) // 3), 3)])
    solute_water = d[:n_solute, n_solute:].min(initial=np.inf)
    waters = molecule_of[n_solute:]
    ww = d[n_solute:, n_solute:][waters[:, None] != waters[None, :]].min()
    return solute_water, ww


def test_sized_by_number_of_waters():
    system = solvate(h2o2(), n_waters=40, density=0.997, min_distance=2.2, seed=1)
    assert system.info['n_waters'] == 40
    assert len(system) == 4 + 3 * 40
    assert system.pbc.all()
    cell = system.cell[:]
    np.testing.assert_allclose(cell, np.eye(3) * cell[0, 0])  # cubic
    # the solution's density, by hand: masses (amu) over volume (Å^3) -> g/cm^3
    by_hand = system.get_masses().sum() * _amu * 1e3 / (system.get_volume() * 1e-30 * 1e6)
    assert by_hand == pytest.approx(0.997, rel=1e-12)
    assert solution_density(system) == pytest.approx(by_hand, rel=1e-12)
    solute_water, water_water = contacts(system, 4)
    assert solute_water >= 2.2
    assert water_water >= 1.6
    oxygens = system.get_all_distances(mic=True)[4::3, 4::3] + np.eye(40) * 99.0
    assert oxygens.min() >= 2.5  # no two waters on top of each other
    # every water is a whole, rigid molecule: O-H lengths and H-O-H angle (minimum image)
    for o in range(4, len(system), 3):
        assert system[o].symbol == 'O'
        assert system.get_distance(o, o + 1, mic=True) == pytest.approx(WATER_OH)
        assert system.get_distance(o, o + 2, mic=True) == pytest.approx(WATER_OH)
        assert system.get_angle(o + 1, o, o + 2, mic=True) == pytest.approx(WATER_ANGLE)


def test_sized_by_box_length_and_solute_intact():
    solute = h2o2()
    system = solvate(solute, box_length=11.0, density=1.0, min_distance=2.0, seed=3)
    np.testing.assert_allclose(system.cell[:], np.eye(3) * 11.0)
    n = system.info['n_waters']
    # the nearest whole number of waters: the density is within half a water's mass of the target
    half_water = 0.5 * 18.015 * _amu * 1e27 / 11.0**3
    assert abs(solution_density(system) - 1.0) <= half_water
    assert n == round((1.0 * 11.0**3 / (_amu * 1e27) - solute.get_masses().sum()) / 18.015)
    # the solute: same elements in the same order, moved rigidly (all distances kept), centred in the box
    assert system.get_chemical_symbols()[:4] == solute.get_chemical_symbols()
    moved = system.positions[:4]
    np.testing.assert_allclose(moved - moved.mean(0), solute.positions - solute.positions.mean(0), atol=1e-12)
    np.testing.assert_allclose(moved.mean(0), [5.5, 5.5, 5.5], atol=1e-12)
    assert contacts(system, 4)[0] >= 2.0


def test_reproducible_for_a_seed():
    a = solvate(h2o2(), n_waters=30, seed=7)
    b = solvate(h2o2(), n_waters=30, seed=7)
    c = solvate(h2o2(), n_waters=30, seed=8)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    assert not np.allclose(a.positions, c.positions)


def test_pure_water_and_larger_threshold_removes_more_sites():
    from ase import Atoms

    pure = solvate(Atoms(), n_waters=27, density=0.997)
    assert len(pure) == 81
    assert solution_density(pure) == pytest.approx(0.997, rel=1e-12)
    assert contacts(pure, 0)[1] >= 1.6
    tight = solvate(h2o2(), box_length=12.0, min_distance=3.0, seed=0)
    assert contacts(tight, 4)[0] >= 3.0


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({}, 'exactly one of n_waters'),
        ({'n_waters': 10, 'box_length': 9.0}, 'exactly one of n_waters'),
        ({'n_waters': 0}, 'n_waters must be'),
        ({'box_length': -1.0}, 'box_length must be'),
        ({'n_waters': 10, 'density': 0.0}, 'density must be'),
        ({'n_waters': 3}, 'do not fit'),
        ({'box_length': 9.0, 'density': 3.0}, 'do not fit'),
    ],
)
def test_bad_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        solvate(h2o2(), **kwargs)
