"""Delta learning on GFN2-xTB: the tblite baseline, label subtraction, the ``xtb-delta`` architecture and its training.

Referees: central differences of the baseline energy (forces, and stress by finite strain on a triclinic cell),
tblite's own ASE calculator, the correction and the baseline evaluated apart (the delta model is their exact sum),
and the pw.x PBE water frames of ``tests/data`` (a delta model beats the baseline alone and a plain BP model).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

pytest.importorskip('tblite.interface', reason='tblite is not installed')

from aiida_mlff.core.architectures import build
from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.baselines import (
    BaselineError,
    DeltaPotential,
    XtbBaseline,
    build_xtb_delta,
    subtract_baseline,
)
from aiida_mlff.core.contract import StoredPotential
from aiida_mlff.core.models import Potential
from aiida_mlff.core.options import TRAIN, OptionsError
from aiida_mlff.core.potential_io import load_potential
from aiida_mlff.core.training import evaluate_metrics, split_indices, train

from .probes import finite_strain_stress

DATA = Path(__file__).parents[1] / 'data' / 'h2o_pbe_30ry.extxyz'
SMALL = {'cutoff': 3.5, 'angular_cutoff': 3.0, 'n_radial': 4, 'n_angular': 2, 'hidden': [8]}


@pytest.fixture(autouse=True)
def one_openmp_thread(one_thread):
    """tblite's OpenMP threads oversubscribe the shared cores (10x slower): one thread while a test runs."""
    try:
        gomp = ctypes.CDLL('libgomp.so.1')
    except OSError:
        yield
        return
    threads = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(1)
    yield
    gomp.omp_set_num_threads(threads)


@pytest.fixture(scope='module')
def baseline():
    return XtbBaseline(accuracy=0.01)


def _rattled(name: str, seed: int = 1) -> Atoms:
    atoms = molecule(name)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _crystal() -> Atoms:
    """A water molecule in a triclinic periodic cell (about 5 Å)."""
    atoms = _rattled('H2O', seed=2)
    atoms.set_cell(np.array([[1.0, 0.0, 0.0], [0.1, 1.0, 0.0], [-0.08, 0.13, 1.03]]) * 5.0)
    atoms.pbc = True
    atoms.center()
    return atoms


def _energy(baseline: XtbBaseline, atoms: Atoms) -> float:
    return float(baseline.evaluate(atoms, forces=False)['energy'][0])


@pytest.mark.parametrize('structure', ['H2O', 'H2O2', 'crystal'])
def test_baseline_forces_are_minus_the_energy_gradient(baseline, structure):
    atoms = _crystal() if structure == 'crystal' else _rattled(structure)
    forces = baseline.evaluate(atoms)['forces'].numpy()
    assert forces.shape == (len(atoms), 3)
    h = 1e-4
    for atom in range(len(atoms)):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            numeric = -(_energy(baseline, plus) - _energy(baseline, minus)) / (2 * h)
            assert abs(numeric - forces[atom, axis]) < 2e-6, (structure, atom, axis)


def test_baseline_stress_is_the_finite_strain_derivative_and_matches_tblite_ase(baseline):
    from tblite.ase import TBLite

    atoms = _crystal()
    stress = baseline.evaluate(atoms, stress=True)['stress'][0].numpy()
    numeric = finite_strain_stress(lambda strained: _energy(baseline, strained), atoms, h=1e-5)
    assert np.abs(numeric - stress).max() < 1e-7
    assert np.abs(stress - stress.T).max() < 1e-12
    atoms.calc = TBLite(method='GFN2-xTB', accuracy=0.01, verbosity=0)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), stress, atol=1e-12)
    assert abs(atoms.get_potential_energy() - _energy(baseline, atoms)) < 1e-9


def test_batch_follows_dtype_and_has_no_stress_without_periodicity(baseline):
    frames = [_rattled('H2O2'), _crystal(), _rattled('H2O', seed=3)]
    batch = AtomsBatch.from_atoms(frames, dtype=torch.float32)
    out = baseline.evaluate(batch, stress=True)
    assert out['energy'].dtype == torch.float32
    assert out['forces'].shape == (10, 3)
    apart = [baseline.evaluate(atoms, stress=True) for atoms in frames]
    np.testing.assert_allclose(out['energy'].numpy(), [float(a['energy'][0]) for a in apart], rtol=1e-7)
    np.testing.assert_allclose(out['forces'].numpy(), torch.cat([a['forces'] for a in apart]).numpy(), atol=1e-5)
    assert torch.isnan(out['stress'][[0, 2]]).all()  # molecules: no stress (documented NaN)
    assert torch.isfinite(out['stress'][1]).all()
    assert baseline.version.count('.') >= 1
    assert baseline.spec()['method'] == 'GFN2-xTB'


def _openmp_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'openmp')


def test_openmp_threads_follow_the_structure_size_and_are_restored():
    """Small structures run tblite on one OpenMP thread (the ``threads`` option overrides), whatever the process set,
    and the process's thread count is back after the call; the results do not depend on the thread count."""
    from threadpoolctl import threadpool_limits

    by_size, two = XtbBaseline(accuracy=0.01), XtbBaseline(accuracy=0.01, threads=2)
    assert [by_size.threads_for(4), by_size.threads_for(500)] == [1, torch.get_num_threads()]
    assert [two.threads_for(4), two.threads_for(500)] == [2, 2]
    frame = _rattled('H2O2')
    results = {}
    for name, base in (('by size', by_size), ('two', two)):
        seen = []
        real = base._calculator

        def spying(*args, _real=real, _seen=seen):
            key, calc = _real(*args)
            run = calc.singlepoint
            calc.singlepoint = lambda: (_seen.append(_openmp_threads()), run())[1]
            return key, calc

        base._calculator = spying
        with threadpool_limits(limits=3, user_api='openmp'):
            results[name] = base.evaluate(frame)
            assert _openmp_threads() == 3  # restored
        assert seen == [1 if name == 'by size' else 2]
    for key in ('energy', 'forces'):
        torch.testing.assert_close(results['by size'][key], results['two'][key], rtol=0, atol=1e-9)
    with pytest.raises(OptionsError, match=r'baseline\.options\.threads'):
        XtbBaseline(threads=-1)


def test_isolated_boundary_computes_a_boxed_molecule_without_images():
    """``boundary: isolated`` gives a molecule in a periodic box exactly its vacuum values (no stress); the default
    computes the images, which differ a little for a polar molecule in a 7 Å box."""
    boxed = _rattled('H2O2')
    boxed.set_cell([7.0, 7.0, 7.0])
    boxed.center()
    boxed.pbc = True
    vacuum = boxed.copy()
    vacuum.pbc = False
    isolated, periodic = XtbBaseline(accuracy=0.01, boundary='isolated'), XtbBaseline(accuracy=0.01)
    alone = isolated.evaluate(vacuum, stress=True)
    out = isolated.evaluate(boxed, stress=True)
    for key in ('energy', 'forces'):
        torch.testing.assert_close(out[key], alone[key], rtol=0, atol=1e-9)
    assert torch.isnan(out['stress']).all()
    with_images = periodic.evaluate(boxed, stress=True)
    assert 1e-6 < abs(float(with_images['energy'][0] - out['energy'][0])) < 0.05  # eV: the images' interaction
    assert torch.isfinite(with_images['stress']).all()
    with pytest.raises(OptionsError, match=r'baseline\.options\.boundary'):
        XtbBaseline(boundary='open')


def test_clear_errors_for_missing_tblite_failed_scc_and_bad_options(monkeypatch):
    with pytest.raises(BaselineError, match=r'did not converge on structure 0 \(H2O2\)'):
        XtbBaseline(max_iterations=1).evaluate([_rattled('H2O2'), _rattled('H2O')])
    with pytest.raises(OptionsError, match=r'baseline\.options\.temperature: unknown option'):
        XtbBaseline(temperature=300.0)
    with pytest.raises(OptionsError, match=r'baseline\.method'):
        XtbBaseline('PM7')
    monkeypatch.setitem(sys.modules, 'tblite.interface', None)
    with pytest.raises(BaselineError, match='needs the Python package tblite'):
        XtbBaseline()


def _labelled(atoms: Atoms, energy: float, forces: np.ndarray, stress: np.ndarray | None = None) -> Atoms:
    atoms = atoms.copy()
    results = {'energy': energy, 'forces': forces}
    if stress is not None:
        results['stress'] = stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_subtract_baseline_leaves_the_difference(baseline):
    rng = np.random.default_rng(0)
    molecule_, crystal = _rattled('H2O2'), _crystal()
    frames = [
        _labelled(molecule_, -10.0, rng.normal(size=(4, 3))),
        _labelled(crystal, -7.0, rng.normal(size=(3, 3)), rng.normal(size=6) * 0.01),
    ]
    delta = subtract_baseline(frames, baseline)
    for frame, label in zip(delta, frames, strict=True):
        base = baseline.evaluate(label, stress=label.pbc.all())
        assert frame.get_potential_energy() == pytest.approx(label.get_potential_energy() - float(base['energy'][0]))
        np.testing.assert_allclose(frame.get_forces(), label.get_forces() - base['forces'].numpy(), atol=1e-12)
        assert frame.info['baseline'] == 'GFN2-xTB'
        assert frame.info['baseline_tblite'] == baseline.version
        assert frame.info['baseline_energy'] == pytest.approx(float(base['energy'][0]))
    base_stress = baseline.evaluate(crystal, stress=True)['stress'][0].numpy()
    np.testing.assert_allclose(delta[1].get_stress(voigt=False), frames[1].get_stress(voigt=False) - base_stress)
    assert 'stress' not in delta[0].calc.results
    assert frames[0].get_potential_energy() == -10.0  # the labels are untouched


@pytest.fixture(scope='module')
def delta():
    return build(
        'xtb-delta',
        elements=['H', 'O'],
        committee=2,
        seed=3,
        dtype=torch.float64,
        correction={'architecture': 'bp-chiral', **SMALL},
        baseline={'method': 'GFN2-xTB', 'options': {'accuracy': 0.01}},
    )


def test_delta_is_exactly_baseline_plus_correction(delta):
    assert isinstance(delta, DeltaPotential)
    assert isinstance(delta, StoredPotential)
    assert (delta.cutoff, delta.committee_size, delta.elements) == (3.5, 2, ['H', 'O'])
    for frames in ([_rattled('H2O'), _rattled('H2O2')], [_crystal()]):
        batch = AtomsBatch.from_atoms(frames, dtype=torch.float64)
        out = delta.evaluate(batch, stress=True)
        corr = delta.correction.evaluate(batch, stress=True)
        base = delta.baseline.evaluate(batch, stress=True)
        assert torch.equal(out['energy'], corr['energy'] + base['energy'])
        assert torch.equal(out['energies'], corr['energies'] + base['energy'])
        assert torch.equal(out['forces'], corr['forces'] + base['forces'])
        assert torch.equal(out['member_forces'], corr['member_forces'] + base['forces'])
        torch.testing.assert_close(out['stress'], corr['stress'] + base['stress'], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(out['energy_std'], corr['energy_std'])
        assert torch.equal(out['max_force_deviation'], corr['max_force_deviation'])
        assert float(out['energy_std'].min()) > 0


def test_save_load_round_trip(delta, tmp_path):
    delta.metadata = {'note': 'kept'}
    again = load_potential(delta.save(tmp_path / 'delta.pt'))
    assert type(again) is DeltaPotential
    assert again.hyperparameters() == delta.hyperparameters()
    hyper = delta.hyperparameters()
    assert hyper['correction']['architecture'] == 'bp-chiral'
    assert hyper['committee'] == 2
    assert hyper['baseline'] == {'method': 'GFN2-xTB', 'options': delta.baseline.options}
    assert set(delta.state_dict()) == {f'correction.{k}' for k in delta.correction.state_dict()}
    assert again.metadata['baseline'] == {**hyper['baseline'], 'tblite_version': delta.baseline.version}
    assert again.metadata['note'] == 'kept'
    assert again.dtype == torch.float64
    batch = AtomsBatch.from_atoms([_rattled('H2O2'), _crystal()], dtype=torch.float64)
    first, second = delta.evaluate(batch, stress=True), again.evaluate(batch, stress=True)
    for key in ('energy', 'energies', 'forces', 'member_forces', 'energy_std', 'max_force_deviation'):
        assert torch.equal(first[key], second[key]), key
    torch.testing.assert_close(first['stress'], second['stress'], rtol=0, atol=0, equal_nan=True)


def test_builder_checks_its_hyperparameters():
    TRAIN.validate({'model': {'architecture': 'xtb-delta', 'correction': {'hidden': [8]}, 'baseline': {}}})
    with pytest.raises(ValueError, match=r'correction\.cutoff = 4\.0 contradicts cutoff = 3\.5'):
        build_xtb_delta(['H', 'O'], cutoff=3.5, correction={'cutoff': 4.0})
    pot = build_xtb_delta(['H', 'O'], correction={'cutoff': 4.0, 'hidden': [4]}, dtype=torch.float64)
    assert pot.cutoff == 4.0
    # as mlff-run builds it (Potential.build with the job's model): the correction's cutoff is not overridden
    model = {'architecture': 'xtb-delta', 'correction': {'cutoff': 4.0, 'hidden': [4]}}
    assert Potential.build(['H', 'O'], committee=2, **model).cutoff == 4.0
    assert pot.to(torch.float32) is pot  # a module: MD and vibrations move it like any other potential
    assert pot.dtype == torch.float32
    assert pot.evaluate(AtomsBatch.from_atoms(_rattled('H2O')))['forces'].dtype == torch.float32
    with pytest.raises(ValueError, match='cannot itself be an xtb-delta'):
        build_xtb_delta(['H'], correction={'architecture': 'xtb-delta'})
    with pytest.raises(OptionsError, match=r'baseline\.options\.charge'):
        build_xtb_delta(['H'], baseline={'options': {'charge': 0.5}})


def test_nve_md_on_the_delta_potential_conserves_energy(delta):
    """The batched MD runner drives baseline + correction: NVE total energy fluctuates little next to the kinetic
    energy, and by a Verlet factor less (about 4, at least 2) when the time step is halved (consistent forces)."""
    from aiida_mlff.core.md import simulate

    frames = [_rattled('H2O2'), _rattled('H2O2', seed=4)]
    spread = {}
    for timestep in (0.25, 0.125):
        result = simulate(delta, frames, timestep=timestep, steps=int(30 / timestep), stride=20)
        total, kinetic = np.asarray(result.total_energy), np.asarray(result.kinetic_energy)
        assert total.shape[1] == 2
        spread[timestep] = np.ptp(total, axis=0)
        assert (spread[timestep] < 0.01 * np.ptp(kinetic, axis=0)).all(), (spread, np.ptp(kinetic, axis=0))
    assert (spread[0.125] < 0.5 * spread[0.25]).all(), spread


def _force_mae(pot_or_baseline, frames) -> float:
    out = pot_or_baseline.evaluate(AtomsBatch.from_atoms(frames, dtype=torch.float64))
    labels = np.concatenate([atoms.get_forces() for atoms in frames])
    return float(np.abs(out['forces'].numpy() - labels).mean())


def test_delta_model_beats_the_baseline_and_a_plain_model_on_held_out_dft_water():
    frames = ase.io.read(DATA, ':')
    order = np.random.default_rng(0).permutation(len(frames))
    fit, held_out = [frames[k] for k in order[:48]], [frames[k] for k in order[48:96]]
    hyper = {**SMALL, 'hidden': [16]}
    options = {'epochs': 30, 'batch_size': 8, 'validation_fraction': 0.25, 'seed': 1, 'polish_steps': 0}
    pot = build_xtb_delta(['H', 'O'], dtype=torch.float64, correction=hyper)
    report = train(pot, fit, **options)  # the correction learns label - baseline
    # the report's errors (correction on the differences) are the whole potential's on the labels
    _, validation = split_indices(len(fit), options['validation_fraction'], options['seed'])
    whole = evaluate_metrics(pot, [fit[k] for k in validation])
    for key in ('force_mae_meV_per_A', 'energy_mae_meV_per_atom'):
        assert whole[key] == pytest.approx(report['validation'][key], rel=1e-6)
    plain = build('bp-chiral', elements=['H', 'O'], dtype=torch.float64, **hyper)
    train(plain, fit, **options)
    maes = {'baseline': _force_mae(pot.baseline, held_out), 'delta': _force_mae(pot, held_out)}
    maes['plain'] = _force_mae(plain, held_out)
    print('held-out force MAE [eV/Å]', maes)  # measured: baseline 0.40, delta 0.033, plain BP 0.35
    assert maes['delta'] < 0.25 * maes['baseline']
    assert maes['delta'] < 0.5 * maes['plain']
    energies = pot.evaluate(AtomsBatch.from_atoms(held_out, dtype=torch.float64))['energy'].numpy()
    labels = np.array([atoms.get_potential_energy() for atoms in held_out])
    assert np.abs(energies - labels).mean() < 0.02  # eV per molecule, the absolute PBE energy (baseline: ~300 eV off)
