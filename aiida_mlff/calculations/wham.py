"""``mlff.wham``: the PMF of umbrella sampling (WHAM or MBAR) as a calcfunction, so it links back to its MD runs."""

from __future__ import annotations

import warnings

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.core.free_energy import combined_error, member_pmfs
from aiida_mlff.core.mbar import mbar
from aiida_mlff.core.options import UMBRELLA
from aiida_mlff.core.wham import KB_EV, tst_rate, wham

__all__ = ['ESTIMATORS', 'barrier_outputs', 'collect_windows', 'wham_pmf']

EV_TO_KCAL_MOL = 23.060547830619

#: the PMF estimators by the name of the ``estimator`` option; both take the same arguments and return a ``PMF``
ESTIMATORS = {'wham': wham, 'mbar': mbar}


def collect_windows(settings: dict, runs: dict) -> dict:
    """Pool the production samples of every window from the outputs of MD runs.

    ``runs`` maps a key to ``{'colvars': ArrayData, 'deviations': ArrayData}`` of one ``mlff.md`` run; each replica is
    one window whose centre is in ``colvars.get_array('centers')[replica, 0]``. Frames before ``equilibration_steps``
    are discarded, and so are frames after a replica stopped (NaN). ``settings['exclude']`` maps a key to replicas
    left out altogether (windows that blew up).
    """
    eq_time = float(settings['equilibration_steps']) * float(settings['timestep'])
    centers, samples, energies, deviations = [], [], [], []
    exclude = settings.get('exclude') or {}
    for key in sorted(runs):
        colvars = runs[key]['colvars']
        values = colvars.get_array('values')[..., 0]  # (F, R) first CV = the biased one
        time = colvars.get_array('time')
        keep = time >= eq_time - 1e-9
        member = None
        devs = runs[key]['deviations']
        if 'member_energies' in devs.get_arraynames():
            member = devs.get_array('member_energies')  # (F, R, M)
        max_dev = devs.get_array('max_force_deviation')
        for r in range(values.shape[1]):
            if r in exclude.get(key, ()):  # a window that blew up: its samples before the blow-up are not trusted
                continue
            s = values[keep, r]
            ok = np.isfinite(s)
            centers.append(float(colvars.get_array('centers')[r, 0]))
            samples.append(s[ok])
            deviations.append(float(np.nanmax(max_dev[keep, r])) if np.isfinite(max_dev[keep, r]).any() else 0.0)
            if member is not None:
                e = member[keep, r][ok]
                energies.append(e - e.mean(axis=1, keepdims=True))
    order = np.argsort(centers, kind='stable')
    return {
        'centers': np.array(centers)[order],
        'samples': [samples[i] for i in order],
        'energy_differences': [energies[i] for i in order] if len(energies) == len(centers) else None,
        'max_deviation': np.array(deviations)[order],
    }


@calcfunction
def wham_pmf(settings: orm.Dict, **runs) -> dict:
    """Potential of mean force, per-member PMFs, barrier and TST rate from umbrella MD runs.

    ``settings``: ``kappa`` (eV per CV unit squared), ``temperature`` (K), ``timestep`` (fs), ``equilibration_steps``,
    ``estimator`` (``'wham'``, the default, or ``'mbar'``), ``bins``, ``bootstrap``, ``period`` (None or e.g. 2 pi),
    ``closed`` (whether the windows go around the whole period, so that the last and first are neighbours),
    ``min_overlap``, optional ``basins`` (two CV ranges), ``unit`` and ``name`` of the CV. ``runs``: ``colvars_K`` and
    ``deviations_K`` ArrayData of each MD run ``K``. The PMF node records the estimator in its ``estimator`` attribute.
    """
    defaults = ('estimator', 'bins', 'bootstrap', 'min_overlap', 'seed')
    s = {**{key: UMBRELLA[key].default for key in defaults}, **settings.get_dict()}
    if s['estimator'] not in ESTIMATORS:
        raise ValueError(f'settings.estimator: {s["estimator"]!r} is not one of {sorted(ESTIMATORS)}')
    estimator = ESTIMATORS[s['estimator']]
    grouped: dict[str, dict] = {}
    for label, node in runs.items():
        kind, key = label.split('_', 1)
        grouped.setdefault(key, {})[kind] = node
    data = collect_windows(s, grouped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        pmf = estimator(
            data['samples'],
            data['centers'],
            s['kappa'],
            s['temperature'],
            bins=s['bins'],
            period=s.get('period'),
            bootstrap=s['bootstrap'],
            min_overlap=s['min_overlap'],
            seed=s['seed'],
        )
    members = None
    if data['energy_differences'] is not None:
        members = member_pmfs(
            pmf, data['samples'], data['centers'], s['kappa'], np.concatenate(data['energy_differences'])
        )
    error = combined_error(pmf.error, members)

    xy = orm.XyData()
    grid = np.asarray(pmf.grid)
    xy.set_x(grid, s.get('name', 'cv'), s.get('unit', ''))
    arrays = [np.asarray(pmf.free_energy), error, np.nan_to_num(np.asarray(pmf.error), nan=0.0)]
    names = ['free_energy', 'error', 'bootstrap_error']
    if members is not None:
        arrays.extend(members)
        names.extend(f'member_{m}' for m in range(len(members)))
    xy.set_y(arrays, names, ['eV'] * len(arrays))
    xy.base.attributes.set('temperature', s['temperature'])
    xy.base.attributes.set('kT_eV', KB_EV * s['temperature'])
    xy.base.attributes.set('estimator', s['estimator'])

    n = len(data['centers'])
    neighbours = [(i, i + 1) for i in range(n - 1)]
    if s.get('period') is not None and s.get('closed', True) and n > 2:  # windows around the whole period
        neighbours.append((n - 1, 0))
    overlap_pairs = [float(pmf.overlap[i, j]) for i, j in neighbours]
    overlap = orm.ArrayData()
    overlap.set_array('matrix', np.asarray(pmf.overlap))
    overlap.set_array('centers', data['centers'])
    overlap.set_array('neighbour_overlap', np.asarray(overlap_pairs))
    overlap.set_array('max_force_deviation', data['max_deviation'])
    overlap.set_array('samples_per_window', np.array([len(x) for x in data['samples']]))
    low = [
        [float(data['centers'][i]), float(data['centers'][j])]
        for (i, j), o in zip(neighbours, overlap_pairs, strict=True)
        if o < s['min_overlap']
    ]
    overlap.base.attributes.set('low_overlap_pairs', low)
    overlap.base.attributes.set('warnings', [str(w.message) for w in caught])

    outputs = {'pmf': xy, 'overlap': overlap}
    outputs.update(barrier_outputs(pmf, s.get('basins'), overlap))
    return outputs


def barrier_outputs(pmf, basins, diagnostics: orm.Node) -> dict:
    """``barrier`` (Float, eV; kcal/mol, reverse, transition state and basins in attributes) and ``rate`` (TST, s^-1).

    Where the PMF has no barrier between two basins, nothing is returned and ``diagnostics`` gets the reason in its
    ``barrier_error`` attribute.
    """
    try:
        barrier = pmf.barrier(basins)
    except ValueError as exception:
        diagnostics.base.attributes.set('barrier_error', str(exception))
        return {}
    out = orm.Float(barrier.forward)
    out.base.attributes.set('kcal_mol', barrier.forward * EV_TO_KCAL_MOL)
    out.base.attributes.set('reverse_eV', barrier.reverse)
    out.base.attributes.set('transition_state', barrier.transition_state)
    out.base.attributes.set('basins', [barrier.basin_a, barrier.basin_b])
    return {'barrier': out, 'rate': orm.Float(tst_rate(barrier.forward, pmf.temperature))}
