"""Fixtures for the AiiDA layer: a temporary profile with the computer, pw code and pseudo family of ``setup``."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.build import molecule


@pytest.fixture(scope='session')
def mlff_environment(aiida_profile):
    """The temporary test profile with ``localhost``, ``pw@localhost`` and the default pseudo family."""
    from aiida_mlff import environment

    computer, _ = environment.ensure_computer()
    code, _ = environment.ensure_pw_code()
    family, _ = environment.ensure_pseudo_family()
    return {'computer': computer, 'code': code, 'family': family}


@pytest.fixture
def h2o() -> Atoms:
    """An H2O molecule centred in a periodic 8 Å box."""
    atoms = molecule('H2O')
    atoms.set_cell([8.0, 8.0, 8.0])
    atoms.center()
    atoms.pbc = True
    return atoms


@pytest.fixture
def labelled_frames(h2o):
    """Four H2O frames with synthetic labels (not DFT): for tests of the dataset node itself."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_mlff.core.sampling import rattle

    frames = rattle(h2o, n=4, stdev=0.05, seed=1)
    rng = __import__('numpy').random.default_rng(0)
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(3, 3)))
    return frames
