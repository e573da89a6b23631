"""Provenance queries on a synthetic two-iteration campaign graph (no DFT: PwCalculation nodes are made by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import calcfunction
from ase.build import molecule

from aiida_mlff import provenance
from aiida_mlff.calculations.functions import dataset_from_pw, merge_datasets, rattle_structure
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData


def tiny_potential_file(directory: Path, seed: int = 0) -> Path:
    """A small, untrained H/O potential file (milliseconds to build)."""
    from aiida_mlff.core.models import Potential

    pot = Potential.build(['H', 'O'], cutoff=3.0, angular_cutoff=2.5, n_radial=3, n_angular=1, hidden=(4,), seed=seed)
    return pot.save(directory / f'potential_{seed}.pt')


@calcfunction
def fake_train(dataset: TrainingSetData, seed: orm.Int) -> dict:
    """Stand-in of training: an untrained potential that depends on ``dataset`` in the graph."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return {'potential': PotentialData(tiny_potential_file(Path(tmp), seed.value))}


@calcfunction
def fake_wham(potential: PotentialData) -> dict:
    """Stand-in of umbrella sampling + WHAM: a PMF ``XyData`` (degrees, eV) that depends on ``potential``."""
    angle = np.linspace(-180.0, 180.0, 37)
    free_energy = 0.05 * (1 + np.cos(np.radians(2 * angle)))
    pmf = orm.XyData()
    pmf.set_x(angle, 'dihedral', 'degrees')
    pmf.set_y([free_energy, np.full_like(angle, 0.005)], ['free_energy', 'error'], ['eV', 'eV'])
    return {'pmf': pmf}


def pw_node(computer: orm.Computer, structure: orm.StructureData, energy: float, seed: int) -> orm.CalcJobNode:
    """A finished ``PwCalculation`` node with ``output_parameters`` and ``output_trajectory``, made without pw.x."""
    node = orm.CalcJobNode(computer=computer, process_type=provenance.PW_PROCESS_TYPE)
    node.set_process_label('PwCalculation')
    node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    node.base.links.add_incoming(structure, link_type=LinkType.INPUT_CALC, link_label='structure')
    node.store()
    parameters = orm.Dict({'energy': energy, 'energy_units': 'eV', 'forces_units': 'ev / angstrom'})
    trajectory = orm.ArrayData()
    n = len(structure.sites)
    trajectory.set_array('forces', np.random.default_rng(seed).normal(size=(1, n, 3)))
    for label, output in (('output_parameters', parameters), ('output_trajectory', trajectory)):
        output.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label=label)
        output.store()
    return node


def md_node(computer: orm.Computer, potential: PotentialData, structure: orm.StructureData, n_out: int):
    """A finished ``mlff.md`` job node whose final structures are candidates for labelling."""
    node = orm.CalcJobNode(computer=computer, process_type=provenance.MD_PROCESS_TYPE)
    node.set_process_label('MdCalculation')
    node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    node.base.links.add_incoming(potential, link_type=LinkType.INPUT_CALC, link_label='potential')
    node.base.links.add_incoming(structure, link_type=LinkType.INPUT_CALC, link_label='structure')
    node.store()
    outputs = []
    atoms = structure.get_ase()
    for k in range(n_out):
        atoms.positions += 0.01 * (k + 1)
        out = orm.StructureData(ase=atoms)
        out.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label=f'final_structures__s{k:04d}')
        out.store()
        outputs.append(out)
    return node, outputs


def collect(pw_nodes: list[orm.CalcJobNode]) -> TrainingSetData:
    """Run the real ``dataset_from_pw`` calcfunction on pw nodes."""
    labels = {}
    for k, node in enumerate(pw_nodes):
        labels[f'structure_{k}'] = node.inputs.structure
        labels[f'parameters_{k}'] = node.outputs.output_parameters
        labels[f'trajectory_{k}'] = node.outputs.output_trajectory
    return dataset_from_pw(label_method=orm.Str('synthetic'), **labels)


def build_campaign_graph(computer: orm.Computer) -> dict:
    """Two active-learning iterations, ending in a PMF, plus nodes that must *not* count as its DFT calculations.

    Returns a dict of the nodes by role.
    """
    h2o = molecule('H2O')
    h2o.center(vacuum=3.0)
    h2o.pbc = True
    rattled = rattle_structure(orm.StructureData(ase=h2o), orm.Int(4), orm.Float(0.05), orm.Int(3))
    structures = [rattled[key] for key in sorted(rattled)]
    first = [pw_node(computer, s, -460.0 - 0.01 * k, k) for k, s in enumerate(structures[:3])]
    failed = pw_node(computer, structures[3], -460.5, 99)  # its labels are never collected into a dataset
    dataset_0 = collect(first)
    potential_0 = fake_train(dataset_0, orm.Int(0))['potential']
    md, candidates = md_node(computer, potential_0, structures[0], 2)
    second = [pw_node(computer, s, -460.2 - 0.01 * k, 10 + k) for k, s in enumerate(candidates)]
    duplicate = pw_node(computer, structures[0], -460.0, 0)  # the same label as first[0], bit for bit
    dataset_1 = collect([*second, duplicate])
    final_dataset = merge_datasets(d0=dataset_0, d1=dataset_1)  # drops the duplicate's label
    potential_1 = fake_train(final_dataset, orm.Int(1))['potential']
    pmf = fake_wham(potential_1)['pmf']
    md_final, scan_structures = md_node(computer, potential_1, structures[0], 1)
    scan_pw = pw_node(computer, scan_structures[0], -460.3, 77)  # validation single point after the PMF's potential
    return {
        'first': first,
        'second': second,
        'failed': failed,
        'duplicate': duplicate,
        'dataset_0': dataset_0,
        'dataset': final_dataset,
        'potential_0': potential_0,
        'potential': potential_1,
        'md': md,
        'md_final': md_final,
        'pmf': pmf,
        'scan_pw': scan_pw,
    }


@pytest.fixture(scope='module')
def graph(aiida_profile):
    from aiida_mlff.environment import ensure_computer

    computer, _ = ensure_computer()
    return build_campaign_graph(computer)


def test_dft_behind_pmf_equals_the_sources_of_the_final_dataset(graph):
    expected = set(graph['dataset'].sources)
    assert expected == {n.uuid for n in graph['first'] + graph['second']}
    assert graph['dataset'].base.attributes.get('n_duplicates_dropped') == 1
    assert provenance.label_sources_behind(graph['pmf']) == expected
    assert provenance.label_sources_behind(graph['potential'].uuid) == expected
    assert provenance.label_sources_behind(graph['dataset']) == expected
    # the whole provenance also holds the calculation whose label was dropped as a duplicate, and nothing else
    behind = provenance.dft_calculations_behind(graph['pmf'])
    assert {n.uuid for n in behind} == expected | {graph['duplicate'].uuid}
    assert len(behind) == len(expected) + 1  # each once, though reached along several paths
    assert [n.pk for n in behind] == sorted(n.pk for n in behind)
    assert provenance.dft_uuids_behind(graph['pmf'].pk) == expected | {graph['duplicate'].uuid}
    for outside in ('failed', 'scan_pw'):
        assert graph[outside].uuid not in provenance.dft_uuids_behind(graph['pmf'])


def test_dft_behind_first_potential_is_the_first_iteration_only(graph):
    behind = provenance.dft_uuids_behind(graph['potential_0'].uuid)
    assert behind == {n.uuid for n in graph['first']}
    assert behind == set(graph['dataset_0'].sources)
    assert provenance.label_sources_behind(graph['potential_0']) == behind


def test_dependents_of_a_first_iteration_label(graph):
    found = provenance.dependents(graph['first'][0])
    assert [r.pk for r in found.potentials] == sorted([graph['potential_0'].pk, graph['potential'].pk])
    assert [r.pk for r in found.md_runs] == sorted([graph['md'].pk, graph['md_final'].pk])
    assert [r.pk for r in found.pmfs] == [graph['pmf'].pk]
    assert found.pmfs[0].type_name == 'PMF'


def test_dependents_of_a_second_iteration_label_and_of_an_unused_one(graph):
    found = provenance.dependents(graph['second'][1])
    assert [r.pk for r in found.potentials] == [graph['potential'].pk]
    assert [r.pk for r in found.md_runs] == [graph['md_final'].pk]
    assert [r.pk for r in found.pmfs] == [graph['pmf'].pk]
    unused = provenance.dependents(graph['failed'])
    assert (unused.potentials, unused.md_runs, unused.pmfs) == ([], [], [])


def test_dependents_of_a_dataset(graph):
    found = provenance.dependents(graph['dataset_0'])
    assert {r.uuid for r in found.potentials} == {graph['potential_0'].uuid, graph['potential'].uuid}


def test_lineage_counts_and_tree(graph):
    result = provenance.lineage(graph['pmf'].pk)
    counts = result.ancestor_counts
    assert counts['PwCalculation'] == 6
    assert counts['PotentialData'] == 2
    assert counts['TrainingSetData'] == 3
    assert counts['MdCalculation'] == 1
    assert result.descendants == []
    tree = result.format_tree(show=2)
    assert tree.splitlines()[0].startswith(f'XyData<{graph["pmf"].pk}>')
    assert '├── ancestors (' in tree
    assert '└── descendants (0)' in tree
    assert 'PwCalculation x6: ' in tree
    assert ', ... +4' in tree  # 6 PKs, 2 shown
    forward = provenance.lineage(graph['dataset_0'])
    assert forward.descendant_counts['PMF'] == 1
    assert forward.descendant_counts['PotentialData'] == 2


def test_type_name():
    assert provenance.type_name('data.mlff.dataset.TrainingSetData.') == 'TrainingSetData'
    assert provenance.type_name('data.core.array.xy.XyData.', y_names=('free_energy', 'error')) == 'PMF'
    assert provenance.type_name('process.calculation.calcjob.CalcJobNode.', 'PwCalculation') == 'PwCalculation'


def test_bad_direction_and_method_are_refused(graph):
    with pytest.raises(ValueError, match='direction'):
        provenance.closure(graph['pmf'], 'sideways')
    with pytest.raises(ValueError, match='method'):
        provenance.closure(graph['pmf'], 'ancestors', method='guess')


@pytest.mark.parametrize('direction', ['ancestors', 'descendants'])
def test_both_walks_agree_with_aiidas_own_recursive_join(graph, direction):
    for key in ('pmf', 'dataset_0', 'first'):
        node = graph[key][0] if key == 'first' else graph[key]
        relation = 'with_descendants' if direction == 'ancestors' else 'with_ancestors'
        qb = orm.QueryBuilder().append(orm.Node, filters={'id': node.pk}, tag='origin')
        qb.append(orm.Node, project='id', **{relation: 'origin'})
        expected = sorted(set(qb.all(flat=True)))
        assert provenance.closure(node, direction, method='sql') == expected
        assert provenance.closure(node, direction, method='querybuilder') == expected
