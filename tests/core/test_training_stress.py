"""The stress (virial) term of training: exact model stress in the loss, held-out gains, no change without stress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

from aiida_mlff.core import training
from aiida_mlff.core.models import Potential
from aiida_mlff.core.sampling import strain
from aiida_mlff.core.training import evaluate_metrics, train

pytestmark = pytest.mark.usefixtures('one_thread')

SMALL = {'cutoff': 4.5, 'angular_cutoff': 3.5, 'n_radial': 6, 'n_angular': 2, 'hidden': (16, 16)}


def _triclinic_cual(seed: int):
    """Cu3Al (fcc, 4 atoms) in a cell sheared by up to 8 % per component: triclinic."""
    atoms = bulk('Cu', 'fcc', a=3.62, cubic=True)
    atoms.symbols[[1]] = 'Al'
    shear = np.eye(3) + 0.08 * np.random.default_rng(seed).uniform(-1, 1, (3, 3))
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    return atoms


def _label(atoms, stress: bool = True):
    """Freeze EMT energy [eV], forces [eV/Å] and (optionally) the exact stress [eV/Å^3] in a SinglePointCalculator."""
    atoms.calc = EMT()
    results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces()}
    if stress:
        results['stress'] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _strained_frames(base, n: int, seed: int, stress: bool = True):
    frames = strain(base, n, max_strain=0.04, seed=seed, rattle_stdev=0.08)
    return [_label(a, stress) for a in frames]


def _molecules(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule('H2O')
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(_label(atoms, stress=False))
    return frames


def _mixed_chunk():
    """Two stressed triclinic cells (4 and 8 atoms), a molecule and a periodic cell whose stress is NaN."""
    base = _triclinic_cual(0)
    big = base.repeat((2, 1, 1))
    big.positions += np.random.default_rng(1).normal(scale=0.08, size=big.positions.shape)
    nan = _strained_frames(base, 1, seed=5)[0]
    nan.calc.results['stress'] = np.full(6, np.nan)
    water = molecule('H2O')
    water.symbols = 'CuAl2'  # elements of the model; EMT labels it all the same
    return [*_strained_frames(base, 1, seed=3), _label(big), _label(water, stress=False), nan]


def _prepared(committee: int):
    pot = Potential.build(['Al', 'Cu'], committee=committee, seed=2, dtype='float64', **SMALL)
    items = training._prepare(_mixed_chunk(), pot.cutoff, pot.dtype, pot.device)
    training.initialise_statistics(pot, items)
    return pot, items


def test_loss_stress_is_the_model_stress_and_differentiable():
    """Both training paths give every member's stress; their mean is ``evaluate(stress=True)`` to round-off."""
    pot, items = _prepared(committee=2)
    assert [f.stress is not None for f in items] == [True, True, False, False]  # molecule and NaN: no label
    batch, nbrs, _, _ = training._collate(items)
    reference = pot.evaluate(batch, nbrs, stress=True)['stress'][:2]
    assert float(reference.abs().max()) > 1e-3
    _, _, autograd = training._predict(pot, items, batch, nbrs, stress=True)
    training._precompute(pot, items)
    _, _, stored = training._predict(pot, items, batch, nbrs, stress=True)
    assert stored.shape == (2, 4, 3, 3)
    torch.testing.assert_close(stored[:, :2], autograd[:, :2], rtol=0, atol=1e-12)
    torch.testing.assert_close(stored[:, :2].mean(0), reference, rtol=0, atol=1e-12)
    assert (
        float((stored[0, :2] - stored[1, :2]).detach().abs().max()) > 1e-4
    )  # members differ: per-member, not the mean

    # gradient in the weights against a central finite difference along a random direction
    params = list(pot.parameters())
    probe = torch.randn(stored[:, :2].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direction = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(k), dtype=p.dtype) for k, p in enumerate(params)
    ]
    grads = torch.autograd.grad((stored[:, :2] * probe).sum(), params, allow_unused=True)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True) if g is not None)
    h, values = 1e-5, []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * h * d)
        values.append(float((training._predict(pot, items, batch, nbrs, stress=True)[2][:, :2] * probe).sum().detach()))
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * h * d)
    assert abs(analytic) > 1e-3
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-6)


def test_stress_term_of_the_loss():
    """The stress term is the per-atom virial error of the labelled frames only, divided by the chunk size."""
    pot, items = _prepared(committee=1)
    training._precompute(pot, items)
    batch, nbrs, _, _ = training._collate(items)
    model = pot.evaluate(batch, nbrs, stress=True)['stress'].detach().numpy()
    expected = 0.0
    for k in (0, 1):  # the stressed frames
        volume, n_atoms = abs(np.linalg.det(batch.cell[k].numpy())), int(batch.counts[k])
        expected += np.mean(((model[k] - items[k].stress.numpy()) * volume / n_atoms) ** 2) / len(items)
    plain = float(training._loss(pot, items, 1.0, 1.0))
    assert expected > 0
    assert float(training._loss(pot, items, 1.0, 1.0, 2.5)) == pytest.approx(plain + 2.5 * expected, rel=1e-10)


def test_stress_term_lowers_the_held_out_stress_error():
    """EMT Cu3Al in strained, rattled triclinic cells: the same training with the stress term predicts the exact
    stress of held-out structures better, and the metrics report it (checked against the ASE calculator)."""
    base = _triclinic_cual(4)
    frames, held_out = _strained_frames(base, 32, seed=104), _strained_frames(base, 16, seed=204)
    options = {'epochs': 40, 'batch_size': 8, 'validation_fraction': 0.25, 'seed': 4, 'polish_steps': 10}
    errors = {}
    for weight in (0.0, 1.0):
        pot = Potential.build(['Al', 'Cu'], seed=4, dtype='float64', **SMALL)
        report = train(pot, frames, stress_weight=weight, **options)
        assert report['train']['n_structures_with_stress'] == 24
        assert report['validation']['n_structures_with_stress'] == 8
        metrics = evaluate_metrics(pot, held_out)
        errors[weight] = metrics['stress_mae_eV_per_A3']
        # referee of the metric: the potential as an ASE calculator, Voigt components
        calc = pot.calculator()
        diffs = []
        for atoms in held_out:
            copy = atoms.copy()
            copy.calc = calc
            diffs.append(copy.get_stress() - atoms.calc.results['stress'])
        diffs = np.array(diffs)
        assert metrics['stress_mae_eV_per_A3'] == pytest.approx(np.abs(diffs).mean(), rel=1e-9)
        assert metrics['stress_rmse_eV_per_A3'] == pytest.approx(np.sqrt((diffs**2).mean()), rel=1e-9)
        assert metrics['stress_mae_GPa'] == pytest.approx(metrics['stress_mae_eV_per_A3'] / GPa, rel=1e-12)
    print(f'held-out stress MAE [eV/Å^3]: without term {errors[0.0]:.5f}, with term {errors[1.0]:.5f}')
    assert errors[1.0] < 0.7 * errors[0.0]


def _same_training(frames_a, frames_b, weight_a: float, weight_b: float) -> dict:
    """Train twice from the same seed and assert identical curves and weights; return the first report."""
    options = {'epochs': 4, 'batch_size': 4, 'validation_fraction': 0.25, 'seed': 1, 'polish_steps': 2}
    reports, states = [], []
    for frames, weight in ((frames_a, weight_a), (frames_b, weight_b)):
        elements = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
        pot = Potential.build(elements, committee=2, seed=1, dtype='float64', **SMALL)
        reports.append(train(pot, frames, stress_weight=weight, **options))
        states.append(pot.state_dict())
    assert [c['train_loss'] for c in reports[0]['learning_curve']] == [
        c['train_loss'] for c in reports[1]['learning_curve']
    ]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    return reports[0]


def test_frames_without_stress_train_identically():
    """Molecules (no stress) train bit for bit the same with any stress weight; their metrics have no stress keys."""
    report = _same_training(_molecules(), _molecules(), 0.0, 5.0)
    assert 'stress_mae_eV_per_A3' not in report['train']
    assert 'n_structures_with_stress' not in report['validation']


def test_nan_stress_and_zero_weight_change_nothing():
    """Periodic frames whose stress is NaN train as frames without stress (weight 5), and so do stressed frames
    with stress_weight 0."""
    base = _triclinic_cual(1)
    with_stress = _strained_frames(base, 8, seed=7)
    nan = _strained_frames(base, 8, seed=7)
    for atoms in nan:
        atoms.calc.results['stress'] = np.full(6, np.nan)
    _same_training(nan, _strained_frames(base, 8, seed=7, stress=False), 5.0, 0.0)
    _same_training(with_stress, _strained_frames(base, 8, seed=7, stress=False), 0.0, 0.0)
