"""A campaign in solution: the molecule in a periodic box of water, labelled and sampled as a periodic system, and
its barriers compared by name with another campaign's (the gas phase).

The whole solvated campaign is long (pw.x on a 28-atom box): it runs in ``benchmarks/bench_campaign.py
examples/h2o2-torsion-in-water.yaml``. Here: the file, the structure, every option reaching its step, the bad
fields, and the comparison with a campaign node found by name, pk or UUID.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from ase.build import molecule

from aiida_mlff.core.solvate import solution_density
from aiida_mlff.workflows.campaign.config import (
    CampaignConfigError,
    build_structure,
    load_campaign,
    validate_campaign,
)

EXAMPLE = Path(__file__).parents[2] / 'examples' / 'h2o2-torsion-in-water.yaml'


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_puts_the_molecule_first_in_a_box_of_water_at_the_density():
    config = load_campaign(EXAMPLE)
    atoms = build_structure(config)
    solvent = config['system']['solvent']
    assert atoms.get_chemical_formula(mode='hill') == 'H18O10'
    assert atoms.info['n_waters'] == solvent['waters'] == 8
    assert all(atoms.pbc)
    assert solution_density(atoms) == pytest.approx(solvent['density'], rel=1e-9)
    # the solute's atoms first, in their order and shape: the CV's indices still name the molecule's atoms
    h2o2 = molecule('H2O2')
    assert list(atoms.numbers[:4]) == list(h2o2.numbers)
    np.testing.assert_allclose(atoms.get_all_distances(mic=True)[:4, :4], h2o2.get_all_distances(), atol=1e-9)
    # no water atom closer than min_distance to the solute, across the periodic boundary too
    assert atoms.get_all_distances(mic=True)[:4, 4:].min() >= solvent['min_distance'] - 1e-9
    # the same file gives the same box (seeded)
    np.testing.assert_array_equal(build_structure(load_campaign(EXAMPLE)).positions, atoms.positions)


def test_the_example_samples_at_constant_pressure_and_labels_at_gamma():
    config = load_campaign(EXAMPLE)
    assert config['umbrella']['ensemble'] == 'npt'
    assert config['umbrella']['pressure'] == 1.0
    assert config['dft']['kpoints_distance'] == 2.0
    assert config['reference']['compare_with'] == 'h2o2-torsion'


def test_a_box_length_gives_the_waters_and_the_seed_another_box():
    config = example()
    config['system']['solvent'] = {'box': 8.0, 'seed': 3}
    atoms = build_structure(validate_campaign(config))
    assert atoms.cell.lengths() == pytest.approx([8.0] * 3)
    assert atoms.info['n_waters'] == 15  # the nearest whole number at 0.997 g/cm^3 beside the solute
    config['system']['solvent']['seed'] = 4
    assert not np.allclose(build_structure(validate_campaign(config)).positions, atoms.positions)


def test_bad_solvent_and_reference_fields_are_named_at_once():
    config = example()
    config['system']['solvent'] = {'waters': 8, 'box': 7.0, 'density': -1.0}
    config['reference']['compare_with'] = 3.5
    config['umbrella']['pressure'] = 'high'
    config['dft']['kpoints_distance'] = 0
    with pytest.raises(CampaignConfigError) as info:
        validate_campaign(config)
    errors = '\n'.join(info.value.errors)
    assert 'system.solvent.density: must be a number > 0' in errors
    assert 'reference.compare_with: a campaign pk, UUID or name, got 3.5' in errors
    assert 'umbrella.pressure' in errors
    assert 'dft.kpoints_distance: must be a number > 0' in errors
    # waters and box together; a system box beside the solvent; a box too small for the solute
    for solvent, extra, message in (
        ({'waters': 8, 'box': 7.0}, {}, 'system.solvent: give one of waters (the box follows) and box'),
        ({'waters': 8}, {'box': 9.0}, 'system.box: leave it out with system.solvent'),
        ({'waters': 1}, {}, 'system.solvent: solvate: the solute'),
    ):
        config = example()
        config['system']['solvent'] = solvent
        config['system'].update(extra)
        with pytest.raises(CampaignConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
            validate_campaign(config)


def test_every_window_and_exploration_option_reaches_the_md(mlff_environment):
    from aiida_mlff.workflows.campaign.base import CampaignWorkChain

    config = example()
    config.pop('reference')
    config['umbrella'].update(pressure=250.0, tau_p=500.0, compressibility=3e-5, barostat_mode='anisotropic')
    config['active_learning']['explore'].update(ensemble='npt', pressure=10.0)
    builder = CampaignWorkChain.get_builder_from_config(
        mlff_environment['code'], mlff_environment['mlff_code'], validate_campaign(config)
    )
    umbrella = builder.umbrella.parameters.get_dict()
    assert (umbrella['ensemble'], umbrella['pressure'], umbrella['tau_p']) == ('npt', 250.0, 500.0)
    assert (umbrella['compressibility'], umbrella['barostat_mode']) == (3e-5, 'anisotropic')
    explore = builder.active_learning.explore.get_dict()
    assert (explore['ensemble'], explore['pressure']) == ('npt', 10.0)
    assert builder.structure.pbc == (True, True, True)
    assert len(builder.structure.sites) == 28
    # pw.x: the Gamma point from the campaign's spacing, and the stress (a periodic cell, not a molecule in a box)
    label = builder.active_learning.label
    assert label.pw.kpoints_distance.value == 2.0
    assert label.pw.pw.parameters['CONTROL']['tstress'] is True


# ------------------------------------------------------------------------------------ comparison with a campaign
def _barriers(trans: float, cis: float, error: float | None = 0.1) -> orm.Dict:
    transitions = {
        name: {
            'from': 'gauche_minus',
            'to': 'gauche_plus',
            'transition_state': position,
            'forward_kcal_mol': value,
            'forward_error_kcal_mol': error,
            'backward_kcal_mol': value - 0.01,
            'backward_error_kcal_mol': error,
        }
        for name, value, position in (('trans', trans, 180.0), ('cis', cis, 0.0))
    }
    states = {
        'gauche_plus': {'range': [60, 150], 'minimum': 112.0, 'kcal_mol': 0.0, 'error_kcal_mol': 0.0},
        'gauche_minus': {'range': [-150, -60], 'minimum': -112.0, 'kcal_mol': 0.01, 'error_kcal_mol': None},
    }
    return orm.Dict({'unit': 'deg', 'temperature': 300.0, 'states': states, 'transitions': transitions})


def _finished_campaign(label: str, barriers: orm.Dict | None) -> orm.WorkChainNode:
    """A finished campaign node that returned ``barriers`` (as the work chain leaves one)."""
    node = orm.WorkChainNode(process_type='aiida.workflows:mlff.campaign')
    node.set_process_label('CampaignWorkChain')
    node.label = label
    node.store()
    if barriers is not None:
        barriers.store().base.links.add_incoming(node, link_type=LinkType.RETURN, link_label='barriers')
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(0)
    node.seal()
    return node


def test_the_campaign_to_compare_with_is_found_by_name_pk_or_uuid(aiida_profile):
    from aiida_mlff.workflows.campaign.base import reference_barriers

    old = _finished_campaign('gas-phase-test', _barriers(1.0, 7.0))
    new = _finished_campaign('gas-phase-test', _barriers(1.1, 7.1))
    _finished_campaign('gas-phase-test', None)  # the latest, but it has no barriers (failed before its PMF)
    found, label = reference_barriers('gas-phase-test')
    assert found.uuid == new.outputs.barriers.uuid
    assert label == 'gas-phase-test'
    assert reference_barriers(old.pk)[0].uuid == old.outputs.barriers.uuid
    assert reference_barriers(str(old.pk))[0].uuid == old.outputs.barriers.uuid
    assert reference_barriers(old.uuid)[0].uuid == old.outputs.barriers.uuid
    with pytest.raises(CampaignConfigError, match=r"reference\.compare_with: no campaign called 'nothing-here'"):
        reference_barriers('nothing-here')
    with pytest.raises(CampaignConfigError, match=r'compare_with: node .* is not a campaign with a barriers'):
        reference_barriers(old.outputs.barriers.pk)
    with pytest.raises(CampaignConfigError, match=r'reference\.compare_with: no node'):
        reference_barriers(10**9)


def test_the_comparison_is_a_calcfunction_of_both_barrier_nodes(aiida_profile, tmp_path):
    from aiida_mlff.calculations.states import compare_campaigns
    from aiida_mlff.report import comparison_lines

    gas = _finished_campaign('gas-phase-compare', _barriers(1.1, 7.0)).outputs.barriers
    solution = _barriers(1.5, 6.4, error=0.2).store()
    comparison = compare_campaigns(solution, gas, orm.Str('gas phase'))
    inputs = {link.link_label: link.node.uuid for link in comparison.creator.base.links.get_incoming().all()}
    assert inputs['barriers'] == solution.uuid
    assert inputs['reference'] == gas.uuid
    trans = comparison['transitions']['trans']['forward']
    assert trans['difference'] == pytest.approx(0.4)
    assert trans['difference_error'] == pytest.approx(np.hypot(0.2, 0.1))
    assert comparison['transitions']['cis']['backward']['difference'] == pytest.approx(-0.6)
    lines = '\n'.join(comparison_lines(comparison.get_dict()))
    assert 'Compared with gas phase' in lines
    assert 'trans forward: 1.50 ± 0.20 against 1.10 ± 0.10: +0.40 ± 0.22 (1.8 sigma)' in lines
    # the report: the comparison in the summary (with its node) and on the page
    from aiida_mlff.report import write_campaign_report

    paths = write_campaign_report({'barriers': solution, 'comparison': comparison}, tmp_path / 'report')
    summary = json.loads(paths['summary'].read_text())
    assert summary['comparison']['uuid'] == comparison.uuid
    assert summary['comparison']['transitions']['trans']['forward']['difference'] == pytest.approx(0.4)
    text = paths['html'].read_text()
    assert '<td>trans forward, this &minus; gas phase</td><td>1.50 ± 0.20 against 1.10 ± 0.10: +0.40 ± 0.22' in text
