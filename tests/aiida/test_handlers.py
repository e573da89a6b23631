"""One test per process handler of ``mlff.train.base`` and ``mlff.md.base``, on finished CalcJob nodes."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.common import LinkType
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import WorkflowFactory
from plumpy import ProcessState

from aiida_mlff.core.models import Potential
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData

TrainBase = WorkflowFactory('mlff.train.base')
MdBase = WorkflowFactory('mlff.md.base')


def failed_child(entry_point: str, exit_status: int, computer) -> orm.CalcJobNode:
    """A finished CalcJobNode of ``entry_point`` with ``exit_status`` and a remote folder output."""
    from aiida.plugins.entry_point import format_entry_point_string

    node = orm.CalcJobNode(computer=computer, process_type=format_entry_point_string('aiida.calculations', entry_point))
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(exit_status)
    node.store()
    remote = orm.RemoteData(remote_path='/tmp/somewhere', computer=computer)
    remote.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='remote_folder')
    remote.store()
    return node


def start(workchain_class, inputs, child):
    process = instantiate_process(get_manager().get_runner(), workchain_class, **inputs)
    process.setup()
    process.ctx.iteration = 1
    process.ctx.children = [child]
    return process


@pytest.fixture
def train_process(mlff_environment, labelled_frames):
    def factory(exit_status: int, learning_rate: float = 1e-3):
        inputs = {
            'train': {
                'code': mlff_environment['mlff_code'],
                'dataset': TrainingSetData(labelled_frames).store(),
                'parameters': orm.Dict({'learning_rate': learning_rate, 'epochs': 10}),
            }
        }
        child = failed_child('mlff.train', exit_status, mlff_environment['computer'])
        return start(TrainBase, inputs, child), child

    return factory


@pytest.fixture
def md_process(mlff_environment, tmp_path):
    from ase.build import molecule

    pot = Potential.build(['H', 'O'], committee=1, seed=0, cutoff=3.0, hidden=[8])
    potential = PotentialData(pot.save(tmp_path / 'p.pt')).store()
    water = molecule('H2O')
    water.center(vacuum=3.0)

    def factory(exit_status: int, timestep: float = 0.5):
        inputs = {
            'md': {
                'code': mlff_environment['mlff_code'],
                'potential': potential,
                'structures': {'w': orm.StructureData(ase=water)},
                'parameters': orm.Dict({'timestep': timestep, 'steps': 100, 'stride': 10, 'seed': 3}),
            }
        }
        child = failed_child('mlff.md', exit_status, mlff_environment['computer'])
        return start(MdBase, inputs, child), child

    return factory


def test_train_walltime_resumes_from_checkpoint(train_process):
    process, child = train_process(410)
    result = process.inspect_process()
    assert result.status == 0  # handled: go on to the next iteration
    assert process.ctx.inputs.parent_folder.pk == child.outputs.remote_folder.pk
    assert process.ctx.inputs.parameters['learning_rate'] == 1e-3


def test_train_stopped_with_checkpoint_resumes(train_process):
    """A job killed from outside (scancel) after a checkpoint (exit 411) resumes from its remote folder."""
    process, child = train_process(411)
    assert process.inspect_process().status == 0
    assert process.ctx.inputs.parent_folder.pk == child.outputs.remote_folder.pk
    assert process.ctx.inputs.parameters['learning_rate'] == 1e-3


def test_train_stopped_before_checkpoint_runs_again(train_process):
    """Killed before the first checkpoint (exit 412): the same job again, nothing to resume."""
    process, _ = train_process(412)
    assert process.inspect_process().status == 0
    assert 'parent_folder' not in process.ctx.inputs
    assert process.ctx.inputs.parameters['epochs'] == 10


def test_train_nan_lowers_learning_rate(train_process):
    process, _ = train_process(400, learning_rate=1e-3)
    assert process.inspect_process().status == 0
    assert process.ctx.inputs.parameters['learning_rate'] == pytest.approx(3e-4)
    assert 'parent_folder' not in process.ctx.inputs


def test_train_nan_gives_up_at_the_smallest_rate(train_process):
    process, _ = train_process(400, learning_rate=2e-5)
    result = process.inspect_process()
    assert result.status == TrainBase.exit_codes.ERROR_LEARNING_RATE_EXHAUSTED.status


def test_train_bad_input_is_not_retried(train_process):
    process, _ = train_process(310)
    result = process.inspect_process()
    assert result.status == TrainBase.exit_codes.ERROR_BAD_INPUT.status


def test_md_walltime_continues(md_process):
    process, child = md_process(410)
    assert process.inspect_process().status == 0
    assert process.ctx.inputs.parent_folder.pk == child.outputs.remote_folder.pk
    assert process.ctx.inputs.parameters['timestep'] == 0.5


def test_md_unstable_reseeds_then_halves_the_time_step(md_process, mlff_environment):
    process, _ = md_process(420)
    assert process.inspect_process().status == 0
    first = process.ctx.inputs.parameters.get_dict()
    assert first['seed'] != 3
    assert first['timestep'] == 0.5
    # a second unstable run: the time step is halved, steps and stride doubled (same simulated time)
    process.ctx.iteration = 2
    process.ctx.children.append(failed_child('mlff.md', 420, mlff_environment['computer']))
    assert process.inspect_process().status == 0
    second = process.ctx.inputs.parameters.get_dict()
    assert second['timestep'] == 0.25
    assert second['steps'] == 200
    assert second['stride'] == 20


def test_md_unstable_gives_up_below_the_minimum_step(md_process):
    process, _ = md_process(420, timestep=0.15)
    process.ctx.reseeds = 1  # reseeding already tried
    result = process.inspect_process()
    assert result.status == MdBase.exit_codes.ERROR_UNRECOVERABLE_INSTABILITY.status


def test_md_bad_input_is_not_retried(md_process):
    process, _ = md_process(310)
    assert process.inspect_process().status == MdBase.exit_codes.ERROR_BAD_INPUT.status
