"""Plots and the campaign report on synthetic nodes; the HTML page is opened in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from matplotlib.image import imread

from aiida_mlff import report
from aiida_mlff.calculations.states import pmf_states
from aiida_mlff.calculations.wham import EV_TO_KCAL_MOL
from aiida_mlff.core.training import split_indices
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData

from .test_provenance import build_campaign_graph
from .test_states_calcfunction import knots

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def pixel_variance(path: Path) -> float:
    image = imread(path)
    return float(np.asarray(image[..., :3], dtype=float).var())


H2O2_SETTINGS = {
    'cv': {'type': 'dihedral', 'atoms': [2, 0, 1, 3]},
    'temperature': 300.0,
    'transitions': {'trans': [150.0, -150.0], 'cis': [-30.0, 30.0]},
    'experiment_kcal_mol': {'trans': 1.1, 'cis': 7.0},
}


def h2o2_pmf() -> orm.XyData:
    """A WHAM-like PMF in radians on a 5° grid: minima at ±115°, 0.05 eV at 180° (trans), 0.3 eV at 0° (cis)."""
    angle = np.arange(-180.0, 180.0, 5.0)
    free = knots(angle, [(-180, 0.05), (-115, 0.0), (0, 0.3), (115, 0.0), (180, 0.05)])
    pmf = orm.XyData()
    pmf.set_x(np.radians(angle), 'cv', 'rad')
    pmf.set_y(
        [free, np.full_like(free, 0.004), free + 0.003, free - 0.002],
        ['free_energy', 'error', 'member_0', 'member_1'],
        ['eV', 'eV', 'eV', 'eV'],
    )
    return pmf


#: the split of :func:`trained_potential`: 2 of the 8 frames of :func:`synthetic_outputs` held out
TRAIN_SPLIT = {'validation_fraction': 0.25, 'seed': 4}


def eight_frames(labelled_frames) -> list:
    """Eight synthetic labelled H2O frames: the four of the fixture and four more, rattled further (not DFT)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    more = []
    rng = np.random.default_rng(7)
    for atoms in labelled_frames:
        extra = atoms.copy()
        extra.positions += rng.normal(scale=0.03, size=extra.positions.shape)
        extra.calc = SinglePointCalculator(extra, energy=float(rng.normal()), forces=rng.normal(size=(3, 3)))
        more.append(extra)
    return [*labelled_frames, *more]


def trained_potential(dataset: TrainingSetData, tmp_path: Path, calibration: dict | None = None) -> PotentialData:
    """A tiny potential trained for a few epochs on ``dataset`` (stored) by a stored ``mlff.train`` job node.

    The job node has ``dataset`` as input and the potential as its ``potential`` output, as a real training leaves
    them; the file carries the training options (split) and the train/validation metrics.
    """
    from aiida.common.links import LinkType
    from aiida.engine import ProcessState

    from aiida_mlff.core.models import Potential
    from aiida_mlff.core.training import train
    from aiida_mlff.environment import ensure_computer

    pot = Potential.build(['H', 'O'], cutoff=3.0, angular_cutoff=2.5, n_radial=3, n_angular=1, hidden=(4,), seed=2)
    train(pot, dataset.to_atoms(), epochs=3, batch_size=4, polish_steps=0, **TRAIN_SPLIT)
    job = orm.CalcJobNode(computer=ensure_computer()[0], process_type='aiida.calculations:mlff.train')
    job.set_process_label('TrainCalculation')
    job.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    job.base.links.add_incoming(dataset, link_type=LinkType.INPUT_CALC, link_label='dataset')
    job.store()
    potential = PotentialData(pot.save(tmp_path / 'trained.pt'))
    if calibration is not None:
        potential.base.attributes.set('calibration', calibration)
    potential.base.links.add_incoming(job, link_type=LinkType.CREATE, link_label='potential')
    potential.store()
    job.set_process_state(ProcessState.FINISHED)
    job.set_exit_status(0)
    job.seal()
    return potential


def convergence_dict(converged: bool) -> orm.Dict:
    """A ``convergence`` output of the campaign contract (stored): converged, or stopped by its label budget."""
    barrier = 0.22 if converged else 0.62
    rounds = [
        {'round': 0, 'labels_used': 40, 'barrier_error': 0.9, 'untrusted_fraction': 0.2, 'pmf_change': None,
         'windows_untrusted': 5, 'n_windows': 24, 'converged': False},
        {'round': 1, 'labels_used': 46, 'barrier_error': 0.5, 'untrusted_fraction': 0.08, 'pmf_change': 0.4,
         'windows_untrusted': 2, 'n_windows': 24, 'converged': False},
        {'round': 2, 'labels_used': 52, 'barrier_error': barrier, 'untrusted_fraction': 0.04, 'pmf_change': 0.25,
         'windows_untrusted': 1, 'n_windows': 24, 'converged': converged},
    ]  # fmt: skip
    return orm.Dict(
        {
            'converged': converged,
            'reason': 'converged in round 2'
            if converged
            else 'label budget (52) spent: barrier_error 0.62 > 0.3 kcal/mol',
            'failed': [] if converged else ['barrier_error'],
            'criteria': {
                'barrier_error': {
                    'value': barrier,
                    'target': 0.3,
                    'passed': converged,
                    'unit': 'kcal/mol',
                    'per_barrier': {'trans': 0.2, 'cis': barrier},
                },
                'untrusted_fraction': {'value': 0.04, 'target': 0.1, 'passed': True, 'unit': ''},
                'pmf_change': {'value': 0.25, 'target': 0.3, 'passed': True, 'unit': 'kcal/mol'},
            },
            'labels_used': 52,
            'label_budget': 52,
            'rounds_run': 2,
            'max_rounds': 4,
            'best_round': 2 if converged else 1,
            'final_round': 2,
            'worse_rounds': [] if converged else [2],
            'rounds': rounds,
        }
    ).store()


def synthetic_outputs(labelled_frames, tmp_path: Path, converged: bool = True) -> dict[str, orm.Data]:
    """Every output of the campaign contract from synthetic numbers (a few epochs of training; no MD, no DFT)."""
    frames = eight_frames(labelled_frames)
    dataset = TrainingSetData(frames, sources=[f'uuid-{k}' for k in range(8)], label_method='synthetic').store()
    potential = trained_potential(dataset, tmp_path)
    curve = orm.ArrayData()
    epoch = np.arange(1, 21)
    curve.set_array('epoch', epoch)
    curve.set_array('train_loss', 100.0 / epoch)
    curve.set_array('validation_loss', 120.0 / epoch + 1)
    curve.set_array('learning_rate', np.full(20, 1e-3))
    curve.set_array('time_s', 0.1 * epoch)
    iterations = [
        {
            'iteration': k,
            'n_structures': 20 + 10 * k,
            'accurate': 0.2 + 0.25 * k,
            'candidate': 0.7 - 0.25 * k,
            'failed': 0.1,
            'n_labelled': 10,
            'n_label_failures': 0,
            'n_blown_up': 1,
            'validation': {'energy_rmse_meV_per_atom': 10.0 / (k + 1), 'force_mae_meV_per_A': 100.0 / (k + 1)},
        }
        for k in range(3)
    ]
    history = orm.Dict({'iterations': iterations, 'stop_reason': 'converged'})
    numbers = pmf_states(h2o2_pmf(), orm.Dict(H2O2_SETTINGS))
    scan = orm.ArrayData()
    scan_angle = np.linspace(0.0, 180.0, 7)
    scan.set_array('angle', scan_angle)
    scan.set_array('mlff', 3.0 * (1 + np.cos(np.radians(scan_angle))))
    scan.set_array('dft', 3.2 * (1 + np.cos(np.radians(scan_angle))))
    nodes = {
        'dataset': dataset,
        'potential': potential,
        'learning_curve': curve,
        'history': history,
        'pmf': numbers['pmf'],
        'barriers': numbers['barriers'],
        'rates': numbers['rates'],
        'scan': scan,
        'convergence': convergence_dict(converged),
    }
    for node in nodes.values():
        if not node.is_stored:
            node.store()
    return nodes


@pytest.fixture
def outputs(aiida_profile, labelled_frames, tmp_path):
    return synthetic_outputs(labelled_frames, tmp_path)


def test_parity_data_matches_the_ase_calculator(outputs):
    data = report.parity_data(outputs['potential'], outputs['dataset'])
    pot = outputs['potential'].load_potential()
    frames = outputs['dataset'].to_atoms()
    atoms = frames[2].copy()
    atoms.calc = pot.calculator()
    assert data['energy_pred'][2] == pytest.approx(atoms.get_potential_energy() / len(atoms), rel=1e-5)
    np.testing.assert_allclose(data['forces_pred'][18:27], atoms.get_forces().ravel(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data['energy_ref'], outputs['dataset'].get_array('energy') / 3)


def test_write_campaign_report(outputs, tmp_path):
    paths = report.write_campaign_report(outputs, tmp_path / 'report')
    figures = ['parity_energy', 'parity_forces', 'learning_curve', 'history', 'pmf']
    assert set(paths) == {*figures, 'summary', 'html'}
    for name in figures:
        assert paths[name].suffix == '.png'
        assert pixel_variance(paths[name]) > 1e-3, f'{name} is blank'
    summary = json.loads(paths['summary'].read_text())
    assert summary['dataset']['pk'] == outputs['dataset'].pk
    assert summary['dataset']['dft_calculations']['from_dataset_sources'] == [f'uuid-{k}' for k in range(8)]
    assert summary['dataset']['dft_calculations']['from_provenance_query'] == []  # imported: no PwCalculation
    assert summary['dataset']['dft_calculations']['sources_in_provenance'] is False  # made-up sources
    assert summary['potential']['uuid'] == outputs['potential'].uuid
    transitions = summary['barriers']['transitions']
    assert transitions['trans']['forward_kcal_mol'] == pytest.approx(0.05 * EV_TO_KCAL_MOL)
    assert transitions['cis']['backward_kcal_mol'] == pytest.approx(0.3 * EV_TO_KCAL_MOL)
    assert summary['barriers']['states']['B']['minimum'] == pytest.approx(115.0)
    assert summary['rates_per_s']['cis']['forward'] == transitions['cis']['rate_forward']
    assert summary['history']['stop_reason'] == 'converged'
    assert summary['missing'] == []
    validation = summary['parity']['validation']
    assert validation['indices'] == split_indices(8, **TRAIN_SPLIT)[1].tolist()  # the frames training held out
    assert validation['n_structures'] == 2
    assert validation['plots'] == ['parity_energy', 'parity_forces']
    assert validation['force_mae_meV_per_A'] > 0
    assert 'never trained on' in validation['note']
    assert 'not a campaign node' in summary['parity']['held_out']['reason']  # a mapping: no relaxed-scan labels
    assert summary['potential']['metrics_split'] == 'validation'
    assert summary['potential']['metrics']['n_structures'] == 2
    assert summary['pmf']['estimator'] == 'wham'
    assert summary['convergence']['converged'] is True
    text = paths['html'].read_text()
    for name in figures:
        assert f'src="{paths[name].name}"' in text
    for key in ('dataset', 'potential', 'pmf', 'barriers'):
        assert outputs[key].uuid in text
    assert 'uuid-7' in text
    assert '<tr><td>PMF estimator</td><td>WHAM</td>' in text
    assert 'on frames never trained on (validation split of the training dataset: 2 of 8 frames' in text
    assert '<td>state B</td><td>0.00 ± 0.09 kcal/mol, minimum at 115 deg, range [0, -180] deg</td>' in text
    assert (
        '<td>barrier trans (A &rarr; B)</td><td>forward 1.15 ± 0.13, backward 1.15 ± 0.13 kcal/mol, transition '
        'state at -180 deg; experiment 1.1 kcal/mol</td>'
    ) in text
    assert '<td>rate cis (TST)</td><td>forward ' in text


def test_an_old_barriers_node_still_reads(outputs, tmp_path):
    old = orm.Dict(
        {
            'trans': {'eV': 0.05, 'kcal_mol': 1.15, 'error_kcal_mol': 0.1},
            'cis': {'eV': 0.3, 'kcal_mol': 6.9, 'error_kcal_mol': None},
            'experiment_kcal_mol': {'trans': 1.1, 'cis': 7.0},
        }
    ).store()
    rates = orm.Dict({'trans': 2.0e12, 'cis': 1.0e8}).store()
    assert report.barrier_lines(old.get_dict(), rates.get_dict()) == [
        'Transitions (2):',
        '  cis: forward 6.90 kcal/mol; TST rate 1e+08 s^-1; experiment 7 kcal/mol',
        '  trans: forward 1.15 ± 0.10 kcal/mol; TST rate 2e+12 s^-1; experiment 1.1 kcal/mol',
    ]
    paths = report.write_campaign_report({'pmf': outputs['pmf'], 'barriers': old, 'rates': rates}, tmp_path / 'old')
    text = paths['html'].read_text()
    assert '<td>barrier cis</td><td>forward 6.90 kcal/mol; experiment 7 kcal/mol</td>' in text
    assert '<td>rate trans (TST)</td><td>2e+12 s<sup>-1</sup></td>' in text


def test_report_lists_the_dft_calculations_behind_a_campaign_graph(aiida_profile, tmp_path):
    from aiida_mlff.environment import ensure_computer

    graph = build_campaign_graph(ensure_computer()[0])
    outputs = {key: graph[key] for key in ('dataset', 'potential', 'pmf')}
    paths = report.write_campaign_report(outputs, tmp_path / 'graph')
    calcs = json.loads(paths['summary'].read_text())['dataset']['dft_calculations']
    expected = sorted(n.uuid for n in graph['first'] + graph['second'])
    assert calcs['from_dataset_sources'] == expected
    assert calcs['from_provenance_query'] == sorted([*expected, graph['duplicate'].uuid])
    assert calcs['sources_in_provenance'] is True
    assert calcs['in_provenance_not_in_dataset'] == [graph['duplicate'].uuid]
    text = paths['html'].read_text()
    assert 'finds 6 PwCalculation ancestors of the dataset, every label above among them, and 1 whose' in text
    assert all(uuid in text for uuid in expected)
    assert graph['failed'].uuid not in text


def test_report_with_missing_outputs_says_so(outputs, tmp_path):
    partial = {key: outputs[key] for key in ('pmf', 'barriers')}
    paths = report.write_campaign_report(partial, tmp_path / 'partial')
    assert set(paths) == {'pmf', 'summary', 'html'}
    summary = json.loads(paths['summary'].read_text())
    assert 'learning curve' in summary['missing']
    assert 'Not in this report' in paths['html'].read_text()


def test_banner_of_an_unconverged_campaign(outputs, tmp_path):
    unconverged = {**outputs, 'convergence': convergence_dict(converged=False)}
    paths = report.write_campaign_report(unconverged, tmp_path / 'unconverged')
    text = paths['html'].read_text()
    banner = text.index('<div class="banner fail"><strong>NOT converged</strong>: label budget (52) spent')
    assert banner < text.index('<h2>Key numbers</h2>')  # the verdict comes first
    assert 'Failed: barrier_error 0.62 &gt; 0.3 kcal/mol' in text
    assert 'labels used 52 of a budget of 52; best round 1, final round 2; rounds worse than the best: 2' in text
    assert (
        '<tr><td>barrier_error</td><td>0.62 kcal/mol (cis 0.62, trans 0.2)</td><td>0.3 kcal/mol</td>'
        '<td><span class="fail-cell">FAIL</span></td></tr>'
    ) in text
    row = '<tr><td>0</td><td>40</td><td>0.9</td><td>0.2</td><td>-</td><td>5 of 24</td><td>1x</td><td>no</td><td></td>'
    assert row + '<td></td></tr>' in text
    assert '<td>worse than the best</td></tr>' in text
    summary = json.loads(paths['summary'].read_text())
    assert summary['convergence']['failed'] == ['barrier_error']
    assert summary['convergence']['uuid'] == unconverged['convergence'].uuid

    converged = report.write_campaign_report(outputs, tmp_path / 'converged')['html'].read_text()
    assert '<div class="banner ok"><strong>Converged</strong>: converged in round 2' in converged
    assert 'FAIL' not in converged


def test_convergence_lines():
    lines = report.convergence_lines(convergence_dict(converged=False).get_dict())
    assert lines == [
        'Converged: NO (label budget (52) spent: barrier_error 0.62 > 0.3 kcal/mol)',
        '  barrier_error 0.62 kcal/mol, target <= 0.3 kcal/mol: FAIL (cis 0.62, trans 0.2)',
        '  pmf_change 0.25 kcal/mol, target <= 0.3 kcal/mol: pass',
        '  untrusted_fraction 0.04, target <= 0.1: pass',
        '  labels used 52 of a budget of 52; rounds run 2 of at most 4',
        '  best round 1, final round 2; rounds worse than the best: 2',
    ]
    first = {'value': None, 'target': 0.3, 'passed': True, 'unit': 'kcal/mol'}
    assert report.criterion_text('pmf_change', first) == (
        'pmf_change -, target <= 0.3 kcal/mol: pass (not measurable yet: needs two rounds)'
    )


def test_held_out_frames_of_a_campaign_node_and_the_estimator(outputs, labelled_frames, tmp_path):
    """The relaxed-scan labels (``label_scan``) are plotted as held-out frames; an MBAR PMF is named as such."""
    from aiida.common.links import LinkType
    from aiida.engine import ProcessState

    campaign = orm.WorkChainNode(process_type='aiida.workflows:mlff.campaign')
    campaign.set_process_label('CampaignWorkChain')
    campaign.store()
    labels = orm.WorkChainNode(process_type='aiida.workflows:mlff.dft.label')
    labels.set_process_label('DftLabelWorkChain')
    labels.base.links.add_incoming(campaign, link_type=LinkType.CALL_WORK, link_label='label_scan')
    labels.store()
    scan = TrainingSetData(labelled_frames[:3], sources=['scan-0', 'scan-1', 'scan-2'], label_method='synthetic')
    scan.store().base.links.add_incoming(labels, link_type=LinkType.RETURN, link_label='dataset')
    pmf = h2o2_pmf()
    pmf.base.attributes.set('estimator', 'mbar')
    pmf.store()
    chosen = {**outputs, 'pmf': pmf}
    for label in ('dataset', 'potential', 'pmf', 'barriers', 'convergence'):
        chosen[label].base.links.add_incoming(campaign, link_type=LinkType.RETURN, link_label=label)
    for node in (labels, campaign):
        node.set_process_state(ProcessState.FINISHED)
        node.set_exit_status(0)
        node.seal()
    paths = report.write_campaign_report(campaign, tmp_path / 'held_out')
    summary = json.loads(paths['summary'].read_text())
    held_out = summary['parity']['held_out']
    assert held_out['dataset']['uuid'] == scan.uuid
    assert held_out['labelled_by']['pk'] == labels.pk
    assert held_out['n_structures'] == 3
    assert held_out['note'].startswith('held-out pw.x labels of the relaxed-scan check geometries: 3 frames')
    assert summary['parity']['validation']['n_structures'] == 2
    assert summary['pmf']['estimator'] == 'mbar'
    text = paths['html'].read_text()
    assert '<tr><td>PMF estimator</td><td>MBAR</td>' in text
    assert 'Potential of mean force (MBAR)' in text
    assert 'held-out pw.x frames: force_mae_meV_per_A' in text
    assert pixel_variance(paths['parity_forces']) > 1e-3


def test_potential_calibration_and_metrics_in_the_summary(aiida_profile, labelled_frames, tmp_path):
    dataset = TrainingSetData(eight_frames(labelled_frames), label_method='synthetic').store()
    calibration = {'scale': 1.7, 'spearman': 0.81, 'coverage_95': 0.93}
    potential = trained_potential(dataset, tmp_path, calibration=calibration)
    paths = report.write_campaign_report({'potential': potential}, tmp_path / 'calibrated')
    summary = json.loads(paths['summary'].read_text())
    assert summary['potential']['calibration'] == calibration
    assert summary['potential']['metrics']['force_mae_meV_per_A'] > 0
    text = paths['html'].read_text()
    assert '<td>calibration spearman</td><td>0.81</td>' in text
    assert '<td>validation force_mae_meV_per_A (training job)</td>' in text


def test_potential_metrics_prefers_validation():
    nested = {'train': {'force_mae_meV_per_A': 1.0}, 'validation': {'force_mae_meV_per_A': 2.0, 'per_element': {}}}
    assert report.potential_metrics(nested) == ('validation', {'force_mae_meV_per_A': 2.0})
    assert report.potential_metrics({**nested, 'validation': None}) == ('train', {'force_mae_meV_per_A': 1.0})
    assert report.potential_metrics({'force_mae_meV_per_A': 3.0}) == ('validation', {'force_mae_meV_per_A': 3.0})
    assert report.potential_metrics({}) == (None, {})


def test_campaign_outputs_rejects_other_objects():
    with pytest.raises(TypeError, match='process node or a mapping'):
        report.campaign_outputs(42)


def test_pmf_plot_draws_the_scan_and_experiment(outputs, tmp_path):
    bare = report.plot_pmf(outputs['pmf'], tmp_path / 'bare.png')
    full = report.plot_pmf(
        outputs['pmf'], tmp_path / 'full.png', barriers=outputs['barriers'].get_dict(), scan=outputs['scan']
    )
    assert pixel_variance(bare) > 1e-3
    assert not np.array_equal(imread(bare), imread(full))


def test_history_without_iterations_is_refused(tmp_path):
    with pytest.raises(ValueError, match='no iterations'):
        report.plot_history({'iterations': [], 'stop_reason': 'none'}, tmp_path / 'h.png')


# ------------------------------------------------------------------------------------------------ headless chromium
class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, executable: str):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)  # out of the way of fds 3 and 4
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.profile = tempfile.mkdtemp()
        self.process = subprocess.Popen(
            [
                executable,
                '--headless',
                '--no-sandbox',
                '--disable-gpu',
                '--disable-background-networking',
                '--disable-component-update',
                '--disable-sync',
                '--no-first-run',
                f'--user-data-dir={self.profile}',
                '--remote-debugging-pipe',
                'about:blank',
            ],
            preexec_fn=wire,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(high_r)
        os.close(high_w)
        self._buffer = b''
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b'\0' not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_child], [], [], remaining)[0]:
                raise TimeoutError('no answer from chromium')
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError('chromium closed the pipe')
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b'\0', 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        message = {'id': self._id, 'method': method, 'params': params or {}}
        if session:
            message['sessionId'] = session
        os.write(self._to_child, json.dumps(message).encode() + b'\0')
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get('id') == self._id:
                if 'error' in answer:
                    raise RuntimeError(f'{method}: {answer["error"]}')
                return answer.get('result', {})
            self.events.append(answer)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get('method') == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get('method') == method:
                return event

    def close(self):
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send('Browser.close', timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_child)
        os.close(self._from_child)
        shutil.rmtree(self.profile, ignore_errors=True)


def open_in_chromium(html: Path, screenshot: Path) -> list[str]:
    """Load ``html`` in headless Chromium, save a screenshot, and return every console error, exception and
    failed resource load as text."""
    browser = DevTools(CHROMIUM)
    try:
        target = browser.send('Target.createTarget', {'url': 'about:blank'})['targetId']
        session = browser.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
        for domain in ('Runtime', 'Log', 'Page'):
            browser.send(f'{domain}.enable', session=session)
        browser.send(
            'Emulation.setDeviceMetricsOverride',
            {'width': 1280, 'height': 1000, 'deviceScaleFactor': 1, 'mobile': False},
            session=session,
        )
        browser.send('Page.navigate', {'url': html.resolve().as_uri()}, session=session)
        browser.wait_for('Page.loadEventFired')
        shot = browser.send('Page.captureScreenshot', {'format': 'png', 'captureBeyondViewport': True}, session=session)
        screenshot.write_bytes(base64.b64decode(shot['data']))
        problems = []
        for event in browser.events:
            method, params = event.get('method'), event.get('params', {})
            if method == 'Runtime.exceptionThrown':
                problems.append(f'exception: {params["exceptionDetails"].get("text")}')
            elif method == 'Runtime.consoleAPICalled' and params.get('type') in {'error', 'assert'}:
                problems.append(f'console.{params["type"]}: {params.get("args")}')
            elif method == 'Log.entryAdded' and params['entry'].get('level') == 'error':
                entry = params['entry']
                problems.append(f'{entry.get("source")}: {entry.get("text")} {entry.get("url", "")}')
        return problems
    finally:
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (Debian: apt-get install -y chromium)')
def test_html_report_opens_in_headless_chromium_without_errors(outputs, tmp_path):
    # the detector itself: a page with a missing image and a console error must be caught
    broken = tmp_path / 'broken.html'
    broken.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>'
        '<body><img src="missing.png"><script>console.error("boom")</script></body></html>'
    )
    problems = open_in_chromium(broken, tmp_path / 'broken.png')
    assert any('missing.png' in p for p in problems), problems
    assert any('boom' in p for p in problems), problems

    paths = report.write_campaign_report(outputs, tmp_path / 'report')
    screenshot = tmp_path / 'report' / 'screenshot.png'
    assert open_in_chromium(paths['html'], screenshot) == []
    assert pixel_variance(screenshot) > 1e-3
    image = imread(screenshot)
    assert image.shape[1] > 1200
    assert image.shape[0] > 1000
