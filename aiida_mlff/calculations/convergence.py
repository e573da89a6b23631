"""``mlff.campaign.assess``: judge one round of a campaign against its stop rule (a calcfunction).

A round is umbrella sampling (its windows are judged) or metadynamics (each walker is judged as a window).

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


def window_deviations(
    runs: dict, equilibration_time: float | None = None, discard_fraction: float | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per window: its key and the deviations of its production frames (eV/Å).

    ``runs`` maps a key to ``{'colvars': ArrayData, 'deviations': ArrayData, 'status': Dict}`` of one MD run; a
    replica that blew up is left out (it was run again, or given up on). Umbrella runs (colvars with ``centers``):
    a window is keyed by its centre (CV internal unit), frames before ``equilibration_time`` (fs) are not
    production, and windows that ran in several runs are pooled. Runs without centres (metadynamics walkers): each
    replica is a window keyed by its index, and the first ``discard_fraction`` of its frames are not production
    (as the reweighting discards them).
    """
    pooled: dict[float, list[np.ndarray]] = {}
    for key in sorted(runs):
        run = runs[key]
        deviation = run['deviations'].get_array('max_force_deviation')  # (F, R)
        status = run['status'].get_dict().get('status', []) if 'status' in run else []
        production = _production_frames(run['colvars'], len(deviation), equilibration_time, discard_fraction)
        for r, window in enumerate(_window_keys(run['colvars'], deviation.shape[1])):
            if r < len(status) and status[r] == 'blown_up':
                continue
            pooled.setdefault(round(float(window), 9), []).append(deviation[production, r])
    order = sorted(pooled)
    return np.array(order), [np.concatenate(pooled[c]) for c in order]


def _window_keys(colvars: orm.ArrayData, n_replicas: int) -> np.ndarray:
    """Umbrella: the bias centre of each replica (CV internal unit); else (walkers): the replica index."""
    if 'centers' in colvars.get_arraynames():
        return colvars.get_array('centers')[:, 0]
    return np.arange(n_replicas, dtype=float)


def _production_frames(
    colvars: orm.ArrayData, n_frames: int, equilibration_time: float | None, discard_fraction: float | None
) -> np.ndarray:
    """Which of the ``n_frames`` frames are production: after ``equilibration_time`` (fs) or ``discard_fraction``."""
    if discard_fraction is not None:
        production = np.zeros(n_frames, dtype=bool)
        production[round(float(discard_fraction) * n_frames) :] = True
        return production
    return colvars.get_array('time') >= float(equilibration_time or 0.0) - 1e-9


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


def _finite_or_none(value: float) -> float | None:
    """``value``, or None when it is not finite (an unknown barrier error makes the score infinite)."""
    return float(value) if np.isfinite(value) else None


def _untrusted_where(keys: np.ndarray, untrusted: np.ndarray, walkers: bool) -> dict:
    """Which windows are untrusted: centres (CV internal unit) of umbrella windows, or indices of walkers."""
    if walkers:
        return {
            'windows_are': 'walkers',
            'untrusted_walkers': [int(k) for k in keys[untrusted]],
            'walkers': [int(k) for k in keys],
        }
    return {
        'windows_are': 'umbrella windows',
        'untrusted_centers': [float(c) for c in keys[untrusted]],
        'window_centers': [float(c) for c in keys],
    }


@calcfunction
def assess_round(settings: orm.Dict, pmf: orm.XyData, barriers: orm.Dict, **nodes) -> orm.Dict:
    """The verdict on one round: every criterion's value against its target, the windows' trust, a score.

    ``settings``: ``round``, ``trust_upper`` (eV/Å), ``trust_quantile``, ``scale`` (calibration of the committee
    deviation), ``equilibration_time`` (fs; umbrella windows) or ``discard_fraction`` (metadynamics: each walker is
    a window, its first frames this fraction), ``dropped`` (centres of windows given up on, any unit: only counted),
    ``targets`` (``barrier_error_kcal_mol``, ``untrusted_fraction``, ``pmf_change_kcal_mol``). The ``score`` is
    None where it is infinite (a barrier whose error is unknown): the worst.
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
    walkers = s.get('discard_fraction') is not None
    centers, deviations = window_deviations(runs, s.get('equilibration_time'), s.get('discard_fraction'))
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
    where = _untrusted_where(centers, trust.untrusted[:n_measured], walkers)
    return orm.Dict(
        {
            'round': int(s['round']),
            **verdict,
            'score': _finite_or_none(round_score(verdict['criteria'])),
            'error_sources': sources,
            'next': next_step(verdict, sources),
            'n_windows': n_measured + len(dropped),
            'windows_untrusted': trust.n_untrusted,
            'n_frames': trust.n_frames,
            'n_frames_above': trust.n_above,
            **where,
            'window_quantile': [_finite_or_none(q) for q in trust.quantile[:n_measured]],
            'dropped': dropped,
            'scale': float(s['scale']),
            'trust_upper': float(s['trust_upper']),
            'trust_quantile': float(s['trust_quantile']),
        }
    )
