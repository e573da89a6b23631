"""``mlff.dft.label`` with real pw.x (PBE, 30 Ry): successes, a failing structure, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from aiida_quantumespresso.calculations.pw import PwCalculation
from ase import Atoms

from aiida_mlff.core.sampling import rattle
from aiida_mlff.data.dataset import TrainingSetData

pytestmark = pytest.mark.dft

DftLabelWorkChain = WorkflowFactory('mlff.dft.label')


def oh_radical() -> Atoms:
    """An odd-electron molecule: pw.x with fixed occupations stops with 'charge is wrong'."""
    return Atoms('OH', positions=[[4.0, 4.0, 4.0], [4.97, 4.0, 4.0]], cell=[8.0, 8.0, 8.0], pbc=True)


def builder_for(structures, **overrides):
    builder = DftLabelWorkChain.get_builder_from_protocol('pw@localhost', structures, protocol='fast', molecule=True)
    for key, value in overrides.items():
        setattr(builder, key, value)
    return builder


def test_label_rattled_water_with_one_failing_structure(mlff_environment, h2o):
    structures = {f'h2o_{k}': atoms for k, atoms in enumerate(rattle(h2o, n=3, stdev=0.05, seed=11))}
    structures['radical'] = oh_radical()
    results, node = run_get_node(builder_for(structures))

    # 1 of 4 failed: more than the default 10 %, so the work chain says so, with the partial dataset kept
    assert node.exit_status == DftLabelWorkChain.exit_codes.ERROR_TOO_MANY_FAILED_LABELS.status
    assert '1 of 4 labels failed' in node.exit_message
    assert set(results['failed'].get_dict()) == {'radical'}
    assert 'charge' in results['failed']['radical'].lower()

    dataset = results['dataset']
    assert isinstance(dataset, TrainingSetData)
    assert dataset.n_structures == 3
    energies = dataset.get_array('energy')
    assert len(set(np.round(energies, 6))) == 3  # rattled geometries give different energies
    assert np.all(np.abs(energies - energies.mean()) < 2.0)  # all are H2O near equilibrium (eV)
    for atoms in dataset.to_atoms():
        forces = atoms.get_forces()
        assert forces.shape == (3, 3)
        assert np.abs(forces).max() > 0.05  # rattled: real forces, eV/Å
        np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=0.02)

    # provenance: every PwCalculation that succeeded is an ancestor of the dataset, and the dataset says which
    calcs = [n for n in node.called_descendants if n.process_class is PwCalculation]
    ok_calcs = {c.uuid for c in calcs if c.is_finished_ok}
    assert len(calcs) == 4
    assert len(ok_calcs) == 3
    query = orm.QueryBuilder()
    query.append(TrainingSetData, filters={'id': dataset.pk}, tag='dataset')
    query.append(PwCalculation, with_descendants='dataset', project='uuid')
    assert set(query.all(flat=True)) == ok_calcs
    assert set(dataset.sources) == ok_calcs


def test_failures_below_the_limit_finish_ok(mlff_environment, h2o):
    results, node = run_get_node(
        builder_for({'water': h2o, 'radical': oh_radical()}, max_failure_fraction=orm.Float(0.5))
    )
    assert node.is_finished_ok, node.exit_message
    assert results['dataset'].n_structures == 1
    assert list(results['failed'].get_dict()) == ['radical']


def _no_dft_ran(node) -> bool:
    return not [n for n in node.called_descendants if n.process_class is PwCalculation]


def test_empty_structure_list(mlff_environment):
    builder = builder_for({'x': Atoms('H2', positions=[[0, 0, 0], [0.74, 0, 0]], cell=[6, 6, 6], pbc=True)})
    builder.structures = {}
    _, node = run_get_node(builder)
    assert node.exit_status == DftLabelWorkChain.exit_codes.ERROR_NO_STRUCTURES.status
    assert _no_dft_ran(node)


def test_element_without_pseudopotential(mlff_environment, h2o):
    gold = Atoms('Au2', positions=[[0, 0, 0], [2.5, 0, 0]], cell=[8, 8, 8], pbc=True)
    _, node = run_get_node(builder_for({'water': h2o, 'gold': gold}))
    assert node.exit_status == DftLabelWorkChain.exit_codes.ERROR_MISSING_PSEUDOPOTENTIAL.status
    assert 'Au (in gold)' in node.exit_message
    assert _no_dft_ran(node)


def test_overlapping_atoms(mlff_environment, h2o):
    squashed = h2o.copy()
    squashed.positions[1] = squashed.positions[0] + [0.2, 0, 0]
    _, node = run_get_node(builder_for({'ok': h2o, 'squashed': squashed}))
    assert node.exit_status == DftLabelWorkChain.exit_codes.ERROR_OVERLAPPING_ATOMS.status
    assert 'structure `squashed`: atoms 0 and 1 are 0.200 Å apart' in node.exit_message
    assert _no_dft_ran(node)


def test_missing_pw_executable(mlff_environment, h2o):
    code = orm.InstalledCode(
        label='pw-gone',
        computer=mlff_environment['computer'],
        filepath_executable='/nonexistent/bin/pw.x',
        default_calc_job_plugin='quantumespresso.pw',
    ).store()
    builder = builder_for({'water': h2o})
    builder.pw.pw.code = code
    _, node = run_get_node(builder)
    assert node.exit_status == DftLabelWorkChain.exit_codes.ERROR_MISSING_EXECUTABLE.status
    assert '/nonexistent/bin/pw.x' in node.exit_message
    assert _no_dft_ran(node)


def test_max_concurrent_caps_the_batches(mlff_environment, h2o):
    frames = rattle(h2o, n=3, stdev=0.03, seed=5)
    results, node = run_get_node(builder_for(frames, max_concurrent=orm.Int(2)))
    assert node.is_finished_ok, node.exit_message
    assert results['dataset'].n_structures == 3
    children = sorted((n for n in node.called if n.process_label == 'PwBaseWorkChain'), key=lambda n: n.ctime)
    assert len(children) == 3
    spans = [(child.ctime, child.outputs.output_parameters.ctime) for child in children]
    # never more than two running at once: each start finds at most one other label unfinished
    for start, _ in spans:
        assert sum(1 for s0, s1 in spans if s0 <= start < s1) <= 2
    assert children[2].ctime > min(done for _, done in spans[:2])  # the third waited for a free slot
