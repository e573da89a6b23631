"""Training: offsets, splits, determinism, checkpoint resume, report, and accuracy on the DFT water data."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlff.core.models import Potential
from aiida_mlff.core.training import evaluate_metrics, split_indices, train

pytestmark = pytest.mark.usefixtures('one_thread')


DATA = Path(__file__).parents[1] / 'data' / 'h2o_pbe_30ry.extxyz'


def _emt_frames(n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule('H2O')
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def _weights(pot):
    return {k: v.clone() for k, v in pot.state_dict().items()}


OPTIONS = {
    'epochs': 6,
    'batch_size': 8,
    'validation_fraction': 0.25,
    'seed': 3,
    'polish_steps': 0,
    'energy_weight': 1.0,
}


def test_split_is_seeded_and_disjoint():
    train_idx, val_idx = split_indices(50, 0.2, seed=1)
    assert len(val_idx) == 10
    assert len(train_idx) == 40
    assert not set(train_idx) & set(val_idx)
    again = split_indices(50, 0.2, seed=1)
    assert (again[1] == val_idx).all()
    assert not (split_indices(50, 0.2, seed=2)[1] == val_idx).all()


def test_report_offsets_and_loss_decrease():
    frames = _emt_frames()
    pot = Potential.build(['H', 'O'], committee=2, seed=0)
    report = train(pot, frames, **{**OPTIONS, 'epochs': 15})
    curve = report['learning_curve']
    assert len(curve) == report['epochs_run'] == 15
    assert curve[-1]['train_loss'] < curve[0]['train_loss']
    for key in ('energy_rmse_meV_per_atom', 'force_mae_meV_per_A', 'force_rmse_meV_per_A'):
        assert report['validation'][key] > 0
    assert set(report['validation']['per_element']) == {'H', 'O'}
    assert report['train']['n_structures'] + report['validation']['n_structures'] == len(frames)
    # best weights are restored: the validation loss of the returned model is the best one seen
    assert report['best_epoch'] == 1 + int(np.argmin([c['validation_loss'] for c in curve]))
    assert pot.metadata['metrics']['validation'] == report['validation']
    assert torch.all(pot.feature_std > 0)


def test_deterministic_and_resume(tmp_path):
    frames = _emt_frames()
    straight = Potential.build(['H', 'O'], seed=5)
    train(straight, frames, **OPTIONS)

    again = Potential.build(['H', 'O'], seed=5)
    train(again, frames, **OPTIONS)
    for k, v in _weights(straight).items():
        assert torch.equal(v, again.state_dict()[k]), k

    checkpoint = tmp_path / 'train.ckpt'
    interrupted = Potential.build(['H', 'O'], seed=5)
    first = train(interrupted, frames, **OPTIONS, checkpoint=checkpoint, checkpoint_every=2, stop_after=3)
    assert not first['finished']
    assert first['epochs_run'] == 3
    assert checkpoint.exists()
    resumed = Potential.build(['H', 'O'], seed=5)  # a fresh process would start from scratch like this
    report = train(resumed, frames, **OPTIONS, checkpoint=checkpoint)
    assert report['finished']
    assert report['epochs_run'] == OPTIONS['epochs']
    for k, v in _weights(straight).items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-7, rtol=0), k


def test_rejects_unlabelled_and_unknown_options():
    frames = _emt_frames(3)
    pot = Potential.build(['H', 'O'])
    with pytest.raises(TypeError, match='unknown training options'):
        train(pot, frames, learningrate=1.0)
    bare = molecule('H2O')
    with pytest.raises(ValueError, match='no energy and forces'):
        train(pot, [bare, *frames], epochs=1)


@pytest.mark.skipif(not DATA.exists(), reason='DFT water data not generated')
def test_accuracy_on_dft_water():
    """A short training on 80% of the pw.x data reaches a meaningful accuracy on the held-out 20%."""
    frames = ase.io.read(DATA, index=':')
    assert len(frames) >= 200
    train_idx, test_idx = split_indices(len(frames), 0.2, seed=0)
    pot = Potential.build(['H', 'O'], seed=0)
    options = {'epochs': 100, 'batch_size': 16, 'learning_rate': 1e-2, 'energy_weight': 100.0, 'polish_steps': 15}
    train(pot, [frames[k] for k in train_idx], seed=0, **options)
    metrics = evaluate_metrics(pot, [frames[k] for k in test_idx])
    assert metrics['force_mae_meV_per_A'] < 150.0
    assert metrics['energy_mae_meV_per_atom'] < 10.0


def test_precomputed_jacobians_reproduce_autograd_loss():
    """The fast path (stored descriptor Jacobians) gives the same loss as differentiating the descriptor."""
    from aiida_mlff.core import training

    frames = _emt_frames(6)
    pot = Potential.build(['H', 'O'], committee=2, dtype='float64')
    items = training._prepare(frames, pot.cutoff, pot.dtype, pot.device)
    training.initialise_statistics(pot, items)
    direct = training._loss(pot, items, 1.0, 1.0)
    grads = torch.autograd.grad(direct, list(pot.parameters()))
    training._precompute(pot, items)
    assert items[0].jacobian is not None
    fast = training._loss(pot, items, 1.0, 1.0)
    assert abs(float(direct - fast)) < 1e-10 * float(direct)
    for a, b in zip(grads, torch.autograd.grad(fast, list(pot.parameters())), strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
