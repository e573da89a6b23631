"""Campaigns with the other free-energy methods (``free_energy.method``): metadynamics and REUS, end to end.

The water bend of ``test_campaign_general`` (real pw.x labels, a tiny committee), kept short: no relaxed-scan check,
short sampling. Each asserts that the campaign finishes with every output stored (converged, or exit 410 with its
verdict), that the rounds ran the chosen method, and that the report and ``campaign status`` read the result.
"""

from __future__ import annotations

import copy
import json

import pytest
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlff.workflows.campaign.base import CampaignWorkChain

from .water_bend import BASE, CV, UMBRELLA

pytestmark = [pytest.mark.dft, pytest.mark.slow]

CAMPAIGN = {**BASE, 'check': {'values': []}}  # no relaxed-scan check
WALKERS = 4
METADYNAMICS = {
    'walkers': WALKERS,
    'steps': 1000,
    'range': [95.0, 120.0],  # degrees, where the umbrella windows of test_campaign_general sample: the angle is
    'width': 3.0,  # not periodic, so metadynamics needs its range; a wall of 1 kT per width^2 beyond it is about
    'wall': 1.0,  # as stiff as those windows' restraints (a stiffer wall blows up the tiny potential's MD)
    'height': 0.005,
    'pace': 50,
    'bias_factor': 5.0,
    'stride': 10,
    'bins': 20,
    'blocks': 4,
}
OUTPUTS = ('dataset', 'potential', 'history', 'pmf', 'barriers', 'rates', 'convergence')


def _run(mlff_environment, name: str, overrides: dict):
    builder = CampaignWorkChain.get_builder_from_protocol(
        mlff_environment['code'],
        mlff_environment['mlff_code'],
        molecule('H2O'),
        CV,
        protocol='fast',
        overrides={**copy.deepcopy(CAMPAIGN), 'name': name, **overrides},
    )
    results, node = run_get_node(builder)
    assert node.is_finished, node.exit_message
    assert node.exit_status in (0, CampaignWorkChain.exit_codes.ERROR_NOT_CONVERGED.status), node.exit_message
    for key in OUTPUTS:
        assert key in results, key
    verdict = results['convergence'].get_dict()
    assert verdict['converged'] is (node.exit_status == 0)
    for r in range(verdict['rounds_run']):
        for key in ('potential', 'pmf', 'barriers', 'assessment'):
            assert f'{key}_{r}' in results['rounds'], (key, r)
    return results, node


def _check_readers(node, profile: str, tmp_path) -> None:
    """``campaign status`` and the report read the campaign (exit 0 converged, 3 not converged)."""
    from click.testing import CliRunner

    from aiida_mlff.cli import cmd_root
    from aiida_mlff.report import write_campaign_report

    out = CliRunner().invoke(cmd_root, ['-p', profile, 'campaign', 'status', str(node.pk)])
    assert out.exit_code == (0 if node.exit_status == 0 else 3), out.output
    assert 'Traceback' not in out.output
    paths = write_campaign_report(node, tmp_path / 'report')
    summary = json.loads(paths['summary'].read_text())
    assert summary['pmf']['estimator'] == node.outputs.pmf.base.attributes.get('estimator', 'wham')


def test_metadynamics_campaign(mlff_environment, aiida_profile, tmp_path):
    """Every round runs ``mlff.metadynamics``; its PMF is the answer and each walker is judged as a window."""
    overrides = {
        'free_energy': {'method': 'metadynamics'},
        'metadynamics': METADYNAMICS,
        # one refit between two rounds, then max_rounds stops the campaign
        'convergence': {'max_rounds': 2, 'barrier_error_kcal_mol': 0.01, 'pmf_change_kcal_mol': 0.001},
    }
    results, node = _run(mlff_environment, 'water-bend-metadynamics', overrides)
    assert results['pmf'].base.attributes.get('estimator') == 'metadynamics'
    assert 'overlap' not in results  # a WHAM output: umbrella methods only
    runs = [c for c in node.called if c.process_label == 'MetadynamicsWorkChain']
    called_as = {c.base.links.get_incoming(link_type=LinkType.CALL_WORK).one().link_label for c in runs}
    assert not [c for c in node.called if c.process_label == 'UmbrellaWorkChain']
    verdict = results['convergence'].get_dict()
    sampled = [run for run in runs if run.is_finished_ok]
    assert len(sampled) == verdict['rounds_run'] >= 1
    if len(runs) > len(sampled):  # a later round whose walkers all left the range: stopped, earlier rounds kept
        assert 'failed' in verdict['reason'], verdict['reason']
    assert 'metadynamics_0' in called_as
    seeds = {run.inputs.parameters.get_dict()['seed'] for run in runs}
    assert len(seeds) == len(runs)  # a new seed every round
    for r, run in enumerate(sorted(sampled, key=lambda n: n.pk)):
        assessment = results['rounds'][f'assessment_{r}'].get_dict()
        assert assessment['windows_are'] == 'walkers'
        assert assessment['n_windows'] == WALKERS
        # walkers that blew up (the tiny potential) are not measured but count as untrusted, as windows given up on
        assert len(assessment['walkers']) + len(assessment['dropped']) == WALKERS
        assert assessment['windows_untrusted'] >= len(assessment['dropped'])
        factor = verdict['rounds'][r]['sampling_factor']
        assert run.inputs.parameters.get_dict()['steps'] == METADYNAMICS['steps'] * factor
    _check_readers(node, aiida_profile.name, tmp_path)


def test_reus_campaign(mlff_environment, aiida_profile, tmp_path):
    """``method: reus``: the umbrella windows exchange configurations (every 100 steps unless given)."""
    active_learning = {**CAMPAIGN['active_learning'], 'metadynamics_walkers': 2}  # and explore with metadynamics
    overrides = {
        'free_energy': {'method': 'reus'},
        'umbrella': UMBRELLA,
        'active_learning': active_learning,
        'convergence': {'max_rounds': 1},
    }
    results, node = _run(mlff_environment, 'water-bend-reus', overrides)
    assert 'overlap' in results
    learning = next(c for c in node.called if c.process_label == 'ActiveLearningWorkChain')
    explored = [c for c in learning.called if c.process_label == 'MdBaseWorkChain']
    walkers = [c for c in explored if 'biases' in c.inputs.md.parameters.get_dict()]
    biases = [b for c in walkers for b in c.inputs.md.parameters.get_dict()['biases']]
    metad = [b for b in biases if b.get('type') == 'metadynamics']
    assert metad, biases
    assert metad[0]['walkers'] == 2
    assert metad[0]['wall'] is not None  # the angle is not periodic: walls past the umbrella windows' range
    umbrella = next(c for c in node.called if c.process_label == 'UmbrellaWorkChain')
    assert umbrella.inputs.parameters.get_dict()['exchange'] == {'every': 100}
    md = next(c for c in umbrella.called if c.process_label == 'MdBaseWorkChain')
    exchange = md.outputs.status.get_dict()['exchange']
    assert exchange['every'] == 100
    assert len(exchange['acceptance']) == len(exchange['pairs']) == UMBRELLA['windows']['count'] - 1
    assert any(a is not None for a in exchange['acceptance'])
    _check_readers(node, aiida_profile.name, tmp_path)
