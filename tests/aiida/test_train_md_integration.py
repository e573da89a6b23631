"""Train a 2-member committee on real pw.x labels, then run 2-replica Langevin MD with it, all through AiiDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData

DATA = Path(__file__).parents[1] / 'data' / 'h2o_pbe_30ry.extxyz'
TINY = {'cutoff': 3.0, 'angular_cutoff': 2.5, 'hidden': [8], 'n_radial': 4, 'n_angular': 2, 'zetas': [1, 4]}


def test_committee_then_md(mlff_environment):
    from ase.io import read

    frames = read(DATA, index=':24')
    dataset = TrainingSetData(frames, label_method='pw.x PBE 30 Ry (test data)').store()
    committee = WorkflowFactory('mlff.train.committee').get_builder_from_protocol(
        mlff_environment['mlff_code'],
        dataset,
        size=2,
        protocol='fast',
        overrides={'train': {'parameters': {'model': TINY, 'epochs': 6, 'device': 'cpu'}}},
    )
    results, train_node = run_get_node(committee)
    assert train_node.is_finished_ok, train_node.exit_message
    potential = results['potential']
    assert isinstance(potential, PotentialData)
    assert potential.committee_size == 2
    assert sorted(results['members']) == ['member_00', 'member_01']
    seeds = [m.base.attributes.get('hyperparameters')['seed'] for _, m in sorted(results['members'].items())]
    assert seeds[0] != seeds[1]

    water = frames[0].copy()
    water.calc = None
    md = WorkflowFactory('mlff.md.base').get_builder_from_protocol(
        mlff_environment['mlff_code'],
        potential,
        [water, water],
        protocol='fast',
        overrides={'md': {'parameters': {'steps': 40, 'stride': 10, 'temperature': [200.0, 300.0], 'device': 'cpu'}}},
    )
    outputs, md_node = run_get_node(md)
    assert md_node.is_finished_ok, md_node.exit_message
    assert sorted(outputs['trajectories']) == ['r0000', 'r0001']
    assert outputs['trajectories']['r0001'].numsteps == 5
    assert outputs['thermo'].get_array('temperature').shape == (5, 2)
    assert np.all(outputs['deviations'].get_array('max_force_deviation')[1:] > 0)  # a real committee disagrees

    # provenance: dataset -> potential -> trajectory
    query = orm.QueryBuilder()
    query.append(orm.TrajectoryData, filters={'id': outputs['trajectories']['r0000'].pk}, tag='traj')
    query.append(PotentialData, with_descendants='traj', tag='pot', project='id')
    query.append(TrainingSetData, with_descendants='pot', project='id')
    assert (potential.pk, dataset.pk) in {tuple(row) for row in query.all()}
