"""Tests for batches of structures and neighbour lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from aiida_mlff.core.atoms import AtomsBatch, neighbor_list, pair_vectors


def _sorted_distances(d):
    return np.sort(np.asarray(d))


@pytest.fixture
def frames():
    water = molecule('H2O')
    water.center(vacuum=3.0)
    water.pbc = False
    silicon = bulk('Si', 'diamond', a=5.43) * (2, 1, 1)
    silicon.rattle(0.05, seed=1)
    slab = bulk('Cu', 'fcc', a=3.6, cubic=True) * (2, 2, 1)
    slab.pbc = [True, True, False]
    slab.rattle(0.05, seed=2)
    return [water, silicon, slab]


def test_round_trip(frames):
    batch = AtomsBatch.from_atoms(frames)
    assert batch.n_systems == 3
    assert batch.counts.tolist() == [len(f) for f in frames]
    assert batch.positions.dtype == torch.float64
    assert torch.all(batch.batch[1:] >= batch.batch[:-1])
    back = batch.to_atoms()
    for a, b in zip(frames, back, strict=False):
        assert np.allclose(a.positions, b.positions)
        assert (a.numbers == b.numbers).all()
        assert (a.pbc == b.pbc).all()
    single = batch.to(dtype=torch.float32)
    assert single.positions.dtype == torch.float32
    assert single.numbers.dtype == torch.int64


@pytest.mark.parametrize('cutoff', [2.5, 4.0])
def test_neighbor_list_matches_ase(frames, cutoff):
    batch = AtomsBatch.from_atoms(frames)
    nbrs = neighbor_list(batch, cutoff)
    vectors = pair_vectors(batch, nbrs)
    distances = torch.linalg.norm(vectors, dim=1).numpy()
    assert (distances <= cutoff + 1e-9).all()
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
    for s, frame in enumerate(frames):
        ref = ase_neighbor_list('d', frame, cutoff)
        mask = (nbrs.i.numpy() >= offsets[s]) & (nbrs.i.numpy() < offsets[s + 1])
        assert np.allclose(_sorted_distances(distances[mask]), _sorted_distances(ref))
        # both directions of every pair are present
        assert mask.sum() % 2 == 0
        assert (nbrs.j.numpy()[mask] >= offsets[s]).all()
        assert (nbrs.j.numpy()[mask] < offsets[s + 1]).all()


def test_pair_vectors_are_differentiable():
    atoms = bulk('Si', 'diamond', a=5.43)
    atoms.rattle(0.05, seed=3)
    batch = AtomsBatch.from_atoms(atoms)
    nbrs = neighbor_list(batch, 3.0)
    batch.positions.requires_grad_(True)
    batch.cell.requires_grad_(True)
    vectors = pair_vectors(batch, nbrs)
    (vectors**2).sum().backward()
    assert batch.positions.grad is not None
    assert torch.isfinite(batch.positions.grad).all()
    # the sum of squared pair vectors depends on the cell through periodic images
    assert batch.cell.grad.abs().sum() > 0


def test_open_boundaries_without_cell():
    atoms = Atoms('H3', positions=[[0, 0, 0], [0.8, 0, 0], [5.0, 0, 0]])
    batch = AtomsBatch.from_atoms(atoms)
    nbrs = neighbor_list(batch, 1.0)
    assert sorted(zip(nbrs.i.tolist(), nbrs.j.tolist(), strict=False)) == [(0, 1), (1, 0)]
    assert torch.all(nbrs.shifts == 0)
