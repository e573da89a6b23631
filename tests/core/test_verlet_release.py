"""A Verlet rebuild lets go of what evaluators cached on the list it replaces (issue 18: peak memory of a rebuild)."""

from __future__ import annotations

import pytest
import torch

from aiida_mlff.core.analytic import water_box
from aiida_mlff.core.atoms import AtomsBatch, neighbor_list
from aiida_mlff.core.md import VerletList
from aiida_mlff.core.models import Potential

CACHES = {'torch': '_half_list', 'auto': '_pair_layout'}


def _pairs(nbrs) -> set:
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(nbrs.i, nbrs.j, nbrs.shifts.round(), strict=True)}


@pytest.mark.parametrize('kernel', ['torch', 'auto'])
def test_rebuild_drops_the_caches_of_the_old_list(kernel):
    pot = Potential.build(['H', 'O'], committee=1, seed=0, hidden=(8,), dtype='float64')
    pot.kernel = kernel
    batch = AtomsBatch.from_atoms(water_box(32, seed=3), dtype=torch.float64)
    vlist = VerletList(pot.cutoff, skin=0.6)
    old = vlist.update(batch)
    before = pot.evaluate(batch, old)
    cache = CACHES[kernel]
    if kernel == 'auto' and cache not in old.__dict__:
        pytest.skip('compiled kernels unavailable: no sorted layout is cached')
    assert cache in old.__dict__
    old_pairs = _pairs(old)
    start = batch.positions.clone()
    moved = AtomsBatch(start.clone(), batch.numbers, batch.cell, batch.pbc, batch.batch)
    moved.positions[0, 0] += 0.4  # more than half the skin: a rebuild is due
    new = vlist.update(moved)
    assert new is not old
    assert vlist.n_builds == 2
    assert cache not in old.__dict__  # released before the new list was built
    assert _pairs(old) == old_pairs  # the old pairs themselves are untouched for whoever still holds them
    assert _pairs(new) == _pairs(neighbor_list(moved, pot.cutoff + 0.6))
    fresh = pot.evaluate(moved, neighbor_list(moved, pot.cutoff))
    out = pot.evaluate(moved, new)
    torch.testing.assert_close(out['energy'], fresh['energy'])
    torch.testing.assert_close(out['forces'], fresh['forces'])
    again = pot.evaluate(AtomsBatch(start, batch.numbers, batch.cell, batch.pbc, batch.batch), old)
    torch.testing.assert_close(again['forces'], before['forces'])  # the cache is rebuilt on demand
