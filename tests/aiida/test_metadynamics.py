"""``mlff.metadynamics`` on an analytic torsion whose PMF is known, through ``mlff-run`` and the parser."""

from __future__ import annotations

import numpy as np
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

from aiida_mlff.core.wham import KB_EV

from .test_umbrella import T, exact_pmf, hooh, torsion_potential  # noqa: F401 (fixtures)

MetadynamicsWorkChain = WorkflowFactory('mlff.metadynamics')


def test_metadynamics_recovers_a_known_pmf(mlff_environment, hooh, torsion_potential):  # noqa: F811
    builder = MetadynamicsWorkChain.get_builder_from_protocol(
        mlff_environment['mlff_code'],
        torsion_potential,
        hooh,
        cv={'type': 'dihedral', 'atoms': [0, 1, 2, 3]},
        protocol='fast',
        overrides={
            'walkers': 8,
            'steps': 10000,
            'temperature': T,
            'friction': 0.05,
            'dtype': 'float64',
            'device': 'cpu',
            'bins': 48,
            'bias_factor': 6.0,
        },
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    pmf = results['pmf']
    grid = pmf.get_x()[1]
    y = {name: values for name, values, _ in pmf.get_y()}
    assert pmf.base.attributes.get('estimator') == 'metadynamics'
    kt = KB_EV * T
    exact = exact_pmf(grid)
    region = exact < 4 * kt
    for column in ('free_energy', 'from_bias'):
        values = y[column]
        assert np.isfinite(values[region]).all(), column
        shift = np.mean(values[region] - exact[region])
        rms = np.sqrt(np.mean((values[region] - exact[region] - shift) ** 2)) / kt
        print(f'{column}: RMS {rms:.3f} kT')
        assert rms < 0.3, f'{column}: RMS error {rms:.3f} kT'
    assert np.all(y['error'][region] > 0)  # block analysis gives an error everywhere sampled
    hills = results['hills']
    assert len(hills.get_array('metad_hills_heights')) == 8 * 10000 // 100  # every walker, every pace
    assert 'barrier' in results
    assert 'rate' in results


def test_bad_metadynamics_options_name_their_fields(mlff_environment, hooh, torsion_potential):  # noqa: F811
    from aiida_mlff.workflows.metadynamics.base import validate_metadynamics

    errors = validate_metadynamics(
        [{'type': 'distance', 'atoms': [0, 9]}], {'walkers': 0, 'width': -1.0, 'pacee': 10}, n_atoms=4
    )
    text = '\n'.join(errors)
    assert 'cv.atoms' in text
    assert 'parameters.walkers' in text
    assert 'parameters.width' in text
    assert "parameters.pacee: unknown option; did you mean 'pace'?" in text
    errors = validate_metadynamics([{'type': 'distance', 'atoms': [0, 1]}], {}, n_atoms=4)
    assert errors == ['parameters.range: distance(0,1) is not periodic: give its [lower, upper] in Å']
