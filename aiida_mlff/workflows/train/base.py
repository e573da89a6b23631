"""``mlff.train.base``: ``mlff.train`` with restarts (walltime, scancel -> resume the checkpoint; NaN -> lower rate)."""

from __future__ import annotations

import copy
from typing import ClassVar

from aiida import orm
from aiida.engine import ProcessHandlerReport, process_handler

from aiida_mlff.calculations.train import TrainCalculation
from aiida_mlff.core.options import TRAIN
from aiida_mlff.workflows.protocols import ProtocolMixin, recursive_merge
from aiida_mlff.workflows.restart import MlffRestartWorkChain

__all__ = ['TrainBaseWorkChain']


class TrainBaseWorkChain(ProtocolMixin, MlffRestartWorkChain):
    """Train one potential (a committee of ``model.committee`` members in one batched pass) and recover failures."""

    _process_class = TrainCalculation
    _namespace = 'train'
    _protocol_file = 'train/base.yaml'
    defaults: ClassVar[dict] = {'learning_rate_factor': 0.3, 'min_learning_rate': 1e-5}

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.exit_code(
            320, 'ERROR_LEARNING_RATE_EXHAUSTED', message='The loss stayed NaN down to the smallest learning rate.'
        )

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """The protocol's inputs with ``overrides`` merged; a model of another architecture replaces the protocol's.

        The protocol's model hyperparameters (widths, descriptor sizes) belong to its architecture (``bp-chiral``
        unless it names one): merged into a model of another architecture they would be unknown hyperparameters.
        """
        from aiida_mlff.core.architectures import DEFAULT_ARCHITECTURE

        model = (((overrides or {}).get('train') or {}).get('parameters') or {}).get('model')
        ours = super().get_protocol_inputs(protocol)['train']['parameters'].get('model') or {}
        if not isinstance(model, dict) or model.get('architecture', DEFAULT_ARCHITECTURE) == ours.get(
            'architecture', DEFAULT_ARCHITECTURE
        ):
            return super().get_protocol_inputs(protocol, overrides)
        overrides = copy.deepcopy(overrides)
        overrides['train']['parameters'].pop('model')
        inputs = super().get_protocol_inputs(protocol, overrides)
        inputs['train']['parameters']['model'] = copy.deepcopy(model)
        return inputs

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode | str,
        dataset,
        protocol: str | None = None,
        overrides: dict | None = None,
        options: dict | None = None,
    ):
        """Return a builder that trains on ``dataset`` with a protocol (fast, balanced, stringent)."""
        if isinstance(code, str):
            code = orm.load_code(code)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        metadata = inputs['train']['metadata']
        if options:
            metadata['options'] = recursive_merge(metadata['options'], options)
        builder = cls.get_builder()
        builder.train.code = code
        if dataset is not None:
            builder.train.dataset = dataset
        builder.train.parameters = orm.Dict(inputs['train']['parameters'])
        builder.train.metadata = metadata
        builder.max_iterations = orm.Int(inputs['max_iterations'])
        return builder

    @process_handler(
        priority=500,
        exit_codes=[
            TrainCalculation.exit_codes.ERROR_WALLTIME,
            TrainCalculation.exit_codes.ERROR_STOPPED_WITH_CHECKPOINT,
        ],
    )
    def handle_walltime(self, node):
        """Resume from the checkpoint in the remote folder: the run continues where it stopped.

        Covers mlff-run's own graceful stop at its time limit and a job killed from outside after a checkpoint
        (scancel, the scheduler's walltime, memory).
        """
        self.ctx.inputs.parent_folder = node.outputs.remote_folder
        return self.restart(node, f'resume from the checkpoint in RemoteData<{node.outputs.remote_folder.pk}>')

    @process_handler(priority=480, exit_codes=[TrainCalculation.exit_codes.ERROR_STOPPED_BEFORE_CHECKPOINT])
    def handle_stopped_before_checkpoint(self, node):
        """Killed from outside before the first checkpoint: nothing to resume, run the same job again."""
        return self.restart(node, 'run the same job again (no checkpoint was written)')

    @process_handler(priority=400, exit_codes=[TrainCalculation.exit_codes.ERROR_NAN_LOSS])
    def handle_nan_loss(self, node):
        """Start again from scratch with a lower learning rate."""
        parameters = self._parameters()
        rate = (
            float(parameters.get('learning_rate', TRAIN['learning_rate'].default))
            * self.defaults['learning_rate_factor']
        )
        if rate < self.defaults['min_learning_rate']:
            self.report_error_handled(node, 'none: the learning rate would fall below the minimum')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_LEARNING_RATE_EXHAUSTED)
        self.ctx.inputs.pop('parent_folder', None)
        self._set_parameters(learning_rate=rate)
        return self.restart(node, f'restart from scratch with the learning rate lowered to {rate:.3g}')
