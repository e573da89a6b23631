"""A campaign on a molecule, CV and settings the demo never uses: the H-O-H bend of water, from Python.

Real pw.x labels; a tiny committee; windows over part of the angle (an open range); no named states (basins are
found on the PMF); the check relaxes the potential at two angles and compares with pw.x there.
"""

from __future__ import annotations

import numpy as np
import pytest
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlff.workflows.campaign.base import CampaignWorkChain

pytestmark = [pytest.mark.dft, pytest.mark.slow]

WINDOWS = {'start': 95.0, 'stop': 120.0, 'count': 6}  # degrees: part of the angle's range
OVERRIDES = {
    'name': 'water-bend',
    'system': {'box': 8.0},
    'sampling': {'rattle': {'n': 4, 'stdev': 0.03}, 'scan': {'values': [95.0, 105.0, 115.0], 'rattle_stdev': 0.02}},
    'dft': {'max_concurrent': 2},
    'training': {
        'committee': 2,
        'model': {'cutoff': 3.0, 'angular_cutoff': 3.0, 'hidden': [8], 'chiral': False},
        'epochs': 60,
        'polish_steps': 20,
        'batch_size': 4,
    },
    'active_learning': {
        'max_iterations': 1,
        'max_candidates': 2,
        'explore': {'temperatures': [300.0], 'steps': 200, 'stride': 20},
    },
    'umbrella': {
        'windows': WINDOWS,
        'equilibration_steps': 100,
        'production_steps': 600,
        'bins': 20,
        'bootstrap': 2,
        'refit_rounds': 0,
        'steer_steps': 50,
        'max_refinements': 0,
    },
    'check': {'values': [100.0, 110.0]},
}


def test_water_bend_campaign_from_python(mlff_environment):
    builder = CampaignWorkChain.get_builder_from_protocol(
        mlff_environment['code'],
        mlff_environment['mlff_code'],
        molecule('H2O'),  # an ase.Atoms: boxed by system.box
        {'type': 'angle', 'atoms': [1, 0, 2]},
        protocol='fast',
        overrides=OVERRIDES,
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message

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
