"""``mlff.campaign.assess``: judge one umbrella round of a campaign against its stop rule (a calcfunction).

The science is in :mod:`aiida_mlff.core.convergence`; this reads the round's nodes and records the verdict, so the
campaign's decision to stop or go on links back to the MD, the PMF and the barriers it was made from.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.core.colvars import cv_from_spec
from aiida_mlff.core.convergence import (
    KCAL_MOL_PER_EV,
    barrier_errors_95,
    error_sources,
    judge,
    next_step,
    pmf_change,
    region_cap,
    round_score,
    window_trust,
)

__all__ = ['assess_round', 'window_deviations']


def window_deviations(runs: dict, equilibration_time: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per umbrella window (by centre, CV internal unit): the deviations of its production frames (eV/Å).

    ``runs`` maps a key to ``{'colvars': ArrayData, 'deviations': ArrayData, 'status': Dict}`` of one MD run; a
    replica that blew up is left out (it was run again, or given up on). Frames before ``equilibration_time`` (fs)
    are not production. Windows that ran in several runs are pooled.
    """
    pooled: dict[float, list[np.ndarray]] = {}
    for key in sorted(runs):
        run = runs[key]
        centers = run['colvars'].get_array('centers')[:, 0]
        time = run['colvars'].get_array('time')
        deviation = run['deviations'].get_array('max_force_deviation')  # (F, R)
        status = run['status'].get_dict().get('status', []) if 'status' in run else []
        production = time >= equilibration_time - 1e-9
        for r, center in enumerate(centers):
            if r < len(status) and status[r] == 'blown_up':
                continue
            pooled.setdefault(round(float(center), 9), []).append(deviation[production, r])
    order = sorted(pooled)
    return np.array(order), [np.concatenate(pooled[c]) for c in order]


def _pmf_kcal_mol(pmf: orm.XyData) -> tuple[np.ndarray, np.ndarray]:
    _, grid, _ = pmf.get_x()
    free = {name: values for name, values, _ in pmf.get_y()}['free_energy']
    return np.asarray(grid, dtype=float), np.asarray(free, dtype=float) * KCAL_MOL_PER_EV


def _sources(pmf: orm.XyData, barriers: dict) -> dict:
    """Sampling and committee parts of every barrier's error (kcal/mol), from the PMF's columns."""
    _, grid, _ = pmf.get_x()
    columns = {name: np.asarray(values, dtype=float) * KCAL_MOL_PER_EV for name, values, _ in pmf.get_y()}
    members = [v for k, v in columns.items() if k.startswith('member_')]
    spread = np.nanstd(members, axis=0) if len(members) > 1 else np.zeros_like(columns['free_energy'])
    bootstrap = columns.get('bootstrap_error', np.zeros_like(spread))
    period = cv_from_spec(barriers['cv']).file_period if barriers.get('cv') else None
    return error_sources(barriers, np.asarray(grid, dtype=float), bootstrap, spread, period)


@calcfunction
def assess_round(settings: orm.Dict, pmf: orm.XyData, barriers: orm.Dict, **nodes) -> orm.Dict:
    """The verdict on one round: every criterion's value against its target, the windows' trust, a score.

    ``settings``: ``round``, ``trust_upper`` (eV/Å), ``trust_quantile``, ``scale`` (calibration of the committee
    deviation), ``equilibration_time`` (fs), ``dropped`` (centres of windows given up on, any unit: only counted),
    ``targets`` (``barrier_error_kcal_mol``, ``untrusted_fraction``, ``pmf_change_kcal_mol``).
    ``pmf``, ``barriers``: this round's :func:`~aiida_mlff.calculations.states.pmf_states` outputs; ``nodes``:
    ``previous_pmf`` (the last round's, to measure the change) and ``colvars_K``, ``deviations_K``, ``status_K`` of
    each MD run ``K`` of the round.
    """
    s = settings.get_dict()
    runs: dict[str, dict] = {}
    for label, node in nodes.items():
        if label == 'previous_pmf':
            continue
        kind, key = label.split('_', 1)
        runs.setdefault(key, {})[kind] = node
    centers, deviations = window_deviations(runs, float(s['equilibration_time']))
    dropped = list(s.get('dropped') or [])
    trust = window_trust(
        [*deviations, *[np.array([])] * len(dropped)], float(s['trust_upper']), float(s['trust_quantile']), s['scale']
    )
    table = barriers.get_dict()
    change = None
    if 'previous_pmf' in nodes:
        change = pmf_change(_pmf_kcal_mol(nodes['previous_pmf']), _pmf_kcal_mol(pmf), region_cap(table))
    verdict = judge(barrier_errors_95(table), trust.fraction_above, change, s['targets'])
    sources = _sources(pmf, table)
    n_measured = len(centers)
    return orm.Dict(
        {
            'round': int(s['round']),
            **verdict,
            'score': round_score(verdict['criteria']),
            'error_sources': sources,
            'next': next_step(verdict, sources),
            'n_windows': n_measured + len(dropped),
            'windows_untrusted': trust.n_untrusted,
            'n_frames': trust.n_frames,
            'n_frames_above': trust.n_above,
            'untrusted_centers': [float(c) for c in centers[trust.untrusted[:n_measured]]],
            'window_quantile': [float(q) for q in trust.quantile[:n_measured]],
            'window_centers': [float(c) for c in centers],
            'dropped': dropped,
            'scale': float(s['scale']),
            'trust_upper': float(s['trust_upper']),
            'trust_quantile': float(s['trust_quantile']),
        }
    )
