"""``mlff.md``: batched molecular dynamics of many replicas with ``mlff-run md`` on the (remote) computer."""

from __future__ import annotations

from aiida import orm

from aiida_mlff.calculations.base import MlffRunCalculation
from aiida_mlff.core import files
from aiida_mlff.data.potential import PotentialData

__all__ = ['MdCalculation']


def validate_inputs(value, _) -> str | None:
    """Check the parameters against the structures and the potential before anything is submitted."""
    parameters = value.get('parameters')
    structures = value.get('structures') or {}
    if not structures:
        return 'no structures were given: `structures` needs at least one StructureData'
    if parameters is None:
        return None
    merged, errors = files.validate_md_parameters(parameters.get_dict(), n_structures=len(structures))
    potential = value.get('potential')
    if potential is not None:
        known = set(potential.elements)
        for key, structure in structures.items():
            missing = sorted({kind.symbol for kind in structure.kinds} - known)
            if missing:
                errors.append(f'structure `{key}` has {missing}, which the potential ({sorted(known)}) does not know')
    n_atoms = min(len(s.sites) for s in structures.values())
    biased = [cv for b in merged.get('biases') or [] if isinstance(b, dict) for cv in b.get('cvs', [b.get('cv')])]
    for k, spec in enumerate(biased + list(merged.get('colvars') or [])):
        if isinstance(spec, dict) and isinstance(spec.get('atoms'), list):
            bad = [a for a in spec['atoms'] if isinstance(a, int) and a >= n_atoms]
            if bad:
                errors.append(f'collective variable {k} uses atoms {bad}, but a structure has only {n_atoms} atoms')
    if errors:
        return 'invalid MD input: ' + '; '.join(errors)
    return None


class MdCalculation(MlffRunCalculation):
    """Run every replica (structures x bias centres) in one batch on one device."""

    _task = 'md'
    _parser = 'mlff.md'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('potential', valid_type=PotentialData, help='The potential (a committee monitors its spread).')
        spec.input_namespace(
            'structures', valid_type=orm.StructureData, dynamic=True, help='Initial structures, one per replica.'
        )
        spec.input('parameters', valid_type=orm.Dict, help='MD parameters (`aiida_mlff.core.options.MD`).')
        spec.input(
            'parent_folder', valid_type=orm.RemoteData, required=False, help="Continue from this run's MD state."
        )
        spec.inputs.validator = validate_inputs

        spec.output_namespace('trajectories', valid_type=orm.TrajectoryData, dynamic=True, help='Per replica.')
        spec.output('thermo', valid_type=orm.ArrayData, help='Energies (eV) and temperature (K), (frames, replicas).')
        spec.output('colvars', valid_type=orm.ArrayData, required=False, help='CV values, (frames, replicas, n_cv).')
        spec.output('deviations', valid_type=orm.ArrayData, help='Committee spread per frame and replica.')
        spec.output_namespace(
            'final_structures', valid_type=orm.StructureData, dynamic=True, help='Last valid structure per replica.'
        )
        spec.output('status', valid_type=orm.Dict, help='Per replica: status, diagnostic, stop step.')

        spec.exit_code(302, 'ERROR_MISSING_TRAJECTORY', message='The job wrote no trajectory file.')
        spec.exit_code(410, 'ERROR_WALLTIME', message='MD stopped at the time limit at step {step}; state kept.')
        spec.exit_code(420, 'ERROR_UNSTABLE_MD', message='Unstable MD in replicas {replicas}: {diagnostic}')

    def prepare_for_submission(self, folder):
        """Write the job file and the structures; copy the potential and a parent MD state."""
        from ase.io import write

        parameters, _ = files.validate_md_parameters(self.inputs.parameters.get_dict())
        keys = sorted(self.inputs.structures.keys())
        write(
            folder.get_abs_path(files.STRUCTURES_FILE),
            [self.inputs.structures[k].get_ase() for k in keys],
            format='extxyz',
        )
        job = {
            'task': 'md',
            'parameters': parameters,
            'structures': files.STRUCTURES_FILE,
            'structure_keys': keys,
            'potential': files.POTENTIAL_FILE,
        }
        potential = self.inputs.potential
        local_copy_list = [(potential.uuid, potential.filename, files.POTENTIAL_FILE)]
        remote_copy_list = []
        if 'parent_folder' in self.inputs:
            remote = self.inputs.parent_folder
            for name in (files.MD_CHECKPOINT_FILE, files.TRAJECTORY_FILE):
                remote_copy_list.append((remote.computer.uuid, f'{remote.get_remote_path()}/{name}', name))
            job['resume'] = True
        files.write_json(folder.get_abs_path(files.JOB_FILE), job)

        return self.calcinfo(
            local_copy_list, remote_copy_list, [files.SUMMARY_FILE, files.TRAJECTORY_FILE, files.FINAL_STRUCTURES_FILE]
        )
