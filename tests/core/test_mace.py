"""MACE (mace-torch) as an architecture: trained by our force-matching loop, saved, and run in our batched MD.

The physics suite every architecture passes is ``test_contract.py``; these tests cover what is particular to
training and running a MACE model through our code. Skipped where mace-torch is not installed.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from aiida_mlff.core.architectures import ArchitectureError, build
from aiida_mlff.core.md.runner import simulate
from aiida_mlff.core.potential_io import load_potential
from aiida_mlff.core.training import evaluate_metrics, split_indices, train

pytestmark = pytest.mark.usefixtures('one_thread')
DATA = Path(__file__).parents[1] / 'data' / 'h2o_pbe_30ry.extxyz'
SMALL = {'cutoff': 4.0, 'channels': 8, 'max_ell': 2, 'correlation': 2, 'radial_mlp': [16]}


def test_missing_library_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'mace' else real(name, *a))
    with pytest.raises(ArchitectureError, match='needs the mace-torch library'):
        build('mace', elements=['H', 'O'])


@pytest.fixture(scope='module')
def water():
    pytest.importorskip('mace', reason='mace-torch is not installed')
    frames = ase.io.read(DATA, index=':')
    train_idx, test_idx = split_indices(len(frames), 0.2, seed=0)
    return [frames[k] for k in train_idx[:40]], [frames[k] for k in test_idx[:30]]


def test_trains_on_dft_water_and_round_trips(water, tmp_path):
    """Our loop (reference energies, scale, autograd forces) lowers the held-out force error of MACE severalfold;
    the trained committee saves and loads with identical predictions."""
    training, held_out = water
    pot = build('mace', elements=['H', 'O'], committee=2, seed=0, dtype='float64', **SMALL)
    before = evaluate_metrics(pot, held_out)['force_mae_meV_per_A']
    report = train(pot, training, seed=0, epochs=8, batch_size=8, learning_rate=1e-2, polish_steps=0)
    after = evaluate_metrics(pot, held_out)
    assert after['force_mae_meV_per_A'] < before / 3, (before, after['force_mae_meV_per_A'])
    assert after['energy_mae_meV_per_atom'] < 100.0
    assert report['validation']['force_mae_meV_per_A'] > 0
    again = load_potential(pot.save(tmp_path / 'mace.pt'))
    assert torch.equal(again.reference_energies, pot.reference_energies)
    assert evaluate_metrics(again, held_out) == after


def test_batched_md_conserves_energy(water):
    """Two replicas of different molecules advance in one batch in our engine; NVE energy is conserved."""
    pot = build('mace', elements=['H', 'O'], seed=1, dtype='float64', **SMALL)
    train(pot, water[0][:16], seed=0, epochs=3, batch_size=8, polish_steps=0)
    replicas = [water[1][0].copy(), water[1][1].copy()]
    result = simulate(pot, replicas, ensemble='nve', timestep=0.25, steps=200, stride=20, temperature=300.0, seed=0)
    assert all(status == 'ok' for status in result.status)
    total = result.total_energy  # (frames, replicas) eV
    assert total.shape[1] == 2
    assert np.abs(total - total[0]).max() < 2e-3  # eV, 200 steps of 0.25 fs
