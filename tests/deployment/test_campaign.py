"""A reduced demo campaign submitted with the CLI to the daemon, run on the Slurm cluster over SSH.

The campaign file is built here, not read from ``examples/``: very few pw.x labels, one active-learning iteration,
a short batched umbrella run and no relaxed-scan check, so that it fits the time of a CI run. Run with
``MLFF_DEPLOYMENT=1``.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.aiida.test_report import CHROMIUM, open_in_chromium, pixel_variance

from .conftest import PROFILE, VERDI, pw_calculations, real_environment, verdi, wait_for

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

CLI = str(Path(VERDI).parent / 'aiida-mlff')
RATTLES = 4  # rattled copies of the molecule, labelled with the scan geometries
SCAN_ANGLES = [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]  # labels along the whole torsion the windows span
WINDOWS = 16

CAMPAIGN = {
    'name': 'h2o2-torsion-deployment',
    'description': 'Reduced H2O2 torsion campaign for the deployment tests (daemon, Slurm over SSH)',
    'system': {'molecule': 'H2O2', 'box': 9.0, 'cv': {'type': 'dihedral', 'atoms': [2, 0, 1, 3]}},
    'states': {'gauche_minus': [-150, -60], 'gauche_plus': [60, 150]},
    'transitions': {'trans': [150, 210], 'cis': [-30, 30]},
    'sampling': {
        'rattle': {'n': RATTLES, 'stdev': 0.05, 'seed': 0},
        'scan': {'values': SCAN_ANGLES, 'rattle_stdev': 0.03, 'seed': 1},
    },
    'dft': {'protocol': 'fast', 'max_concurrent': 2},
    'training': {
        'protocol': 'fast',
        'committee': 2,
        'model': {
            'cutoff': 3.5,
            'angular_cutoff': 3.0,
            'hidden': [16, 16],
            'n_radial': 8,
            'n_angular': 3,
            'chiral': False,
        },
        'epochs': 200,
        'patience': 100,
        'batch_size': 4,
        'learning_rate': 0.005,
        'energy_weight': 10.0,
        'forces_weight': 1.0,
        'polish_steps': 100,
    },
    'active_learning': {
        'max_iterations': 1,  # train and explore once; the candidates of the last iteration are not labelled
        'max_candidates': 4,
        'trust_lower': 0.15,
        'trust_upper': 0.60,
        'explore': {'temperatures': [300.0], 'steps': 300, 'stride': 25, 'timestep': 0.5},
        'umbrella_windows': 0,
    },
    'umbrella': {
        'windows': {'start': -180.0, 'stop': 180.0, 'count': WINDOWS},
        'kappa': 0.5,  # eV/rad^2: 22.5 degree spacing, about 1.7 standard deviations at 300 K, so windows overlap
        'temperature': 300.0,
        'equilibration_steps': 200,
        'production_steps': 1000,
        'timestep': 0.5,
        'bins': 24,
        'bootstrap': 4,
    },
    'convergence': {'max_rounds': 1},  # one umbrella round: the stop rule cannot hold (no PMF change measured)
    'check': {'values': []},
}


def test_reduced_campaign_through_daemon_and_slurm(daemon, tmp_path):
    """``aiida-mlff campaign submit`` of a reduced campaign finishes with a PMF; every PwCalculation and every
    mlff-run job ran as a Slurm job on ``slurm-localhost``; one pw.x run per labelled structure."""
    from aiida import orm

    path = tmp_path / 'campaign.yaml'
    path.write_text(yaml.safe_dump(CAMPAIGN, sort_keys=False))
    started = time.monotonic()
    result = subprocess.run(
        [
            str(Path(VERDI).parent / 'aiida-mlff'),
            '-p',
            PROFILE,
            'campaign',
            'submit',
            str(path),
            '--pw-code',
            'pw@slurm-localhost',
            '--mlff-code',
            'mlff-run@slurm-localhost',
        ],
        capture_output=True,
        text=True,
        env=real_environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r'CampaignWorkChain<(\d+)>', result.stdout)
    assert match, result.stdout
    node = orm.load_node(int(match.group(1)))
    wait_for(node, timeout=1500, poll=2.0)
    seconds = time.monotonic() - started
    report = verdi('process', 'report', str(node.pk), check=False).stdout

    # one round cannot show a converged PMF: the campaign finishes, says so, and exits with its own status
    assert node.is_finished, report
    assert node.exit_status == 410, f'{node.exit_status}: {node.exit_message}\n{report}'
    verdict = node.outputs.convergence.get_dict()
    assert not verdict['converged']
    assert 'pmf_change' in verdict['failed']
    pmf = node.outputs.pmf
    x = pmf.get_x()[1]
    y = {name: array for name, array, _ in pmf.get_y()}['free_energy']
    assert len(x) == len(y) == CAMPAIGN['umbrella']['bins']
    assert np.isfinite(y).sum() >= len(y) // 2, f'the PMF is mostly undefined: {y}'
    # the states and every transition between them come from the PMF (this reduced campaign's 10-label committee is
    # far from converged, so which barrier tops it resolves is not asserted; the demo benchmark checks the numbers)
    barriers = node.outputs.barriers.get_dict()
    assert set(barriers['states']) == set(CAMPAIGN['states'])
    assert barriers['transitions']
    for transition in barriers['transitions'].values():
        assert {transition['from'], transition['to']} <= set(CAMPAIGN['states'])
        assert transition['forward_kcal_mol'] >= 0
        assert transition['backward_kcal_mol'] >= 0

    # Every DFT calculation ran as a Slurm job on the cluster reached over SSH; one per labelled structure.
    calcs = pw_calculations(node)
    n_sampled = RATTLES + len(SCAN_ANGLES)
    ok = [calc for calc in calcs if calc.is_finished_ok]
    assert len(ok) == n_sampled, f'{len(ok)} finished PwCalculations for {n_sampled} sampled structures'
    assert len({calc.inputs.structure.uuid for calc in ok}) == len(ok), 'a structure was labelled twice'
    assert node.outputs.dataset.n_structures == len(ok)
    assert len(calcs) == n_sampled, f'{len(calcs)} PwCalculations (restarts?) for {n_sampled} structures'
    for calc in calcs:
        assert calc.computer.label == 'slurm-localhost'
        assert calc.computer.scheduler_type == 'core.slurm'
        assert calc.computer.transport_type == 'core.ssh'
        assert (calc.get_job_id() or '').isdigit()
    assert len({calc.get_job_id() for calc in calcs}) == len(calcs)
    # The training and MD jobs ran there too.
    mlff_jobs = [
        n
        for n in node.called_descendants
        if n.process_type in ('aiida.calculations:mlff.train', 'aiida.calculations:mlff.md')
    ]
    assert mlff_jobs
    assert all(n.computer.label == 'slurm-localhost' and (n.get_job_id() or '').isdigit() for n in mlff_jobs)
    history = node.outputs.history.get_dict()
    assert len(history['iterations']) == 1
    # The report of this real campaign: every figure drawn, and the page opens in headless Chromium without errors.
    directory = tmp_path / 'report'
    result = subprocess.run(
        [CLI, '-p', PROFILE, 'campaign', 'report', str(node.pk), '-o', str(directory)],
        capture_output=True,
        text=True,
        env=real_environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = sorted(directory.glob('*.png'))
    assert {f.name for f in figures} >= {'pmf.png', 'history.png', 'parity_energy.png', 'parity_forces.png'}
    for figure in figures:
        assert pixel_variance(figure) > 1e-3, f'{figure.name} is blank'
    if CHROMIUM is not None:
        screenshot = tmp_path / 'screenshot.png'
        assert open_in_chromium(directory / 'index.html', screenshot) == []
        assert pixel_variance(screenshot) > 1e-3
    transitions = ', '.join(
        f'{name} {t["forward_kcal_mol"]:.2f} kcal/mol' for name, t in barriers['transitions'].items()
    )
    print(
        f'\nreduced campaign through daemon + Slurm over SSH: {seconds:.0f} s; {len(calcs)} PwCalculations, '
        f'{len(mlff_jobs)} mlff-run jobs; {transitions}'
    )
