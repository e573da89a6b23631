"""Is a free-energy answer converged? The campaign's stop rule, stated in the quantities a user cares about.

Three criteria, each a value against a target (:data:`aiida_mlff.core.options.CONVERGENCE` holds the targets):

* ``barrier_error``: the 95 % half-width (1.96 sigma) of every named barrier, forward and backward, where sigma
  already combines the bootstrap error and the committee members' spread (``aiida_mlff.core.states``), kcal/mol;
* ``untrusted_fraction``: the fraction of umbrella production frames whose calibrated committee force deviation
  is at or above ``trust_upper`` (windows that were given up on count with all their frames);
* ``pmf_change``: the RMS change of the PMF between the last two rounds (the constant offset removed), over the
  region that matters: below the highest barrier top + 1 kcal/mol, kcal/mol. Undefined in the first round.

A window is judged on a high quantile of its frames' calibrated deviations (default the 90th percentile), not on its
single worst frame. Units: deviations in eV/Å, free energies in kcal/mol unless named ``_ev``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    'KCAL_MOL_PER_EV',
    'Z95',
    'WindowTrust',
    'barrier_errors_95',
    'error_sources',
    'judge',
    'next_step',
    'pmf_change',
    'region_cap',
    'round_score',
    'window_trust',
]

KCAL_MOL_PER_EV = 23.060547830619
Z95 = 1.959963984540054  # two-sided 95 % quantile of the normal distribution
REGION_MARGIN_KCAL_MOL = 1.0  # the PMF change is measured up to the highest barrier top plus this


@dataclass
class WindowTrust:
    """Per window: a high quantile of the calibrated deviations of its production frames, and the verdict.

    Attributes
    ----------
    quantile
        (W,) eV/Å; ``inf`` for a window without frames (given up on after blowing up).
    untrusted
        (W,) bool: quantile >= ``upper``.
    n_frames, n_above
        Production frames in all, and those whose calibrated deviation is >= ``upper`` (a window without frames
        counts as ``frames_per_window`` frames above, the mean of the others).
    """

    quantile: np.ndarray
    untrusted: np.ndarray
    n_frames: int
    n_above: int
    upper: float

    @property
    def fraction_above(self) -> float:
        """Fraction of production frames at or above the upper trust level (0 without frames)."""
        return self.n_above / self.n_frames if self.n_frames else 0.0

    @property
    def n_untrusted(self) -> int:
        """Windows whose deviation quantile is at or above the upper trust level."""
        return int(np.count_nonzero(self.untrusted))


def window_trust(
    deviations: Sequence[np.ndarray], upper: float, quantile: float = 0.9, scale: float = 1.0
) -> WindowTrust:
    """Judge each window on the ``quantile`` of its frames' deviations times the calibration ``scale``.

    ``deviations``: per window, the max committee force deviation of each production frame (eV/Å); NaN (frames
    after a replica stopped) is ignored; an empty window (or one with only NaN) was given up on and is untrusted.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f'quantile must be in (0, 1], got {quantile}')
    finite = [np.asarray(d, dtype=float).ravel() for d in deviations]
    finite = [scale * d[np.isfinite(d)] for d in finite]
    sizes = [len(d) for d in finite if len(d)]
    per_window = round(float(np.mean(sizes))) if sizes else 1
    q = np.array([np.quantile(d, quantile) if len(d) else np.inf for d in finite])
    n_frames = sum(len(d) if len(d) else per_window for d in finite)
    n_above = sum(int(np.count_nonzero(d >= upper)) if len(d) else per_window for d in finite)
    return WindowTrust(quantile=q, untrusted=q >= upper, n_frames=n_frames, n_above=n_above, upper=upper)


def barrier_errors_95(barriers: Mapping) -> dict[str, float]:
    """Per named transition: the larger 95 % half-width (kcal/mol) of its forward and backward barrier.

    ``barriers`` is the ``barriers`` table of :func:`aiida_mlff.calculations.states.pmf_states` (errors 1 sigma);
    a barrier whose error is unknown (NaN or missing) counts as infinitely uncertain.
    """
    out = {}
    for name, t in (barriers.get('transitions') or {}).items():
        errors = [t.get('forward_error_kcal_mol'), t.get('backward_error_kcal_mol')]
        errors = [np.inf if e is None or not np.isfinite(e) else float(e) for e in errors]
        out[name] = Z95 * max(errors)
    return out


def region_cap(barriers: Mapping | None) -> float | None:
    """The highest barrier top above the global minimum + the margin (kcal/mol); None without transitions."""
    if not barriers or not barriers.get('transitions'):
        return None
    states = barriers.get('states') or {}
    tops = []
    for t in barriers['transitions'].values():
        base = (states.get(t.get('from')) or {}).get('kcal_mol', 0.0) or 0.0
        tops.append(float(base) + float(t['forward_kcal_mol']))
    return max(tops) + REGION_MARGIN_KCAL_MOL


def pmf_change(
    previous: tuple[np.ndarray, np.ndarray],
    current: tuple[np.ndarray, np.ndarray],
    cap_kcal_mol: float | None = None,
) -> float:
    """RMS change (kcal/mol) between two PMFs ``(grid, free energy in kcal/mol)``, the constant offset removed.

    The current PMF is interpolated onto the previous grid (same CV unit); only points where both are finite and
    at least one is at or below ``cap_kcal_mol`` count. NaN when no point is left.
    """
    x0, f0 = (np.asarray(a, dtype=float) for a in previous)
    x1, f1 = (np.asarray(a, dtype=float) for a in current)
    ok1 = np.isfinite(f1)
    if ok1.sum() < 2:
        return float('nan')
    order = np.argsort(x1[ok1])
    xs, fs = x1[ok1][order], f1[ok1][order]
    inside = (x0 >= xs[0]) & (x0 <= xs[-1]) & np.isfinite(f0)
    g1 = np.interp(x0[inside], xs, fs)
    g0 = f0[inside]
    if cap_kcal_mol is not None:
        keep = np.minimum(g0, g1) <= cap_kcal_mol
        g0, g1 = g0[keep], g1[keep]
    if not len(g0):
        return float('nan')
    d = g1 - g0
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def judge(
    errors_95: Mapping[str, float],
    untrusted_fraction: float,
    change: float | None,
    targets: Mapping,
) -> dict:
    """Each criterion's value, target and verdict, and whether all hold (``converged``).

    ``targets``: ``barrier_error_kcal_mol``, ``untrusted_fraction``, ``pmf_change_kcal_mol``. With no named barrier
    the barrier criterion holds vacuously only if there is nothing to measure; a PMF change not yet measurable
    (first round) fails.
    """
    worst = max(errors_95.values()) if errors_95 else 0.0
    change_value = None if change is None or not np.isfinite(change) else float(change)
    criteria = {
        'barrier_error': {
            'value': _finite(worst),
            'target': float(targets['barrier_error_kcal_mol']),
            'passed': bool(worst <= targets['barrier_error_kcal_mol']),
            'unit': 'kcal/mol',
            'per_barrier': {k: _finite(v) for k, v in errors_95.items()},
        },
        'untrusted_fraction': {
            'value': float(untrusted_fraction),
            'target': float(targets['untrusted_fraction']),
            'passed': bool(untrusted_fraction <= targets['untrusted_fraction']),
            'unit': '',
        },
        'pmf_change': {
            'value': change_value,
            'target': float(targets['pmf_change_kcal_mol']),
            'passed': change_value is not None and change_value <= targets['pmf_change_kcal_mol'],
            'unit': 'kcal/mol',
        },
    }
    failed = [name for name, c in criteria.items() if not c['passed']]
    return {'criteria': criteria, 'failed': failed, 'converged': not failed}


def round_score(criteria: Mapping) -> float:
    """How far a round is from the targets that a single round decides (barrier error, untrusted fraction).

    The larger of value / target of the two; lower is better (<= 1: both met). The PMF change compares two rounds
    and is left out, so that the better of two rounds can be told.
    """
    ratios = []
    for name in ('barrier_error', 'untrusted_fraction'):
        c = criteria[name]
        value = np.inf if c['value'] is None else c['value']
        ratios.append(value / c['target'] if c['target'] > 0 else (0.0 if value <= 0 else np.inf))
    return float(max(ratios))


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _nearest(grid: np.ndarray, value: float, period: float | None) -> int:
    d = np.asarray(grid, dtype=float) - value
    if period is not None:
        d = d - period * np.round(d / period)
    return int(np.argmin(np.abs(d)))


def error_sources(
    barriers: Mapping, grid: np.ndarray, bootstrap: np.ndarray, spread: np.ndarray, period: float | None = None
) -> dict[str, dict[str, float]]:
    """Per named transition: the sampling and the committee part of its larger barrier error (1 sigma, kcal/mol).

    ``grid`` (CV file unit, as the ``barriers`` positions), ``bootstrap`` (the PMF's bootstrap error) and ``spread``
    (the standard deviation of the committee members' PMFs), both in kcal/mol. A barrier's error combines the
    errors at its top and at the minimum it is measured from, as :mod:`aiida_mlff.core.states` does; the direction
    (forward or backward) with the larger total is reported. ``period`` in the file unit, for periodic CVs.
    """
    states = barriers.get('states') or {}
    out = {}
    for name, t in (barriers.get('transitions') or {}).items():
        top = _nearest(grid, float(t['transition_state']), period)
        parts = []
        for end in (t.get('from'), t.get('to')):
            if end not in states:
                continue
            low = _nearest(grid, float(states[end]['minimum']), period)
            sampling = float(np.hypot(np.nan_to_num(bootstrap[top]), np.nan_to_num(bootstrap[low])))
            committee = float(np.hypot(np.nan_to_num(spread[top]), np.nan_to_num(spread[low])))
            parts.append({'sampling': sampling, 'committee': committee})
        if parts:
            out[name] = max(parts, key=lambda p: p['sampling'] ** 2 + p['committee'] ** 2)
    return out


def next_step(verdict: Mapping, sources: Mapping[str, Mapping[str, float]]) -> dict[str, bool | str]:
    """What the next round needs: new labels and a refit, longer sampling, or both; and why.

    Labels when frames are untrusted, when the PMF still moves with the model, or when the committee part of a
    failing barrier's error is at least half its variance; longer sampling when the sampling (bootstrap) part is.
    """
    failed = set(verdict['failed'])
    per_barrier = verdict['criteria']['barrier_error']['per_barrier']
    target = verdict['criteria']['barrier_error']['target']
    failing = [name for name, e in per_barrier.items() if e is None or e > target]
    sampling = committee = 0.0
    for name in failing:
        parts = sources.get(name)
        if parts is None:  # an unknown error: both could help
            sampling = committee = np.inf
            continue
        sampling, committee = max(sampling, parts['sampling'] ** 2), max(committee, parts['committee'] ** 2)
    label = bool({'untrusted_fraction', 'pmf_change'} & failed) or (bool(failing) and committee >= sampling)
    sample_more = bool(failing) and sampling >= committee
    reasons = []
    if 'untrusted_fraction' in failed:
        reasons.append('frames are untrusted')
    if 'pmf_change' in failed:
        reasons.append('the PMF still changes between rounds')
    if failing:
        source = 'sampling' if sampling >= committee else 'committee spread'
        reasons.append(f'the error of {", ".join(sorted(failing))} comes mostly from the {source}')
    return {'label': label, 'sample_more': sample_more, 'why': '; '.join(reasons)}
