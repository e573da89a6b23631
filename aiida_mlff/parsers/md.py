"""Parser of ``mlff.md``: reads only retrieved files (summary, trajectory arrays, final structures)."""

from __future__ import annotations

import io

import numpy as np
from aiida import orm
from aiida.parsers import Parser
from ase.data import chemical_symbols

from aiida_mlff.core import files
from aiida_mlff.parsers.train import read_summary

__all__ = ['MdParser']

THERMO_KEYS = ('potential_energy', 'bias_energy', 'kinetic_energy', 'total_energy', 'temperature')


def replica_key(index: int) -> str:
    """Link label of replica ``index`` (``r0000``, ``r0001``, ...)."""
    return f'r{index:04d}'


class MdParser(Parser):
    """Turn the retrieved files of ``mlff-run md`` into trajectories, thermo, colvars, deviations and statuses."""

    def parse(self, **kwargs):
        """Parse the retrieved folder; every frame written before a failure is returned."""
        summary, exit_code = read_summary(self)
        if exit_code is not None:
            return exit_code
        status = summary.get('exit_status', files.EXIT_OK)
        if status == files.EXIT_BAD_INPUT:
            return self.exit_codes.ERROR_BAD_INPUT.format(error=summary.get('error', 'unknown'))
        repository = self.retrieved.base.repository
        names = repository.list_object_names()
        if files.TRAJECTORY_FILE not in names:
            return self.exit_codes.ERROR_MISSING_TRAJECTORY
        with np.load(io.BytesIO(repository.get_object_content(files.TRAJECTORY_FILE, mode='rb'))) as data:
            arrays = {key: data[key] for key in data.files}

        time = arrays['time']
        for r in range(arrays['atom_mask'].shape[0]):
            mask = arrays['atom_mask'][r]
            positions = arrays['positions'][:, r, mask]
            valid = np.isfinite(positions).all(axis=(1, 2))
            if not valid.any():
                continue
            trajectory = orm.TrajectoryData()
            symbols = [chemical_symbols[z] for z in arrays['numbers'][r, mask]]
            if 'frame_cells' in arrays:  # the cell of every frame (it moves under NPT)
                cells = arrays['frame_cells'][valid, r]
            else:
                cells = np.repeat(arrays['cells'][r][None], int(valid.sum()), axis=0)
            trajectory.set_trajectory(
                symbols,
                positions[valid],
                stepids=arrays['step'][valid],
                cells=cells,
                times=time[valid],
                pbc=[bool(p) for p in arrays['pbc'][r]],
            )
            self.out(f'trajectories.{replica_key(r)}', trajectory)

        thermo = orm.ArrayData()
        thermo.set_array('time', time)
        thermo.set_array('step', arrays['step'])
        for key in THERMO_KEYS:
            thermo.set_array(key, arrays[key])
        for key in ('volume', 'pressure'):  # (F, R) Å^3 and, under NPT, bar
            if key in arrays:
                thermo.set_array(key, arrays[key])
        units = {'time': 'fs', 'temperature': 'K', 'energy': 'eV', 'volume': 'Å^3', 'pressure': 'bar'}
        thermo.base.attributes.set('units', units)
        self.out('thermo', thermo)

        if arrays['colvars'].shape[-1] > 0:
            colvars = orm.ArrayData()
            colvars.set_array('values', arrays['colvars'])
            colvars.set_array('time', time)
            colvars.base.attributes.set('names', list(summary.get('colvar_names', [])))
            if 'centers' in arrays:
                colvars.set_array('centers', arrays['centers'])
            for key in [k for k in arrays if k.startswith('metad_')]:  # c(t), final bias grid, hills
                colvars.set_array(key, arrays[key])
            if 'walker' in arrays:  # which starting replica each replica held (replica exchange moves them)
                colvars.set_array('walker', arrays['walker'])
            if summary.get('kappa') is not None:
                colvars.base.attributes.set('kappa', summary['kappa'])
            colvars.base.attributes.set('temperature', summary.get('temperature'))
            self.out('colvars', colvars)

        deviations = orm.ArrayData()
        deviations.set_array('step', arrays['step'])
        for key in ('max_force_deviation', 'energy_std', 'flagged', 'member_energies'):
            if key in arrays:
                deviations.set_array(key, arrays[key])
        deviations.base.attributes.set('units', {'max_force_deviation': 'eV/Å', 'energy_std': 'eV'})
        self.out('deviations', deviations)

        if files.FINAL_STRUCTURES_FILE in names:
            from ase.io import read

            text = repository.get_object_content(files.FINAL_STRUCTURES_FILE)
            for r, atoms in enumerate(read(io.StringIO(text), index=':', format='extxyz')):
                self.out(f'final_structures.{replica_key(r)}', orm.StructureData(ase=atoms))

        replicas = {
            'status': summary.get('status', []),
            'diagnostic': summary.get('diagnostic', []),
            'stop_step': summary.get('stop_step', []),
            'structure_keys': summary.get('replica_structures', []),
            'steps_done': summary.get('steps_done'),
            'wall_time_s': summary.get('wall_time'),
            'device': summary.get('device'),
            'n_neighbor_builds': summary.get('n_neighbor_builds'),
        }
        if summary.get('exchange') is not None:  # replica exchange: pairs, attempts, accepted, acceptance per pair
            replicas['exchange'] = summary['exchange']
        if summary.get('steering') is not None:  # where the windows were pulled before the run
            replicas['steering'] = _finite_or_none(summary['steering'])
        self.out('status', orm.Dict(replicas))

        if status == files.EXIT_UNSTABLE_MD:
            blown = [i for i, s in enumerate(replicas['status']) if s == 'blown_up']
            diagnostic = '; '.join(replicas['diagnostic'][i] for i in blown) or summary.get('error', '')
            return self.exit_codes.ERROR_UNSTABLE_MD.format(replicas=blown, diagnostic=diagnostic)
        if status == files.EXIT_WALLTIME:
            return self.exit_codes.ERROR_WALLTIME.format(step=summary.get('steps_done', '?'))
        return None


def _finite_or_none(value):
    """The value with every NaN or infinity replaced by None (the database stores JSON)."""
    import math

    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
