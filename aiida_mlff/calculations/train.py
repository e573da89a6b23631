"""``mlff.train``: train one potential with ``mlff-run train`` on the (remote) computer."""

from __future__ import annotations

from aiida import orm

from aiida_mlff.calculations.base import MlffRunCalculation
from aiida_mlff.core import files
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData

__all__ = ['TrainCalculation']


def validate_parameters(value: orm.Dict, _) -> str | None:
    """Check the training parameters before anything is submitted; name every bad field."""
    if value is None:
        return None
    _, errors = files.validate_train_parameters(value.get_dict())
    if errors:
        return 'invalid training parameters: ' + '; '.join(errors)
    return None


class TrainCalculation(MlffRunCalculation):
    """Train a potential (or continue a checkpoint) on a dataset node, which is uploaded as a file."""

    _task = 'train'
    _parser = 'mlff.train'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('dataset', valid_type=TrainingSetData, help='The labelled structures (eV, eV/Å).')
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            validator=validate_parameters,
            help='Training options and model hyperparameters (`aiida_mlff.core.options.TRAIN`).',
        )
        spec.input(
            'parent_potential',
            valid_type=PotentialData,
            required=False,
            help='Start from these weights (fine-tuning: `statistics` auto keeps their normalisation).',
        )
        spec.input(
            'replay_dataset',
            valid_type=TrainingSetData,
            required=False,
            help='Data of the parent potential: its errors before and after training go to `metrics.replay`.',
        )
        spec.input(
            'parent_folder',
            valid_type=orm.RemoteData,
            required=False,
            help='Remote folder of an interrupted training whose checkpoint to resume.',
        )

        spec.output('potential', valid_type=PotentialData, help='The trained potential.')
        spec.output('metrics', valid_type=orm.Dict, help='Validation errors (meV/atom, meV/Å), per element too.')
        spec.output('learning_curve', valid_type=orm.ArrayData, help='Loss and errors per epoch.')

        spec.exit_code(302, 'ERROR_MISSING_POTENTIAL', message='The job finished but wrote no potential file.')
        spec.exit_code(303, 'ERROR_INVALID_POTENTIAL', message='The potential file is unusable: {error}')
        spec.exit_code(400, 'ERROR_NAN_LOSS', message='The loss became NaN or infinite at epoch {epoch}.')
        spec.exit_code(
            410, 'ERROR_WALLTIME', message='Training stopped at the time limit after {epoch} epochs (checkpoint kept).'
        )
        spec.exit_code(
            411,
            'ERROR_STOPPED_WITH_CHECKPOINT',
            message='mlff-run was stopped ({reason}) without a summary; its checkpoint holds {epoch} epochs.',
        )
        spec.exit_code(
            412,
            'ERROR_STOPPED_BEFORE_CHECKPOINT',
            message='mlff-run was stopped ({reason}) before its first checkpoint.',
        )

    def prepare_for_submission(self, folder):
        """Write the job file and the dataset; copy a parent potential or checkpoint."""
        parameters, _ = files.validate_train_parameters(self.inputs.parameters.get_dict())
        job = {'task': 'train', 'parameters': parameters, 'dataset': files.DATASET_FILE}
        self.inputs.dataset.to_extxyz(folder.get_abs_path(files.DATASET_FILE))
        local_copy_list = []
        remote_copy_list = []
        if 'parent_potential' in self.inputs:
            parent = self.inputs.parent_potential
            local_copy_list.append((parent.uuid, parent.filename, files.PARENT_POTENTIAL_FILE))
            job['parent_potential'] = files.PARENT_POTENTIAL_FILE
        if 'replay_dataset' in self.inputs:
            self.inputs.replay_dataset.to_extxyz(folder.get_abs_path(files.REPLAY_DATASET_FILE))
            job['replay_dataset'] = files.REPLAY_DATASET_FILE
        if 'parent_folder' in self.inputs:
            remote = self.inputs.parent_folder
            remote_copy_list.append(
                (remote.computer.uuid, f'{remote.get_remote_path()}/{files.CHECKPOINT_FILE}', files.CHECKPOINT_FILE)
            )
            job['resume'] = True
        files.write_json(folder.get_abs_path(files.JOB_FILE), job)

        calcinfo = self.calcinfo(
            local_copy_list, remote_copy_list, [files.SUMMARY_FILE, files.POTENTIAL_FILE, files.LEARNING_CURVE_FILE]
        )
        # The parser only looks at the checkpoint (which epoch it holds) when a job was killed before its summary
        # (scancel, the scheduler's walltime, out of memory); it stays in the remote folder for a resumed job.
        calcinfo.retrieve_temporary_list = [files.CHECKPOINT_FILE]
        return calcinfo
