"""``mlff.md.base``: ``mlff.md`` with restarts (walltime -> continue; unstable -> reseed, then smaller steps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from aiida import orm
from aiida.engine import ExitCode, ProcessHandlerReport, process_handler

from aiida_mlff.calculations.md import MdCalculation
from aiida_mlff.core.md.state import STATUS_BLOWN_UP
from aiida_mlff.core.options import MD
from aiida_mlff.core.structures import to_atoms
from aiida_mlff.workflows.protocols import ProtocolMixin, recursive_merge
from aiida_mlff.workflows.restart import MlffRestartWorkChain

__all__ = ['MdBaseWorkChain', 'blown_replicas']


def blown_replicas(outputs) -> list[int]:
    """The replicas (windows, walkers) that blew up, by the ``status`` output of an MD run (none without one)."""
    status = outputs.status.get_dict().get('status', []) if 'status' in outputs else []
    return [r for r, s in enumerate(status) if s == STATUS_BLOWN_UP]


class MdBaseWorkChain(ProtocolMixin, MlffRestartWorkChain):
    """Run ``mlff.md`` and recover from a walltime stop or an unstable run."""

    _process_class = MdCalculation
    _namespace = 'md'
    _protocol_file = 'md/base.yaml'
    defaults: ClassVar[dict] = {'max_reseeds': 1, 'timestep_factor': 0.5, 'min_timestep': 0.1}  # fs

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input(
            'tolerate_unstable',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help='Accept a run in which some replicas blew up instead of restarting all of them: their frames before '
            'the blow-up are kept and the `status` output names them, so the caller can rerun just those.',
        )
        spec.exit_code(
            320, 'ERROR_UNRECOVERABLE_INSTABILITY', message='MD stayed unstable after reseeding and smaller steps.'
        )

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode | str,
        potential,
        structures: Sequence | Mapping,
        protocol: str | None = None,
        overrides: dict | None = None,
        options: dict | None = None,
    ):
        """Return a builder for MD of ``structures`` with ``potential`` from a protocol (fast, balanced, stringent)."""
        if isinstance(code, str):
            code = orm.load_code(code)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        metadata = inputs['md']['metadata']
        if options:
            metadata['options'] = recursive_merge(metadata['options'], options)
        items = structures.items() if isinstance(structures, Mapping) else enumerate(structures)
        builder = cls.get_builder()
        builder.md.code = code
        builder.md.potential = potential
        builder.md.structures = {
            (str(k) if isinstance(structures, Mapping) else f's{k:04d}'): (
                s if isinstance(s, orm.StructureData) else orm.StructureData(ase=to_atoms(s))
            )
            for k, s in items
        }
        builder.md.parameters = orm.Dict(inputs['md']['parameters'])
        builder.md.metadata = metadata
        builder.max_iterations = orm.Int(inputs['max_iterations'])
        return builder

    def setup(self):
        """Take the inputs of the first run; no reseed so far."""
        super().setup()
        self.ctx.reseeds = 0

    @process_handler(priority=500, exit_codes=[MdCalculation.exit_codes.ERROR_WALLTIME])
    def handle_walltime(self, node):
        """Continue from the MD state (and frames) left in the remote folder."""
        self.ctx.inputs.parent_folder = node.outputs.remote_folder
        return self.restart(node, f'continue from the checkpoint in RemoteData<{node.outputs.remote_folder.pk}>')

    @process_handler(priority=400, exit_codes=[MdCalculation.exit_codes.ERROR_UNSTABLE_MD])
    def handle_unstable(self, node):
        """First reseed the velocities and thermostat; after that, shrink the time step (same simulated time).

        With ``tolerate_unstable``, accept the run as it is (the caller handles the replicas that blew up).
        """
        if self.inputs.tolerate_unstable.value:
            self.report(f'{node.process_label}<{node.pk}>: {node.exit_message}; accepted (tolerate_unstable)')
            self.ctx.is_finished = True
            return ProcessHandlerReport(True, ExitCode(0))
        parameters = {**MD.defaults(), **self._parameters()}
        self.ctx.inputs.pop('parent_folder', None)
        if self.ctx.reseeds < self.defaults['max_reseeds']:
            self.ctx.reseeds += 1
            seed = int(parameters['seed']) + 1000 * self.ctx.reseeds
            self._set_parameters(seed=seed)
            return self.restart(node, f'restart from the start with a new seed {seed}')
        timestep = float(parameters['timestep']) * self.defaults['timestep_factor']
        if timestep < self.defaults['min_timestep']:
            self.report_error_handled(node, 'none: the time step would fall below the minimum')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_INSTABILITY)
        factor = round(1 / self.defaults['timestep_factor'])
        self._set_parameters(
            timestep=timestep,
            steps=int(parameters['steps']) * factor,
            stride=int(parameters['stride']) * factor,
        )
        return self.restart(node, f'restart from the start with the time step halved to {timestep} fs')
