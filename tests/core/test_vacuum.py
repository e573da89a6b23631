"""Vacuum widths between periodic images, against geometry worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from aiida_mlff.core.solvate import solvate
from aiida_mlff.core.vacuum import is_molecule_in_box, vacuum_widths


def test_molecule_in_a_box_even_across_the_boundary():
    h2o = molecule('H2O')
    extent = np.ptp(h2o.positions, axis=0)
    h2o.set_cell([9.0, 10.0, 11.0])
    h2o.pbc = True
    h2o.translate([8.8, 0.1, 5.0])  # straddles the x and y faces of the cell
    np.testing.assert_allclose(vacuum_widths(h2o), np.array([9.0, 10.0, 11.0]) - extent, atol=1e-12)
    assert is_molecule_in_box(h2o, 5.0)
    assert not is_molecule_in_box(h2o, 9.5)


def test_triclinic_cell_uses_plane_spacing():
    # one atom: the empty slab is the whole spacing of the lattice planes, V / |a x b| along c
    cell = np.array([[5.0, 0.0, 0.0], [2.0, 6.0, 0.0], [1.0, 1.5, 7.0]])
    atoms = Atoms('Ar', positions=[[1.0, 2.0, 3.0]], cell=cell, pbc=True)
    volume = abs(np.linalg.det(cell))
    expected = [
        volume / np.linalg.norm(np.cross(cell[1], cell[2])),
        volume / np.linalg.norm(np.cross(cell[2], cell[0])),
        volume / np.linalg.norm(np.cross(cell[0], cell[1])),
    ]
    np.testing.assert_allclose(vacuum_widths(atoms), expected, rtol=1e-12)


def test_bulk_slab_and_open_boundaries():
    silicon = bulk('Si', 'diamond', a=5.43, cubic=True)
    assert vacuum_widths(silicon).max() == pytest.approx(5.43 / 4)  # (001) planes of diamond are a/4 apart
    assert not is_molecule_in_box(silicon, 2.0)
    slab = fcc111('Pt', size=(2, 2, 3), vacuum=6.0)
    assert np.isinf(vacuum_widths(slab)[2])  # ASE's slab is open along z
    slab.pbc = True
    widths = vacuum_widths(slab)
    assert widths[2] == pytest.approx(12.0)  # 6 Å on each side
    assert widths[:2].max() < 3.0
    assert not is_molecule_in_box(slab, 5.0)
    gas = molecule('CH4')  # no cell, no pbc
    assert np.all(np.isinf(vacuum_widths(gas)))
    assert is_molecule_in_box(gas, 100.0)
    water = solvate(molecule('H2O2'), n_waters=30, seed=0)
    assert not is_molecule_in_box(water, 2.0)  # a liquid has no empty slab
