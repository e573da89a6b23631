"""``mlff.train.committee``: train ``size`` members as separate jobs in parallel and combine them."""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain

from aiida_mlff.calculations.functions import combine_potentials
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows.train.base import TrainBaseWorkChain

__all__ = ['TrainCommitteeWorkChain']


class TrainCommitteeWorkChain(WorkChain):
    """Run one ``mlff.train.base`` per member (seed ``seed + k``), each with its own restarts, then combine them.

    Members are separate jobs, so a scheduler can spread them over nodes or GPUs; a member that fails is reported
    and left out as long as at least ``min_members`` succeed.
    """

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.expose_inputs(TrainBaseWorkChain, namespace='member')
        spec.input('size', valid_type=orm.Int, default=lambda: orm.Int(4), help='Number of committee members.')
        spec.input(
            'min_members',
            valid_type=orm.Int,
            default=lambda: orm.Int(2),
            help='Fewest successful members for a usable committee.',
        )
        spec.outline(cls.run_members, cls.combine)
        spec.output('potential', valid_type=PotentialData, help='The committee potential.')
        spec.output_namespace('members', valid_type=PotentialData, dynamic=True, help='Each member alone.')
        spec.exit_code(401, 'ERROR_TOO_FEW_MEMBERS', message='Only {count} members trained successfully: {failed}.')

    @classmethod
    def get_builder_from_protocol(cls, code, dataset, size: int = 4, protocol=None, overrides=None, options=None):
        """Return a builder for a committee of ``size`` members, each from the ``mlff.train.base`` protocol."""
        member = TrainBaseWorkChain.get_builder_from_protocol(code, dataset, protocol, overrides, options)
        builder = cls.get_builder()
        builder.member = member._inputs(prune=True)
        builder.size = orm.Int(size)
        return builder

    def run_members(self):
        """Launch every member with its own seed."""
        base = AttributeDict(self.exposed_inputs(TrainBaseWorkChain, 'member'))
        parameters = base.train.parameters.get_dict()
        seed = int(parameters.get('seed', 0))
        futures = {}
        for k in range(self.inputs.size.value):
            inputs = AttributeDict(base)
            inputs.train = AttributeDict(base.train)
            inputs.train.parameters = orm.Dict({**parameters, 'seed': seed + k})
            inputs.metadata = {'call_link_label': f'member_{k:02d}'}
            futures[f'member_{k:02d}'] = self.submit(TrainBaseWorkChain, **inputs)
        self.report(f'training {len(futures)} committee members')
        return ToContext(**futures)

    def combine(self):
        """Combine the successful members into one committee potential."""
        members, failed = {}, []
        for k in range(self.inputs.size.value):
            node = self.ctx[f'member_{k:02d}']
            if node.is_finished_ok and 'potential' in node.outputs:
                members[f'member_{k:02d}'] = node.outputs.potential
            else:
                failed.append(f'member {k}: {node.process_label}<{node.pk}> exit {node.exit_status}')
                self.report(f'committee member {k} failed: {node.exit_message}')
        if len(members) < self.inputs.min_members.value:
            return self.exit_codes.ERROR_TOO_FEW_MEMBERS.format(count=len(members), failed='; '.join(failed))
        self.out('members', members)
        self.out('potential', combine_potentials(**members))
        return None
