"""A campaign on a molecule, CV and settings the demo never uses: the H-O-H bend of water, from Python.

Real pw.x labels; a tiny committee; windows over part of the angle (an open range); no named states (basins are
found on the PMF); the check relaxes the potential at two angles and compares with pw.x there.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlff.workflows.campaign.base import CampaignWorkChain

from .water_bend import BASE, CV, UMBRELLA, WINDOWS

pytestmark = [pytest.mark.dft, pytest.mark.slow]

OVERRIDES = {
    'name': 'water-bend',
    **copy.deepcopy(BASE),
    'umbrella': copy.deepcopy(UMBRELLA),
    # a label budget too small for these targets: one refit round (2 labels), then the budget is spent
    'convergence': {'label_budget': 9, 'max_rounds': 3, 'barrier_error_kcal_mol': 0.01, 'pmf_change_kcal_mol': 0.001},
    'check': {'values': [100.0, 110.0]},
}
N_INITIAL = 4 + 3  # rattles + scan values: the labels before any umbrella round


def test_water_bend_campaign_from_python(mlff_environment, aiida_profile, tmp_path):
    builder = CampaignWorkChain.get_builder_from_protocol(
        mlff_environment['code'],
        mlff_environment['mlff_code'],
        molecule('H2O'),  # an ase.Atoms: boxed by system.box
        CV,
        protocol='fast',
        overrides=OVERRIDES,
    )
    results, node = run_get_node(builder)
    assert node.is_finished, node.exit_message
    _check_unconverged(node, results, aiida_profile.name, tmp_path)
    _check_wham_against_mbar(node)

    # the PMF speaks degrees, and only where the windows are (no window across the uncovered part of the angle)
    pmf = results['pmf']
    assert pmf.get_x()[2] in ('deg', 'degrees')
    free = {name: y for name, y, _ in pmf.get_y()}['free_energy']
    sampled = pmf.get_x()[1][np.isfinite(free)]
    assert sampled.min() > 80.0
    assert sampled.max() < 135.0
    centers = np.degrees(results['overlap'].get_array('centers'))
    assert np.all((centers > 94.0) & (centers < 121.0))

    # basins found on the PMF (no names given) are named A, B, ...; every transition has both barriers and rates
    barriers = results['barriers'].get_dict()
    assert barriers['unit'] == 'deg'
    assert barriers['states']
    for name, state in barriers['states'].items():
        assert name[0] in 'ABCDEF'
        assert sampled.min() - 1e-6 <= state['minimum'] <= sampled.max() + 1e-6
    for name, transition in barriers['transitions'].items():
        assert transition['forward_kcal_mol'] >= 0
        assert transition['backward_kcal_mol'] >= 0
        assert results['rates'][name]['forward'] > 0

    # the check: relaxed at the requested angles (degrees), compared with pw.x there
    scan = results['scan']
    np.testing.assert_allclose(scan.get_array('value'), [100.0, 110.0])
    np.testing.assert_allclose(scan.get_array('achieved_value'), [100.0, 110.0], atol=0.6)
    assert np.isfinite(scan.base.attributes.get('max_abs_difference_kcal_mol'))

    # every window started from a structure pulled to its centre from its neighbour (restrained MD)
    umbrella = next(n for n in node.called if n.process_label == 'UmbrellaWorkChain')
    md = next(n for n in umbrella.called if n.process_label == 'MdBaseWorkChain')
    steering = md.outputs.status.get_dict()['steering']
    assert len(steering['center']) == WINDOWS['count']
    reached = np.degrees(np.asarray(steering['value'], dtype=float))
    wanted = np.degrees(np.asarray(steering['center'], dtype=float))
    assert np.all(np.abs(reached - wanted) < 10.0), (reached, wanted)


def _check_unconverged(node, results, profile, tmp_path):
    """Too small a label budget: the campaign ends with its own exit status, says why, and keeps every result."""
    from aiida.common.links import LinkType

    from aiida_mlff.cli import cmd_root

    assert node.exit_status == CampaignWorkChain.exit_codes.ERROR_NOT_CONVERGED.status, node.exit_message
    verdict = results['convergence'].get_dict()
    assert verdict['converged'] is False
    assert 'label budget (9) spent' in verdict['reason'], verdict['reason']
    assert verdict['failed']
    assert set(verdict['failed']) <= {'barrier_error', 'untrusted_fraction', 'pmf_change'}
    assert verdict['labels_used'] >= 9
    assert verdict['label_budget'] == 9
    assert verdict['rounds_run'] == 2
    assert [r['round'] for r in verdict['rounds']] == [0, 1]
    assert verdict['rounds'][1]['pmf_change'] is not None  # measured between the two rounds
    for r in (0, 1):  # nothing computed is lost: each round's potential, PMF, barriers and verdict
        for key in ('potential', 'pmf', 'barriers', 'assessment'):
            assert f'{key}_{r}' in results['rounds'], (key, r)
    labels = [n for n in node.called_descendants if n.process_label == 'DftLabelWorkChain']
    called_as = {n.base.links.get_incoming(link_type=LinkType.CALL_WORK).one().link_label for n in labels}
    assert called_as >= {'label_initial', 'label_umbrella_0', 'label_scan'}
    assert results['dataset'].n_structures == verdict['labels_used']
    # `campaign status` says which criterion failed, first, and exits 3 (not converged)
    from click.testing import CliRunner

    out = CliRunner().invoke(cmd_root, ['-p', profile, 'campaign', 'status', str(node.pk)])
    assert out.exit_code == 3, out.output
    assert out.output.startswith('Converged: NO'), out.output
    for name in verdict['failed']:
        assert name in out.output.splitlines()[0]
    # and so does the report, at the top
    import json

    from aiida_mlff.report import write_campaign_report

    paths = write_campaign_report(node, tmp_path / 'report')
    summary = json.loads(paths['summary'].read_text())
    assert summary['convergence']['converged'] is False
    assert 'NOT converged' in paths['html'].read_text()


def _check_wham_against_mbar(node):
    """The two estimators on this campaign's own umbrella samples: PMFs within 0.1 kT where F < 5 kT."""
    from aiida_mlff.calculations.wham import collect_windows
    from aiida_mlff.core.mbar import mbar
    from aiida_mlff.core.options import UMBRELLA
    from aiida_mlff.core.wham import KB_EV, wham

    umbrella = node.outputs.rounds['pmf_0'].creator.inputs.pmf.creator.caller  # round 0's UmbrellaWorkChain
    parameters = UMBRELLA.validate(umbrella.inputs.parameters.get_dict())
    runs = {}
    for md in umbrella.called:
        if md.process_label == 'MdBaseWorkChain' and md.is_finished_ok:
            runs[str(md.pk)] = {'colvars': md.outputs.colvars, 'deviations': md.outputs.deviations}
    settings = {key: parameters[key] for key in ('equilibration_steps', 'timestep')}
    data = collect_windows(settings, runs)
    kappa = umbrella.outputs.pmf.creator.inputs.settings['kappa']
    temperature = parameters['temperature']
    common = {'bins': 20, 'period': None}
    by_wham = wham(data['samples'], data['centers'], kappa, temperature, **common)
    by_mbar = mbar(data['samples'], data['centers'], kappa, temperature, **common)
    kt = KB_EV * temperature
    # bins where WHAM's F < 5 kT between the outermost window centres; beyond them only one window's tail samples
    # the CV, where the bias changes by about a kT across one bin (10 eV/rad^2 here): WHAM's bin-centre bias does
    # not resolve that and MBAR's per-sample bias does (0.2 kT apart in the last bins)
    grid = np.asarray(by_wham.grid)
    inside = (grid >= data['centers'].min()) & (grid <= data['centers'].max())
    low = np.flatnonzero(np.isfinite(by_wham.free_energy) & (by_wham.free_energy < 5 * kt) & inside)
    difference = (by_wham.free_energy[low] - by_mbar.free_energy[low]) / kt
    difference -= difference.mean()  # a PMF is defined up to a constant: each estimator puts its own minimum at 0
    print(f'WHAM - MBAR on the campaign umbrella data: max {np.abs(difference).max():.3f} kT over {len(low)} bins')
    assert len(low) >= 5
    assert np.abs(difference).max() < 0.1, difference
