"""Calcfunctions of the campaign: the potential's relaxed scan, its check against pw.x, and the final numbers."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.calculations.wham import EV_TO_KCAL_MOL
from aiida_mlff.core.wham import KB_EV, tst_rate

__all__ = ['campaign_numbers', 'compare_scan', 'relaxed_dihedral_scan']


@calcfunction
def relaxed_dihedral_scan(potential, structure: orm.StructureData, settings: orm.Dict) -> dict:
    """Relax ``structure`` with the potential at each dihedral of ``settings['angles']`` (degrees), dihedral fixed.

    ``settings``: ``atoms`` (the four indices), ``angles`` (degrees), ``fmax`` (eV/Å, default 0.01), ``steps``.
    Returns the relaxed structures (``s0000``, ...) and ``energies`` (angles in degrees, committee-mean energies
    in eV).
    """
    from ase.constraints import FixInternals
    from ase.optimize import BFGS

    from aiida_mlff.core.sampling import dihedral_scan

    s = settings.get_dict()
    pot = potential.load_potential()
    frames = dihedral_scan(structure.get_ase(), s['atoms'], s['angles'])
    outputs, energies, achieved = {}, [], []
    for k, (angle, atoms) in enumerate(zip(s['angles'], frames, strict=True)):
        atoms.set_constraint(FixInternals(dihedrals_deg=[[float(angle), list(s['atoms'])]]))
        atoms.calc = pot.calculator()
        BFGS(atoms, logfile=None).run(fmax=s.get('fmax', 0.01), steps=s.get('steps', 300))
        energies.append(float(atoms.get_potential_energy()))
        achieved.append(float(atoms.get_dihedral(*s['atoms'])))
        atoms.set_constraint()
        atoms.calc = None
        outputs[f's{k:04d}'] = orm.StructureData(ase=atoms)
    array = orm.ArrayData()
    array.set_array('angle', np.asarray(s['angles'], dtype=float))
    array.set_array('achieved_angle', np.asarray(achieved))
    array.set_array('energy', np.asarray(energies))
    outputs['energies'] = array
    return outputs


@calcfunction
def compare_scan(energies: orm.ArrayData, dataset) -> orm.ArrayData:
    """Relative energies (kcal/mol, each minimum 0) of the potential and pw.x along the relaxed scan.

    ``dataset`` holds the pw.x labels of the relaxed structures, in the same order (keys ``s0000``...).
    """
    mlff = energies.get_array('energy')
    dft = dataset.get_array('energy')
    if len(dft) != len(mlff):
        raise ValueError(f'{len(dft)} pw.x energies for {len(mlff)} scan points')
    mlff_rel = (mlff - mlff.min()) * EV_TO_KCAL_MOL
    dft_rel = (dft - dft.min()) * EV_TO_KCAL_MOL
    scan = orm.ArrayData()
    scan.set_array('angle', energies.get_array('angle'))
    scan.set_array('mlff', mlff_rel)
    scan.set_array('dft', dft_rel)
    scan.base.attributes.set('units', 'kcal/mol, relative to the minimum of each')
    scan.base.attributes.set('max_abs_difference_kcal_mol', float(np.abs(mlff_rel - dft_rel).max()))
    scan.base.attributes.set('rms_difference_kcal_mol', float(np.sqrt(np.mean((mlff_rel - dft_rel) ** 2))))
    return scan


def _barrier_near(grid_deg: np.ndarray, f: np.ndarray, target: float, half_width: float = 15.0) -> float:
    distance = np.abs((grid_deg - target + 180.0) % 360.0 - 180.0)
    near = (distance <= half_width) & np.isfinite(f)
    if not near.any():
        return float('nan')
    return float(np.max(f[near]) - np.nanmin(f))


@calcfunction
def campaign_numbers(pmf: orm.XyData, settings: orm.Dict) -> dict:
    """The PMF in degrees, and the trans (180°) and cis (0°) barriers and TST rates from it.

    ``settings``: ``temperature`` (K), ``experiment_kcal_mol`` (reference barriers, for the report).
    """
    s = settings.get_dict()
    grid = np.degrees(pmf.get_x()[1])
    names = [name for name, _, _ in pmf.get_y()]
    values = {name: array for name, array, _ in pmf.get_y()}
    out = orm.XyData()
    out.set_x(grid, 'dihedral', 'degrees')
    out.set_y([values[n] for n in names], names, ['eV'] * len(names))
    for key in ('temperature', 'kT_eV'):
        out.base.attributes.set(key, pmf.base.attributes.get(key, None))
    f = values['free_energy']
    error = values.get('error', np.zeros_like(f))
    barriers, rates = {}, {}
    for name, target in (('trans', 180.0), ('cis', 0.0)):
        barrier = _barrier_near(grid, f, target)
        i = int(np.nanargmin(np.abs((grid - target + 180.0) % 360.0 - 180.0)))
        barriers[name] = {
            'eV': barrier,
            'kcal_mol': barrier * EV_TO_KCAL_MOL,
            'error_kcal_mol': float(error[i]) * EV_TO_KCAL_MOL if np.isfinite(error[i]) else None,
        }
        rates[name] = tst_rate(barrier, s['temperature']) if np.isfinite(barrier) else None
    barriers['experiment_kcal_mol'] = s.get('experiment_kcal_mol', {})
    barriers['temperature'] = s['temperature']
    barriers['kT_kcal_mol'] = KB_EV * s['temperature'] * EV_TO_KCAL_MOL
    return {'pmf': out, 'barriers': orm.Dict(barriers), 'rates': orm.Dict(rates)}
