"""``relaxed_cv_scan``: restrained relaxations along any CV with a (tiny, untrained) potential, values in file units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from aiida import orm
from ase.build import molecule

from aiida_mlff.calculations.campaign import relaxed_cv_scan
from aiida_mlff.core.colvars import cv_from_spec
from aiida_mlff.core.models import Potential
from aiida_mlff.core.restraints import TOLERANCE, cv_value
from aiida_mlff.data.potential import PotentialData


@pytest.fixture
def tiny_potential(aiida_profile, tmp_path):
    pot = Potential.build(
        ['H', 'O'],
        cutoff=3.0,
        angular_cutoff=2.5,
        n_radial=3,
        n_angular=1,
        hidden=(4,),
        committee=2,
        seed=0,
        dtype=torch.float64,
    )
    return PotentialData(pot.save(tmp_path / 'tiny.pt')).store()


@pytest.fixture
def h2o2(aiida_profile):
    atoms = molecule('H2O2')
    atoms.center(vacuum=3.0)
    return orm.StructureData(ase=atoms)


@pytest.mark.parametrize(
    ('spec', 'values', 'tolerance'),
    [
        ({'type': 'dihedral', 'atoms': [2, 0, 1, 3]}, [90.0, 150.0, 180.0], 0.5),  # degrees
        ({'type': 'distance', 'atoms': [0, 1]}, [1.4, 1.55], TOLERANCE['Å']),  # Å
    ],
    ids=['dihedral', 'distance'],
)
def test_relaxed_cv_scan_reaches_values(tiny_potential, h2o2, spec, values, tolerance):
    settings = orm.Dict({'cv': spec, 'values': values, 'fmax': 0.05, 'steps': 100})
    out = relaxed_cv_scan(tiny_potential, h2o2, settings)
    energies = out['energies']
    assert sorted(k for k in out if k.startswith('s')) == [f's{k:04d}' for k in range(len(values))]
    np.testing.assert_array_equal(energies.get_array('value'), values)
    achieved = energies.get_array('achieved_value')
    cv = cv_from_spec(spec)
    error = cv.to_file(cv.difference(cv.to_internal(achieved), cv.to_internal(np.asarray(values))))
    assert np.all(np.abs(error) <= tolerance + 1e-9)  # 180 degrees may come back as -179.9
    for k, value in enumerate(achieved):  # the stored structures carry the achieved values
        assert cv.to_file(cv_value(cv, out[f's{k:04d}'].get_ase())) == pytest.approx(value, abs=1e-6)
    assert energies.get_array('energy').shape == (len(values),)
    assert np.all(np.isfinite(energies.get_array('energy')))
    assert energies.get_array('converged').dtype == bool
    assert energies.base.attributes.get('unit') == cv.file_unit
    assert energies.base.attributes.get('cv') == cv.spec
