"""Free-energy surfaces in two CVs as nodes: ``mlff.umbrella.surface`` (2-D umbrella grid -> WHAM or MBAR).

The node format is shared with 2-D metadynamics.

A surface node is an ``ArrayData`` with ``x_edges``, ``y_edges`` (internal CV units), ``free_energy`` and ``error``
(eV, minimum 0, NaN without samples), optional ``from_bias`` (metadynamics), the basins and the minimum free-energy
paths between the deepest and the next ones (``path_<k>_points`` in file units, ``path_<k>_free_energy`` eV), and
attributes ``temperature``, ``names``, ``units``, ``file_units``, ``periods``, ``estimator``, ``warnings``,
``minima`` and ``paths`` (positions in file units, energies in eV).
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.core.colvars import cv_from_spec
from aiida_mlff.core.enhanced import surface_summary
from aiida_mlff.core.fes2d import mbar2d, wham2d

__all__ = ['surface_node', 'umbrella_surface']

SURFACE_ESTIMATORS = {'wham': wham2d, 'mbar': mbar2d}


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def surface_node(fes, cvs, from_bias: np.ndarray | None = None) -> orm.ArrayData:
    """An ``ArrayData`` of a :class:`~aiida_mlff.core.fes2d.FreeEnergySurface` on the CVs ``cvs``, with its analysis."""
    node = orm.ArrayData()
    node.set_array('x_edges', np.asarray(fes.edges[0], dtype=float))
    node.set_array('y_edges', np.asarray(fes.edges[1], dtype=float))
    node.set_array('free_energy', np.asarray(fes.free_energy, dtype=float))
    node.set_array('error', np.asarray(fes.error, dtype=float))
    if from_bias is not None:
        node.set_array('from_bias', np.asarray(from_bias, dtype=float))
    attributes = node.base.attributes
    attributes.set('temperature', float(fes.temperature))
    attributes.set('names', [cv.name for cv in cvs])
    attributes.set('units', [cv.unit for cv in cvs])
    attributes.set('file_units', [cv.file_unit for cv in cvs])
    attributes.set('periods', [cv.period for cv in cvs])
    attributes.set('estimator', fes.estimator)
    attributes.set('warnings', [str(w) for w in fes.warnings])

    def in_file_units(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        return np.stack([np.asarray(cv.to_file(points[:, d]), dtype=float) for d, cv in enumerate(cvs)], axis=-1)

    summary = surface_summary(fes)
    minima = [
        {
            'position': in_file_units(m['position'])[0].tolist(),
            'free_energy': _number(m['free_energy']),
            'error': _number(m['error']),
            'depth': _number(m['depth']),
        }
        for m in summary['minima']
    ]
    paths = []
    for k, p in enumerate(summary['paths']):
        node.set_array(f'path_{k}_points', in_file_units(p['points']))
        node.set_array(f'path_{k}_free_energy', p['free_energy'])
        paths.append(
            {
                'from': 0,
                'to': p['to'],
                'saddle': in_file_units(p['saddle'])[0].tolist(),
                **{key: _number(p[key]) for key in ('barrier_forward', 'barrier_reverse', 'error_forward')},
                'error_reverse': _number(p['error_reverse']),
                'converged': p['converged'],
            }
        )
    attributes.set('minima', minima)
    attributes.set('paths', paths)
    return node


@calcfunction
def umbrella_surface(settings: orm.Dict, **runs) -> orm.ArrayData:
    """The free-energy surface of a 2-D umbrella grid (WHAM or MBAR), its basins and minimum free-energy paths.

    ``settings``: ``cvs`` (two CV specs), ``kappa`` (two, eV per internal unit squared), ``temperature`` (K),
    ``timestep`` (fs), ``equilibration_steps``, ``estimator``, ``bins``, ``bootstrap``, optional ``exclude`` (run key
    -> replicas left out). ``runs``: ``colvars_K`` of each MD run ``K`` (windows' centres in ``centers`` (W, 2)).
    """
    s = settings.get_dict()
    cvs = [cv_from_spec(c) for c in s['cvs']]
    eq_time = float(s['equilibration_steps']) * float(s['timestep'])
    samples, centers = [], []
    for label, colvars in sorted(runs.items()):
        key = label.split('_', 1)[1]
        values = colvars.get_array('values')[..., :2]
        keep = colvars.get_array('time') >= eq_time - 1e-9
        for r in range(values.shape[1]):
            if r in (s.get('exclude') or {}).get(key, ()):
                continue
            x = values[keep, r]
            samples.append(x[np.isfinite(x).all(axis=1)])
            centers.append(colvars.get_array('centers')[r, :2])
    fes = SURFACE_ESTIMATORS[s.get('estimator', 'wham')](
        samples,
        np.asarray(centers),
        np.asarray(s['kappa'], dtype=float),
        float(s['temperature']),
        bins=(int(s['bins']), int(s['bins'])),
        periods=tuple(cv.period for cv in cvs),
        bootstrap=int(s.get('bootstrap', 0)),
        names=tuple(cv.name for cv in cvs),
        units=tuple(cv.unit for cv in cvs),
    )
    return surface_node(fes, cvs)
