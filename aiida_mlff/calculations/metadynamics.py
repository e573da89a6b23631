"""``mlff.metadynamics.free_energy``: the free energy of a metadynamics run, as a calcfunction linked to its MD."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.calculations.surface import surface_node
from aiida_mlff.calculations.wham import barrier_outputs
from aiida_mlff.core.colvars import cv_from_spec
from aiida_mlff.core.enhanced import metadynamics_free_energies
from aiida_mlff.core.wham import KB_EV

__all__ = ['metadynamics_free_energy']


def _pmf_node(reweighted, from_bias, name: str, unit: str, temperature: float) -> orm.XyData:
    """One CV: the reweighted free energy with its block error, and the bias's estimate, as the umbrella's PMF."""
    xy = orm.XyData()
    xy.set_x(np.asarray(reweighted.grid), name, unit)
    error = np.asarray(reweighted.error, dtype=float)
    columns = [np.asarray(reweighted.free_energy), error, np.nan_to_num(error, nan=0.0), from_bias.free_energy]
    xy.set_y(columns, ['free_energy', 'error', 'bootstrap_error', 'from_bias'], ['eV'] * 4)
    xy.base.attributes.set('temperature', temperature)
    xy.base.attributes.set('kT_eV', KB_EV * temperature)
    xy.base.attributes.set('estimator', 'metadynamics')
    return xy


@calcfunction
def metadynamics_free_energy(settings: orm.Dict, colvars: orm.ArrayData, thermo: orm.ArrayData) -> dict:
    """Free energy of a metadynamics MD run: reweighted frames (block-analysis error) and the final bias's estimate.

    ``settings``: ``bias`` (the job-file spec of the metadynamics bias, internal units), ``temperature`` (K),
    ``bins``, ``discard_fraction``, ``blocks``, optional ``basins``, ``name`` and ``unit`` of the first CV (internal
    units). One CV gives ``pmf`` (XyData like ``mlff.wham``'s, plus the column ``from_bias``), ``barrier`` and
    ``rate``; two CVs give ``fes`` (ArrayData).
    """
    s = settings.get_dict()
    hills = {key: colvars.get_array(f'metad_hills_{key}') for key in ('centers', 'heights')}
    bias_energy = thermo.get_array('bias_energy')
    reweighted, from_bias = metadynamics_free_energies(
        s['bias'],
        float(s['temperature']),
        colvars.get_array('values'),
        bias_energy,
        colvars.get_array('metad_ct'),
        hills,
        int(s['bins']),
        float(s['discard_fraction']),
        int(s['blocks']),
    )
    if len(s['bias']['cvs']) == 2:
        cvs = [cv_from_spec(c) for c in s['bias']['cvs']]
        return {'fes': surface_node(reweighted, cvs, from_bias=from_bias.free_energy)}
    pmf = _pmf_node(reweighted, from_bias, s.get('name', 'cv'), s.get('unit', ''), float(s['temperature']))
    return {'pmf': pmf, **barrier_outputs(reweighted, s.get('basins'), pmf)}
