"""``mlff.metadynamics``: well-tempered metadynamics with many walkers in one batched MD job, then the free energy.

Every walker is a replica of one batch and all of them add hills to one bias (:mod:`aiida_mlff.core.metadynamics`);
the bias is part of the MD state, so a job stopped by its walltime resumes from its checkpoint with the same hills
(``MdBaseWorkChain``). The free energy is the reweighted histogram of the frames (Tiwary-Parrinello c(t)) with an
error from block analysis; the final bias's own estimate is kept next to it. Options and defaults:
:data:`aiida_mlff.core.options.METADYNAMICS`; setup (widths, grid, walls, heights): :mod:`aiida_mlff.core.enhanced`.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain

from aiida_mlff.calculations.metadynamics import metadynamics_free_energy
from aiida_mlff.core.colvars import CVSpecError, cv_from_spec, cv_spec_errors
from aiida_mlff.core.enhanced import metadynamics_errors, metadynamics_job_bias
from aiida_mlff.core.options import MD, METADYNAMICS
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows.md.base import MdBaseWorkChain, blown_replicas
from aiida_mlff.workflows.protocols import ProtocolMixin, cv_sampling_builder

__all__ = ['MetadynamicsWorkChain', 'validate_metadynamics']

#: options of the MD job taken over from the metadynamics options as they are
MD_KEYS = tuple(key for key in METADYNAMICS if key in MD)


def validate_metadynamics(
    cvs: list[dict], parameters: dict, n_atoms: int | None = None, cv_where: str = 'cv', where: str = 'parameters'
) -> list[str]:
    """Every problem of the CV specs and the metadynamics options, each naming its field."""
    errors = []
    for k, spec in enumerate(cvs):
        errors += cv_spec_errors(spec, where=cv_where if k == 0 else f'{cv_where}2', n_atoms=n_atoms)
    merged, problems = METADYNAMICS.resolve(parameters, where)
    errors += problems
    if errors:
        return errors
    try:
        return metadynamics_errors([cv_from_spec(c) for c in cvs], merged, where)
    except CVSpecError as exception:
        return [str(exception)]


def _cv_specs(inputs) -> list[dict]:
    return [inputs['cv'].get_dict()] + ([inputs['cv2'].get_dict()] if 'cv2' in inputs else [])


def validate_inputs(value, ctx) -> str | None:
    """Check the CVs, the options and the elements before anything runs."""
    if 'structure' not in ctx:
        return None
    errors = validate_metadynamics(_cv_specs(value), value['parameters'].get_dict(), len(value['structure'].sites))
    missing = sorted({k.symbol for k in value['structure'].kinds} - set(value['potential'].elements))
    if missing:
        errors.append(f'structure: has {missing}, which the potential ({value["potential"].elements}) does not know')
    return '; '.join(errors) if errors else None


class MetadynamicsWorkChain(ProtocolMixin, WorkChain):
    """Run the walkers in one batched MD job (restarted from its checkpoint on walltime) and compute the free energy."""

    _protocol_file = 'metadynamics/base.yaml'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('code', valid_type=orm.AbstractCode, help='The `mlff-run` code.')
        spec.input('potential', valid_type=PotentialData)
        spec.input('structure', valid_type=orm.StructureData, help='Starting structure of every walker.')
        spec.input('cv', valid_type=orm.Dict, help="The first CV's spec, e.g. {'type': 'dihedral', 'atoms': [...]}.")
        spec.input('cv2', valid_type=orm.Dict, required=False, help='A second CV: a two-dimensional free energy.')
        spec.input('parameters', valid_type=orm.Dict, help='Metadynamics options (`core.options.METADYNAMICS`).')
        spec.input('options', valid_type=orm.Dict, required=False, help='metadata.options of the MD job.')
        spec.inputs.validator = validate_inputs
        spec.outline(cls.setup, cls.run_walkers, cls.analyse)
        spec.output('pmf', valid_type=orm.XyData, required=False, help='One CV: free energy, block error, from_bias.')
        spec.output('fes', valid_type=orm.ArrayData, required=False, help='Two CVs: the free-energy surface.')
        spec.output('barrier', valid_type=orm.Float, required=False, help='eV; kcal/mol in attributes.')
        spec.output('rate', valid_type=orm.Float, required=False, help='TST rate, s^-1.')
        spec.output('hills', valid_type=orm.ArrayData, help='The MD colvars: CVs, c(t), hills and the final bias.')
        spec.exit_code(401, 'ERROR_MD_FAILED', message='The metadynamics MD failed: {message}')
        spec.exit_code(
            402, 'ERROR_NO_SAMPLES', message='No frame after the discarded start: the free energy <{pk}> is empty'
        )

    @classmethod
    def get_builder_from_protocol(
        cls, code, potential, structure, cv: dict, protocol=None, overrides=None, options=None, cv2=None
    ):
        """A builder filled from a protocol (fast, balanced, stringent); ``overrides`` are metadynamics options."""
        return cv_sampling_builder(cls, code, potential, structure, cv, protocol, overrides, options, cv2)

    @property
    def parameters(self) -> dict:
        """The metadynamics options, defaults filled in."""
        return METADYNAMICS.validate(self.inputs.parameters.get_dict())

    def setup(self):
        """Turn the options into the job's bias (internal units)."""
        self.ctx.cvs = [cv_from_spec(c) for c in _cv_specs(self.inputs)]
        self.ctx.bias = metadynamics_job_bias(self.ctx.cvs, self.parameters)

    def run_walkers(self):
        """One batched MD job of all walkers."""
        p = self.parameters
        parameters = {key: p[key] for key in MD_KEYS}
        parameters['steps'] = p['steps']
        parameters['checkpoint_every'] = max(p['stride'], p['steps'] // 4)
        parameters['biases'] = [self.ctx.bias]
        inputs = {
            'md': {
                'code': self.inputs.code,
                'potential': self.inputs.potential,
                'structures': {'start': self.inputs.structure},
                'parameters': orm.Dict(parameters),
                'metadata': {'options': self.inputs.options.get_dict()} if 'options' in self.inputs else {},
            },
            'max_iterations': orm.Int(3),
            'tolerate_unstable': orm.Bool(True),  # a walker that blows up stops; the others and its hills go on
            'metadata': {'call_link_label': 'walkers'},
        }
        cvs = ', '.join(cv.name for cv in self.ctx.cvs)
        self.report(f'{p["walkers"]} walkers x {p["steps"]} steps of well-tempered metadynamics on {cvs}')
        return ToContext(md=self.submit(MdBaseWorkChain, **inputs))

    def analyse(self):
        """Free energy from the frames (reweighted, block error) and from the bias; barrier and rate in 1-D."""
        node = self.ctx.md
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_MD_FAILED.format(
                message=f'{node.process_label}<{node.pk}> exit {node.exit_status}: {node.exit_message}'
            )
        blown = blown_replicas(node.outputs)
        if blown and len(blown) == len(node.outputs.status['status']):
            diagnostic = node.outputs.status['diagnostic'][0]
            return self.exit_codes.ERROR_MD_FAILED.format(message=f'every walker blew up: {diagnostic}')
        if blown:
            self.report(f'walkers {blown} blew up; their frames up to then and their hills are kept')
        p = self.parameters
        first = self.ctx.cvs[0]
        settings = {
            'bias': self.ctx.bias,
            'temperature': float(p['temperature']),
            'bins': p['bins'],
            'discard_fraction': p['discard_fraction'],
            'blocks': p['blocks'],
            'name': first.name,
            'unit': first.unit,
        }
        results = metadynamics_free_energy(
            settings=orm.Dict(settings), colvars=node.outputs.colvars, thermo=node.outputs.thermo
        )
        self.out('hills', node.outputs.colvars)
        surface = results.get('fes')
        values = surface.get_array('free_energy') if surface is not None else results['pmf'].get_y()[0][1]
        if not np.isfinite(values).any():  # every walker stopped before the discarded start was over
            return self.exit_codes.ERROR_NO_SAMPLES.format(pk=next(iter(results.values())).pk)
        for key, value in results.items():
            self.out(key, value)
        return None
