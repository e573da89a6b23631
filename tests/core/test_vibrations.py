"""Harmonic frequencies from the autograd Hessian."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from aiida_mlff.core.models import Potential
from aiida_mlff.core.vibrations import frequencies, frequencies_from_hessian, hessian

pytestmark = pytest.mark.usefixtures('one_thread')


REFERENCE = Path(__file__).parents[1] / 'data' / 'h2o_pbe_30ry_frequencies.json'


def _water() -> Atoms:
    return Atoms('OH2', positions=[[0.0, 0.0, 0.0], [0.96, 0.02, 0.0], [-0.25, 0.93, 0.05]])


def test_hessian_matches_finite_differences_of_forces():
    pot = Potential.build(['H', 'O'], seed=4, dtype='float64')
    atoms = _water()
    analytic = hessian(pot, atoms)
    atoms.calc = pot.calculator()
    h = 1e-5
    numeric = np.zeros_like(analytic)
    for k in range(9):
        a, c = divmod(k, 3)
        forces = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[a, c] += sign * h
            moved.calc = pot.calculator()
            forces.append(moved.get_forces().ravel())
        numeric[k] = -(forces[0] - forces[1]) / (2 * h)
    assert np.abs(analytic).max() > 0.1
    assert np.allclose(analytic, 0.5 * (numeric + numeric.T), atol=1e-6 * np.abs(analytic).max())
    assert np.allclose(analytic, analytic.T)


def test_frequency_counts_and_float32_model():
    pot = Potential.build(['H', 'O'], seed=4)  # float32: the Hessian is still taken in float64
    assert len(frequencies(pot, _water())) == 3
    assert len(frequencies(pot, _water(), project=False)) == 9
    linear = Atoms('OH2', positions=[[0, 0, 0], [0.97, 0, 0], [-0.97, 0, 0]])
    assert len(frequencies(pot, linear)) == 4
    assert pot.dtype.is_floating_point
    assert str(pot.dtype) == 'torch.float32'


def test_harmonic_oscillator_frequency():
    """A diatomic with a known force constant: omega = sqrt(k / mu)."""
    atoms = Atoms('H2', positions=[[0, 0, 0], [0.74, 0, 0]])
    k = 36.0  # eV/Å^2
    hess = np.zeros((6, 6))
    block = k * np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]])
    hess[:3, :3], hess[3:, 3:], hess[:3, 3:], hess[3:, :3] = block, block, -block, -block
    freq = frequencies_from_hessian(hess, atoms)
    mu = atoms.get_masses()[0] / 2
    # 1 cm^-1 = 1.239842e-4 eV; hbar * sqrt(eV / (Å^2 amu)) = 6.46541e-2 eV
    expected = 6.46541e-2 * np.sqrt(k / mu) / 1.239842e-4
    assert len(freq) == 1
    assert abs(freq[0] - expected) / expected < 1e-4


def test_reference_file_is_consistent():
    if not REFERENCE.exists():
        return
    ref = json.loads(REFERENCE.read_text())
    atoms = Atoms(ref['symbols'], positions=ref['positions'])
    freq = frequencies_from_hessian(np.array(ref['hessian_eV_per_A2']), atoms)
    assert np.allclose(freq, ref['frequencies_cm-1'], rtol=1e-6)
    assert 1400 < freq[0] < 1700
    assert 3500 < freq[1] < freq[2] < 4000
