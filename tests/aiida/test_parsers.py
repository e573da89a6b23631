"""Parsers on retrieved-folder fixtures made by real ``mlff-run`` jobs (``fixtures/generate.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida.plugins import CalculationFactory, ParserFactory

TrainCalculation = CalculationFactory('mlff.train')
MdCalculation = CalculationFactory('mlff.md')


def summarise(results: dict) -> dict:
    """Plain data about parsed outputs: node types, attributes that matter and array shapes."""
    out = {}
    for label, node in sorted(results.items()):
        if isinstance(node, dict) or (hasattr(node, 'items') and not hasattr(node, 'get_dict')):
            out[label] = summarise(dict(node))
            continue
        entry = {'type': type(node).__name__}
        if hasattr(node, 'get_arraynames'):
            entry['arrays'] = {name: list(node.get_array(name).shape) for name in sorted(node.get_arraynames())}
        if type(node).__name__ == 'Dict':
            entry['keys'] = sorted(node.get_dict())
        if type(node).__name__ == 'PotentialData':
            entry['attributes'] = {
                key: node.base.attributes.get(key) for key in ('architecture', 'elements', 'cutoff', 'committee_size')
            }
        out[label] = entry
    return out


def test_train_parser_ok(calc_job_node, data_regression):
    node = calc_job_node('mlff.train', 'train_ok')
    results, calcfunction = ParserFactory('mlff.train').parse_from_node(node, store_provenance=False)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    assert results['potential'].load_potential().committee_size == 2
    assert results['metrics']['train']['n_structures'] > 0
    curve = results['learning_curve']
    assert np.all(np.isfinite(curve.get_array('train_loss')))
    data_regression.check(summarise(results))


def test_train_parser_nan(calc_job_node):
    node = calc_job_node('mlff.train', 'train_nan')
    results, calcfunction = ParserFactory('mlff.train').parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_NAN_LOSS.status
    assert 'potential' not in results
    assert 'epoch 1' in calcfunction.exit_message


def test_train_parser_bad_input_names_the_field(calc_job_node):
    node = calc_job_node('mlff.train', 'train_bad_input')
    _, calcfunction = ParserFactory('mlff.train').parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_BAD_INPUT.status
    assert '`epochs` must be positive' in calcfunction.exit_message


def test_md_parser_ok(calc_job_node, data_regression):
    node = calc_job_node('mlff.md', 'md_ok')
    results, calcfunction = ParserFactory('mlff.md').parse_from_node(node, store_provenance=False)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    assert sorted(results['trajectories']) == ['r0000', 'r0001']
    assert results['trajectories']['r0000'].numsteps == 5  # steps 0, 5, 10, 15, 20
    assert results['status']['status'] == ['ok', 'ok']
    assert results['colvars'].base.attributes.get('names') == ['angle(1,0,2)']
    temperature = results['thermo'].get_array('temperature')
    assert temperature.shape == (5, 2)
    assert np.all(np.isfinite(temperature))
    data_regression.check(summarise(results))


def test_md_parser_unstable_keeps_frames(calc_job_node):
    node = calc_job_node('mlff.md', 'md_unstable')
    results, calcfunction = ParserFactory('mlff.md').parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == MdCalculation.exit_codes.ERROR_UNSTABLE_MD.status
    assert 'replicas [1]' in calcfunction.exit_message
    assert 'kept the state of the step before' in calcfunction.exit_message
    # the stable replica has all its frames, the unstable one those written before it stopped
    assert results['trajectories']['r0000'].numsteps == 5
    assert 1 <= results['trajectories']['r0001'].numsteps < 5
    assert results['status']['status'] == ['ok', 'blown_up']


@pytest.mark.parametrize('entry_point', ['mlff.train', 'mlff.md'])
def test_missing_summary(calc_job_node, tmp_path, entry_point, monkeypatch):
    import tests.aiida.conftest as conftest

    (tmp_path / 'empty').mkdir()
    monkeypatch.setattr(conftest, 'FIXTURES', tmp_path)
    node = calc_job_node(entry_point, 'empty')
    _, calcfunction = ParserFactory(entry_point).parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 300


@pytest.fixture
def stopped_train_job(calc_job_node, tmp_path, monkeypatch):
    """A ``mlff.train`` node killed before its summary: retrieved holds only the scheduler's stderr (``stderr``);
    a real training checkpoint after ``epochs`` epochs sits in the temporary folder unless ``epochs`` is None."""
    import tests.aiida.conftest as conftest

    def factory(stderr: str, epochs: int | None):
        retrieved = tmp_path / 'retrieved'
        retrieved.mkdir()
        (retrieved / '_scheduler-stderr.txt').write_text(stderr)
        monkeypatch.setattr(conftest, 'FIXTURES', tmp_path)
        temporary = tmp_path / 'temporary'
        temporary.mkdir()
        if epochs is not None:
            from ase.build import molecule
            from ase.calculators.singlepoint import SinglePointCalculator

            from aiida_mlff.core import files
            from aiida_mlff.core.models import Potential
            from aiida_mlff.core.sampling import rattle
            from aiida_mlff.core.training import train

            base = molecule('H2O')
            base.center(vacuum=3.0)
            frames = rattle(base, n=6, stdev=0.05, seed=3)
            for atoms in frames:
                d = atoms.positions - base.positions
                atoms.calc = SinglePointCalculator(atoms, energy=float(5.0 * (d**2).sum()), forces=-10.0 * d)
            pot = Potential.build(['H', 'O'], seed=0, cutoff=3.0, hidden=[4], n_radial=4, n_angular=2, zetas=[1])
            report = train(
                pot, frames, epochs=50, stop_after=epochs, checkpoint=temporary / files.CHECKPOINT_FILE, batch_size=3
            )
            assert not report['finished']
        return calc_job_node('mlff.train', 'retrieved'), temporary

    return factory


def test_train_parser_scancel_after_checkpoint(stopped_train_job):
    """scancel (Slurm writes CANCELLED AT to stderr) after a checkpoint: resumable, the epoch is named."""
    stderr = 'slurmstepd-vm: error: *** JOB 12 ON vm CANCELLED AT 2026-01-01T10:00:00 ***\n'
    node, temporary = stopped_train_job(stderr, 7)
    results, calcfunction = ParserFactory('mlff.train').parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=str(temporary)
    )
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_STOPPED_WITH_CHECKPOINT.status
    assert 'scancel' in calcfunction.exit_message
    assert 'holds 7 epochs' in calcfunction.exit_message
    assert 'potential' not in results


def test_train_parser_walltime_kill_before_checkpoint(stopped_train_job):
    """Killed by Slurm's time limit before any checkpoint: not resumable, but a recognised stop (not a crash)."""
    stderr = 'slurmstepd-vm: error: *** JOB 13 ON vm CANCELLED AT 2026-01-01T10:00:00 DUE TO TIME LIMIT ***\n'
    node, temporary = stopped_train_job(stderr, None)
    _, calcfunction = ParserFactory('mlff.train').parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=str(temporary)
    )
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_STOPPED_BEFORE_CHECKPOINT.status
    assert 'walltime' in calcfunction.exit_message


def test_train_parser_no_summary_no_reason_is_a_crash(stopped_train_job):
    """No summary, nothing from the scheduler, no checkpoint: still ``ERROR_MISSING_SUMMARY``."""
    node, temporary = stopped_train_job('', None)
    _, calcfunction = ParserFactory('mlff.train').parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=str(temporary)
    )
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_MISSING_SUMMARY.status
