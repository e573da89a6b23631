"""Calcfunctions of the campaign's check: the potential relaxed at fixed CV values, compared with pw.x there."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.calculations.wham import EV_TO_KCAL_MOL

__all__ = ['compare_scan', 'relaxed_cv_scan']


@calcfunction
def relaxed_cv_scan(potential, structure: orm.StructureData, settings: orm.Dict) -> dict:
    """Relax ``structure`` with the potential at each value of any collective variable, under a stiff restraint.

    Each relaxation starts from the structure pulled to its value with the bond-keeping surrogate
    (:func:`aiida_mlff.core.restraints.cv_scan` with :func:`~aiida_mlff.core.restraints.bond_surrogate`: bonds and
    angles as in ``structure``, the CV's own bonds free), then relaxes with the potential under a harmonic restraint
    stiffened until the CV is within ``core.restraints.TOLERANCE`` (0.01 Å, 0.5 degrees). Starting every value from
    an intact molecule, not from its neighbour's relaxed structure, keeps one extrapolation of the potential (a
    spurious valley where it has no data) from carrying over to every further value.

    ``settings``: ``cv`` (a CV spec, see :func:`aiida_mlff.core.colvars.cv_from_spec`), ``values`` (file units:
    degrees for angles and dihedrals, Å for lengths), optional ``fmax`` (eV/Å) and ``steps`` (per stiffening round;
    defaults those of :func:`~aiida_mlff.core.restraints.relax_at_cv`).

    Returns the relaxed structures (``s0000``, ... in the order of ``values``) and ``energies``, an ``ArrayData``
    with ``value`` (requested, file units), ``achieved_value`` (file units), ``energy`` (eV, committee mean, without
    the restraint) and ``converged`` (bool); its attributes hold the ``cv`` spec and the file ``unit``.
    """
    from aiida_mlff.core.colvars import cv_from_spec
    from aiida_mlff.core.restraints import bond_surrogate, cv_scan, relax_at_cv

    s = settings.get_dict()
    atoms = structure.get_ase()
    cv = cv_from_spec(s['cv'], n_atoms=len(atoms), where='settings.cv')
    values = np.asarray(s['values'], dtype=float).reshape(-1)
    options = {key: s[key] for key in ('fmax', 'steps') if key in s}
    targets = cv.to_internal(values)
    starts = cv_scan(atoms, bond_surrogate(atoms, cv), cv, targets)
    calculator = potential.load_potential().calculator()
    scan = [
        relax_at_cv(start, calculator, cv, target, **options)
        for (start, _), target in zip(starts, targets, strict=True)
    ]
    outputs = {f's{k:04d}': orm.StructureData(ase=relaxed) for k, (relaxed, _) in enumerate(scan)}
    array = orm.ArrayData()
    array.set_array('value', values)
    array.set_array('achieved_value', np.asarray(cv.to_file(np.array([info['value'] for _, info in scan]))))
    array.set_array('energy', np.array([info['energy'] for _, info in scan]))
    array.set_array('converged', np.array([info['converged'] for _, info in scan], dtype=bool))
    array.base.attributes.set('cv', cv.spec)
    array.base.attributes.set('unit', cv.file_unit)
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
    scan.set_array('value', energies.get_array('value'))
    scan.set_array('achieved_value', energies.get_array('achieved_value'))
    for key in ('cv', 'unit'):
        scan.base.attributes.set(key, energies.base.attributes.get(key, None))
    scan.set_array('mlff', mlff_rel)
    scan.set_array('dft', dft_rel)
    scan.base.attributes.set('units', 'kcal/mol, relative to the minimum of each')
    scan.base.attributes.set('max_abs_difference_kcal_mol', float(np.abs(mlff_rel - dft_rel).max()))
    scan.base.attributes.set('rms_difference_kcal_mol', float(np.sqrt(np.mean((mlff_rel - dft_rel) ** 2))))
    return scan
