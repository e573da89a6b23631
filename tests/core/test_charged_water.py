"""The charged flexible water referee (SPC/Fw with damped shifted force Coulomb), checked against exact referees.

- the energy against an independent numpy double loop over all atom pairs and periodic images within the cutoff
  (DSF Coulomb, switched O-O Lennard-Jones, SPC/Fw bonds and angle), in an orthorhombic and a triclinic box;
- forces against central differences of the energy, the stress against central differences under symmetric strain
  (``(1/V) dE/d(strain)``, ASE's sign), both in float64 on a triclinic box;
- translation invariance; a wrapped molecule (split across the boundary) gives the same energy;
- a few NVT and NPT steps of ``simulate``.
"""

from __future__ import annotations

import math
from math import erfc

import numpy as np
import pytest
import torch

from aiida_mlff.core.analytic import COULOMB, KCAL_MOL, ChargedFlexibleWater, water_box
from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.md import simulate

from . import probes

pytestmark = pytest.mark.usefixtures('one_thread')

TRICLINIC = np.array([[1.0, 0.0, 0.0], [0.18, 0.97, 0.0], [-0.12, 0.21, 0.93]])


def _box(n_molecules: int = 8, seed: int = 3, triclinic: bool = True, density: float = 1.0):
    """A small water box, thermally distorted (random displacements of 0.05 Å), optionally sheared."""
    atoms = water_box(n_molecules, density=density, seed=seed)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    if triclinic:
        atoms.set_cell(atoms.cell.array @ TRICLINIC, scale_atoms=True)
    return atoms


def _energy(pot: ChargedFlexibleWater, atoms) -> float:
    return float(pot.evaluate(AtomsBatch.from_atoms(atoms, dtype=torch.float64), forces=False)['energy'][0])


def reference_energy(atoms, alpha: float = 0.2, cutoff: float = 9.0, r_on: float = 8.0) -> float:
    """SPC/Fw + DSF energy [eV] by a direct loop over all pairs and images within ``cutoff`` (numpy, float64)."""
    pos, cell, numbers = atoms.positions, atoms.cell.array, atoms.numbers
    n = len(atoms)
    q = np.where(numbers == 8, -0.82, 0.41)
    eps, sig = 0.1554 * KCAL_MOL, 3.165492
    e_rc = erfc(alpha * cutoff) / cutoff
    f_rc = (
        erfc(alpha * cutoff) / cutoff**2 + 2 * alpha / math.sqrt(math.pi) * math.exp(-((alpha * cutoff) ** 2)) / cutoff
    )
    heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reach = np.ceil((cutoff + 4.0) / heights).astype(int)
    energy = 0.0
    for a in range(-reach[0], reach[0] + 1):
        for b in range(-reach[1], reach[1] + 1):
            for c in range(-reach[2], reach[2] + 1):
                shift = np.array([a, b, c]) @ cell
                for i in range(n):
                    d = pos + shift - pos[i]  # r_j - r_i for every j
                    r = np.linalg.norm(d, axis=1)
                    for j in range(n):
                        if (i == j and a == b == c == 0) or r[j] >= cutoff:
                            continue
                        if i // 3 == j // 3 and r[j] < 3.0:  # the molecule's own atoms: bonded terms instead
                            continue
                        x = r[j]
                        pair = COULOMB * q[i] * q[j] * (erfc(alpha * x) / x - e_rc + f_rc * (x - cutoff))
                        if numbers[i] == 8 and numbers[j] == 8:
                            s = min(max((x - r_on) / (cutoff - r_on), 0.0), 1.0)
                            switch = 1 - s**3 * (10 - 15 * s + 6 * s**2)
                            pair += 4 * eps * ((sig / x) ** 12 - (sig / x) ** 6) * switch
                        energy += 0.5 * pair
    k_b, r0, k_a, t0 = 1059.162 * KCAL_MOL, 1.012, 75.90 * KCAL_MOL, math.radians(113.24)
    inv = np.linalg.inv(cell)
    for m in range(n // 3):
        o = pos[3 * m]
        d1, d2 = (pos[3 * m + k] - o for k in (1, 2))
        d1, d2 = ((f - np.round(f)) @ cell for f in (d1 @ inv, d2 @ inv))
        r1, r2 = np.linalg.norm(d1), np.linalg.norm(d2)
        theta = math.acos(np.dot(d1, d2) / (r1 * r2))
        energy += 0.5 * k_b * ((r1 - r0) ** 2 + (r2 - r0) ** 2) + 0.5 * k_a * (theta - t0) ** 2
    return energy


@pytest.mark.parametrize('triclinic', [False, True])
def test_energy_matches_direct_sum_over_images(triclinic):
    atoms = _box(n_molecules=8, triclinic=triclinic)  # box edge about 6.2 Å < cutoff: many images
    got = _energy(ChargedFlexibleWater(), atoms)
    want = reference_energy(atoms)
    print(f'\nenergy {got:.12f} eV, direct sum {want:.12f} eV, difference {got - want:.1e} eV')
    assert got == pytest.approx(want, abs=1e-10, rel=0)


def test_forces_are_minus_energy_gradient():
    atoms = _box()
    pot = ChargedFlexibleWater()
    forces = pot.evaluate(AtomsBatch.from_atoms(atoms, dtype=torch.float64))['forces'].numpy()
    h = 1e-5
    numeric = np.zeros_like(forces)
    for a in range(0, len(atoms), 2):  # every other atom, all three directions
        for x in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, x] += sign * h
                shifted.append(_energy(pot, moved))
            numeric[a, x] = -(shifted[0] - shifted[1]) / (2 * h)
    checked = forces[0::2]
    err = np.abs(checked - numeric[0::2]).max() / np.abs(checked).max()
    print(f'\nmax |F - F_fd| / max |F| = {err:.1e} (max |F| {np.abs(checked).max():.2f} eV/Å)')
    assert err < 1e-6


def test_stress_is_strain_derivative_on_triclinic_cell():
    atoms = _box()
    pot = ChargedFlexibleWater()
    stress = pot.evaluate(AtomsBatch.from_atoms(atoms, dtype=torch.float64), stress=True)['stress'][0].numpy()
    numeric = probes.finite_strain_stress(lambda strained: _energy(pot, strained), atoms, h=1e-6)
    err = np.abs(stress - numeric).max() / np.abs(numeric).max()
    print(f'\nstress {stress.diagonal()} eV/Å^3; max relative deviation from finite strain {err:.1e}')
    assert err < 1e-6
    assert np.allclose(stress, stress.T, atol=1e-12)


def test_translation_invariance_and_wrapped_molecules():
    atoms = _box()
    pot = ChargedFlexibleWater()
    ref = pot.evaluate(AtomsBatch.from_atoms(atoms, dtype=torch.float64), stress=True)
    moved = atoms.copy()
    moved.positions += np.array([0.37, -1.21, 2.9])
    moved.wrap()  # molecules split across the boundary
    out = pot.evaluate(AtomsBatch.from_atoms(moved, dtype=torch.float64), stress=True)
    assert float(out['energy'][0]) == pytest.approx(float(ref['energy'][0]), abs=1e-10)
    # a wrapped atom's force is that of the same atom
    assert torch.allclose(out['forces'], ref['forces'], atol=1e-9)
    assert torch.allclose(out['stress'], ref['stress'], atol=1e-12)
    assert abs(float(ref['forces'].sum(0).norm())) < 1e-9


def test_runs_in_simulate_nvt_and_npt():
    boxes = [water_box(16, density=1.0, seed=s) for s in (0, 1)]
    pot = ChargedFlexibleWater()
    nvt = simulate(
        pot, boxes, ensemble='langevin', timestep=0.5, temperature=300.0, friction=0.01, steps=40, stride=20, seed=0
    )
    assert list(nvt.status) == ['ok', 'ok']
    assert np.isfinite(np.asarray(nvt.potential_energy)).all()
    npt = simulate(
        pot,
        boxes,
        ensemble='npt',
        timestep=0.5,
        temperature=300.0,
        friction=0.01,
        pressure=1.0,
        barostat_mode='isotropic',
        steps=40,
        stride=20,
        seed=0,
    )
    assert list(npt.status) == ['ok', 'ok']
    assert np.isfinite(npt.extra['volume']).all()
