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
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData

from .test_provenance import build_campaign_graph, tiny_potential_file
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


def synthetic_outputs(labelled_frames, tmp_path: Path) -> dict[str, orm.Data]:
    """Every output of the campaign contract, made from synthetic numbers (no training, no MD, no DFT)."""
    dataset = TrainingSetData(labelled_frames, sources=[f'uuid-{k}' for k in range(4)], label_method='synthetic')
    potential = PotentialData(tiny_potential_file(tmp_path, seed=2))
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
    }
    for node in nodes.values():
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
    assert summary['dataset']['dft_calculations']['from_dataset_sources'] == [f'uuid-{k}' for k in range(4)]
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
    parity = summary['parity_on_final_dataset']
    assert parity['force_mae_meV_per_A'] > 0
    text = paths['html'].read_text()
    for name in figures:
        assert f'src="{paths[name].name}"' in text
    for key in ('dataset', 'potential', 'pmf', 'barriers'):
        assert outputs[key].uuid in text
    assert 'uuid-3' in text
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
