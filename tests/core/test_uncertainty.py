"""Calibrated committee uncertainty and the last-layer posterior of one model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlff.core import uncertainty
from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.models import Potential, atom_force_deviation
from aiida_mlff.core.training import split_indices, train

pytestmark = pytest.mark.usefixtures('one_thread')

OPTIONS = {'epochs': 40, 'batch_size': 8, 'validation_fraction': 0.25, 'seed': 0, 'polish_steps': 10}


def _emt_frames(n: int, rattle: float, seed: int) -> list:
    """H2O with EMT labels, positions rattled by ``rattle`` [Å]."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule('H2O')
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


@pytest.fixture(scope='module')
def trained():
    """A two-member committee trained with uncertainty='both', and its training frames."""
    torch.set_num_threads(1)
    frames = _emt_frames(40, 0.05, seed=0)
    pot = Potential.build(['H', 'O'], cutoff=4.0, angular_cutoff=3.0, hidden=(8, 8), committee=2, seed=0)
    report = train(pot, frames, uncertainty='both', **OPTIONS)
    return pot, frames, report


# ----------------------------------------------------------------------------------------------- calibration
def _synthetic(n_atoms: int = 20000, scale: float = 2.5, seed: int = 0):
    """Per-atom sigma [eV/Å] and errors whose components are N(0, (scale sigma)^2 / 3)."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.05, 0.5, n_atoms)
    errors = rng.normal(size=(n_atoms, 3)) * (scale * sigma / math.sqrt(3))[:, None]
    return sigma, errors


def test_scale_and_coverage_recovered_on_synthetic_errors():
    sigma, errors = _synthetic(scale=2.5)
    assert uncertainty.fit_scale(sigma, errors) == pytest.approx(2.5, rel=0.02)
    calibration = uncertainty.calibrate(sigma, errors, n_frames=100)
    assert calibration.scale == pytest.approx(2.5, rel=0.02)
    assert calibration.coverage_95 == pytest.approx(0.95, abs=0.01)
    assert calibration.coverage_95_raw < 0.65  # the raw sigma is 2.5 times too small
    assert calibration.spearman > 0.3  # larger sigma, larger errors (noisy: one draw per atom)
    assert (calibration.n_frames, calibration.n_atoms) == (100, 20000)
    # a scale fitted elsewhere is only tested here
    other = uncertainty.calibrate(sigma, errors, n_frames=100, scale=1.0)
    assert other.scale == 1.0
    assert other.coverage_95 == other.coverage_95_raw
    assert set(calibration.as_dict()) == {'scale', 'spearman', 'coverage_95', 'coverage_95_raw', 'n_frames', 'n_atoms'}


def test_spearman_and_apply():
    a = np.arange(1.0, 50.0)
    assert uncertainty.spearman(a, a**3 + 2) == pytest.approx(1.0)
    assert uncertainty.spearman(a, -np.exp(a / 10)) == pytest.approx(-1.0)
    assert math.isnan(uncertainty.spearman(a, np.ones_like(a)))
    assert uncertainty.calibrate(np.ones(1), np.ones((1, 3)), 1).as_dict()['spearman'] is None
    calibration = uncertainty.calibrate(*_synthetic(n_atoms=500), n_frames=5)
    deviation = np.array([0.1, 0.2])
    expected = calibration.scale * deviation
    assert np.allclose(calibration.apply(deviation), expected)
    assert np.allclose(uncertainty.apply_calibration(deviation, calibration.as_dict()), expected)
    assert np.allclose(uncertainty.apply_calibration(deviation, calibration.scale), expected)


# --------------------------------------------------------------------------------------------------- committee
def test_deviation_is_that_of_max_force_deviation(trained):
    pot, frames, _ = trained
    out = pot.evaluate(AtomsBatch.from_atoms(frames[:3], dtype=pot.dtype))
    per_atom = atom_force_deviation(out['member_forces']).reshape(3, 3)
    assert torch.allclose(per_atom.max(1).values, out['max_force_deviation'])


def test_training_stores_calibrations(trained):
    pot, frames, report = trained
    n_val = len(split_indices(len(frames), OPTIONS['validation_fraction'], OPTIONS['seed'])[1])
    for key in ('calibration', 'calibration_last_layer', 'calibration_both'):
        entry = pot.metadata[key]
        assert entry == report['calibration'][key]
        assert entry['n_frames'] == n_val
        assert entry['n_atoms'] == 3 * n_val
        assert entry['scale'] > 0
        assert 0 <= entry['coverage_95'] <= 1
    assert [p['member'] for p in pot.metadata['last_layer']['members']] == [0, 1]
    _, val_idx = split_indices(len(frames), OPTIONS['validation_fraction'], OPTIONS['seed'])
    again = uncertainty.calibrate_committee(pot, [frames[k] for k in val_idx])
    assert again.as_dict() == pytest.approx(pot.metadata['calibration'], nan_ok=True)


def test_committee_training_drops_a_parents_posterior(trained):
    pot = copy.deepcopy(trained[0])
    train(pot, trained[1], **{**OPTIONS, 'epochs': 2, 'polish_steps': 0})
    assert 'calibration' in pot.metadata
    assert not {'last_layer', 'calibration_last_layer', 'calibration_both'} & set(pot.metadata)
    assert uncertainty.load_posteriors(pot) == []


# -------------------------------------------------------------------------------------------------- last layer
def test_last_layer_features_reproduce_the_member(trained):
    pot, frames, _ = trained
    batch = AtomsBatch.from_atoms(frames[:4], dtype=torch.float64)
    full = pot.evaluate(batch)  # float32
    single = uncertainty.member_potential(pot, 1, dtype=torch.float64)
    out = single.evaluate(batch)
    assert torch.allclose(out['energy'].float(), full['energies'][1], rtol=0, atol=1e-3)
    assert torch.allclose(out['forces'].float(), full['member_forces'][1], rtol=0, atol=1e-3)
    phi, jac = uncertainty.structure_features(single, batch, jacobian=True)
    theta = uncertainty.last_layer_weights(single)
    assert torch.allclose(phi @ theta, out['energy'], rtol=0, atol=1e-9)
    assert torch.allclose(-jac @ theta, out['forces'], rtol=0, atol=1e-9)


def test_variance_is_larger_far_from_the_training_data(trained):
    pot, frames, _ = trained
    posterior = uncertainty.load_posteriors(pot)[0]
    near = posterior.predict(pot, frames[:10])
    far = posterior.predict(pot, _emt_frames(10, 0.3, seed=1))
    assert np.median(far['energy_variance']) > 5 * np.median(near['energy_variance'])
    assert np.median(far['force_variance']) > 5 * np.median(near['force_variance'])
    assert np.all(near['force_sigma'] ** 2 >= near['force_variance'])


def test_force_variance_matches_finite_difference_jacobian(trained):
    pot, frames, _ = trained
    posterior = uncertainty.load_posteriors(pot)[0]
    single = uncertainty.member_potential(pot, 0, dtype=torch.float64)
    atoms = frames[3]
    batch = AtomsBatch.from_atoms(atoms, dtype=torch.float64)
    _, jac = uncertainty.structure_features(single, batch, jacobian=True)
    step = 1e-5  # Å
    jac_fd = torch.zeros_like(jac)
    for i in range(len(atoms)):
        for c in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, c] += sign * step
                shifted.append(uncertainty.structure_features(single, AtomsBatch.from_atoms(moved))[0][0])
            jac_fd[i, c] = (shifted[0] - shifted[1]) / (2 * step)
    assert torch.allclose(jac, jac_fd, rtol=1e-6, atol=1e-7)
    cov = torch.as_tensor(posterior.covariance)
    expected = torch.einsum('ncd,de,nce->n', jac_fd, cov, jac_fd).numpy()
    predicted = posterior.predict(single, [atoms])['force_variance']
    assert np.allclose(predicted, expected, rtol=1e-5)


def test_posterior_survives_save_and_load(trained, tmp_path):
    pot, frames, _ = trained
    loaded = Potential.load(pot.save(tmp_path / 'pot.pt'))
    before, after = uncertainty.load_posteriors(pot), uncertainty.load_posteriors(loaded)
    assert len(after) == 2
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.covariance, b.covariance)
        assert a.force_noise_variance == b.force_noise_variance
    assert loaded.metadata['calibration_last_layer'] == pot.metadata['calibration_last_layer']
    p_before = before[1].predict(pot, frames[:3])
    p_after = after[1].predict(loaded, frames[:3])
    assert np.allclose(p_before['force_variance'], p_after['force_variance'])


def test_posterior_refuses_other_weights(trained):
    pot, _, _ = trained
    other = Potential.build(['H', 'O'], cutoff=4.0, angular_cutoff=3.0, hidden=(8, 8), committee=2, seed=7)
    with pytest.raises(ValueError, match='does not belong'):
        uncertainty.load_posteriors(pot)[0].check(other)


def test_predict_with_the_member_alone(trained):
    pot, frames, _ = trained
    posterior = uncertainty.load_posteriors(pot)[1]
    alone = posterior.predict(uncertainty.member_potential(pot, 1), frames[:3])
    within = posterior.predict(pot, frames[:3])
    for key in ('energy', 'energy_variance', 'forces', 'force_variance', 'force_sigma'):
        assert np.allclose(alone[key], within[key])
    with pytest.raises(ValueError, match='does not belong'):
        posterior.check(uncertainty.member_potential(pot, 0))


def test_jacobian_without_vectorised_backward(trained, monkeypatch):
    """Where autograd cannot vectorise the backward pass, the columns go one by one, to the same Jacobian."""
    pot, frames, _ = trained
    single = uncertainty.member_potential(pot, 0, dtype=torch.float64)
    batch = AtomsBatch.from_atoms(frames[:3])
    _, vectorised = uncertainty.structure_features(single, batch, jacobian=True)
    grad = torch.autograd.grad

    def refuse(*args, **kwargs):
        if kwargs.get('is_grads_batched'):
            raise RuntimeError('no batching rule')
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, 'grad', refuse)
    _, looped = uncertainty.structure_features(single, batch, jacobian=True)
    assert torch.allclose(vectorised, looped, rtol=0, atol=1e-12)
