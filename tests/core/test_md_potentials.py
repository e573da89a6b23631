"""The analytic test potentials: hand-written forces against finite differences, periodic images, the interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from aiida_mlff.core.analytic import FlexibleWater, HarmonicBonds, LennardJones, SumPotential, water_box
from aiida_mlff.core.atoms import AtomsBatch


def finite_difference_forces(pot, batch: AtomsBatch, atoms: list[int], h: float = 1e-5) -> np.ndarray:
    out = []
    for a in atoms:
        row = []
        for d in range(3):
            energies = []
            for sign in (1, -1):
                pos = batch.positions.clone()
                pos[a, d] += sign * h
                moved = AtomsBatch(pos, batch.numbers, batch.cell, batch.pbc, batch.batch)
                energies.append(float(pot.evaluate(moved)['energy'].sum()))
            row.append(-(energies[0] - energies[1]) / (2 * h))
        out.append(row)
    return np.array(out)


def rattled_water(n: int, seed: int) -> Atoms:
    atoms = water_box(n, seed=seed)
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.mark.parametrize(
    ('pot', 'systems'),
    [
        (FlexibleWater(), [rattled_water(8, 1), rattled_water(4, 2)]),
        (FlexibleWater(cutoff=3.8, r_on=3.0), [rattled_water(8, 3)]),  # pairs inside the switching region
        (LennardJones(epsilon=0.01, sigma=2.5, cutoff=4.0, r_on=3.0), [rattled_water(8, 4)]),
        (
            HarmonicBonds([(0, 1, 30.0, 1.4)], [(2, 0, 1, 4.0, 100.0)]),
            [Atoms('O2H2', positions=[[0, 0, 0], [1.5, 0.1, 0], [-0.3, 0.9, 0.1], [1.8, -0.9, 0.4]])] * 2,
        ),
    ],
)
def test_forces_are_minus_energy_gradient(pot, systems):
    batch = AtomsBatch.from_atoms(systems)
    out = pot.evaluate(batch)
    assert out['energy'].shape == (len(systems),)
    assert out['forces'].shape == batch.positions.shape
    check = [0, 1, 2, 7, batch.positions.shape[0] - 1]
    np.testing.assert_allclose(out['forces'][check].numpy(), finite_difference_forces(pot, batch, check), atol=1e-6)
    # a system translated by a lattice vector, or with atoms unwrapped, has the same energy and forces
    if bool(batch.pbc.any()):
        shifted = batch.positions + batch.cell[0, 0] * 2 - batch.cell[0, 2]
        moved = pot.evaluate(AtomsBatch(shifted, batch.numbers, batch.cell, batch.pbc, batch.batch))
        np.testing.assert_allclose(moved['energy'].numpy(), out['energy'].numpy(), atol=1e-10)
        np.testing.assert_allclose(moved['forces'].numpy(), out['forces'].numpy(), atol=1e-9)


def test_sum_potential_adds_parts():
    systems = [rattled_water(8, 5)]
    batch = AtomsBatch.from_atoms(systems)
    a, b = FlexibleWater(), LennardJones(epsilon=0.002, sigma=2.0, cutoff=4.0, r_on=3.0)
    total = SumPotential(a, b).evaluate(batch)
    oa, ob = a.evaluate(batch), b.evaluate(batch)
    np.testing.assert_allclose(total['energy'].numpy(), (oa['energy'] + ob['energy']).numpy())
    np.testing.assert_allclose(total['forces'].numpy(), (oa['forces'] + ob['forces']).numpy(), atol=1e-12)
    assert SumPotential(a, b).cutoff == 6.0


def test_water_order_is_checked_and_water_box_density():
    bad = Atoms('HOH', positions=[[0.8, 0.6, 0], [0, 0, 0], [-0.8, 0.6, 0]])
    with pytest.raises(ValueError, match='O, H, H'):
        FlexibleWater().evaluate(AtomsBatch.from_atoms(bad))
    box = water_box(32)
    assert len(box) == 96
    assert sum(box.get_masses()) / box.get_volume() / 0.602214076 == pytest.approx(1.0, rel=1e-3)
    d = box.get_all_distances(mic=True)[::3, ::3]
    assert d[np.triu_indices(32, 1)].min() > 3.0  # fcc sites: no overlapping molecules
    assert torch.isfinite(FlexibleWater().evaluate(AtomsBatch.from_atoms(box))['energy']).all()
