"""Metastable states and the transitions between them, read off a potential of mean force (PMF).

Plain numpy. A *state* is a basin of the PMF: a CV range around one minimum. A *transition* joins two states that
are neighbours along the CV; its transition state (TS) is the highest point of the PMF between their minima.

Decisions (each one documented where it is made):

* Unsampled bins (NaN free energy) are dropped; the sampled points on either side become neighbours. A transition
  whose path crosses unsampled bins is flagged (``Transition.unsampled``): its TS and barriers are lower bounds.
  A periodic PMF with unsampled bins is not closed through them: it is cut at its longest unsampled run and
  treated as an open profile from there (no transition through unknown territory; its ends are edges).
* Basins are found by topological persistence: every local minimum starts a basin, and a basin whose barrier to a
  lower one is below ``min_depth`` (default :data:`DEFAULT_MIN_DEPTH_KT` kT) is merged into it, so noise of a fraction
  of kT creates no state.
* A minimum at the border of the sampled region (an end of an open CV, or next to unsampled bins) is reported, as
  such minima are often real (e.g. the dissociated state of a distance CV), but flagged (``State.edge``): its free
  energy and its barriers are bounds, and the windows should be extended.
* Barrier errors combine the per-point errors of the TS and of the minimum as if independent,
  ``sqrt(err(TS)**2 + err(min)**2)``. Each bootstrap PMF is shifted to its own minimum, so the per-point error is
  already relative to the global minimum: for a barrier out of the global minimum this is ``err(TS)``; elsewhere it
  is conservative when the two points' errors are positively correlated (neighbouring bins usually are).

Units: CV values in the CV's internal unit (Å, or radians for angles and dihedrals), free energies and errors in eV,
temperatures in K, rates in s^-1. A range ``(lo, hi)`` of a periodic CV with ``lo > hi`` wraps through the period
boundary (``(2.6, -2.6)`` rad is the arc through pi).
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from aiida_mlff.core.wham import KB_EV, tst_rate

__all__ = [
    'DEFAULT_MIN_DEPTH_KT',
    'State',
    'Transition',
    'compare_barriers',
    'find_states',
    'find_transitions',
    'in_range',
]

#: Default ``min_depth`` of :func:`find_states`, in units of kT: shallower basins are merged into a neighbour.
DEFAULT_MIN_DEPTH_KT = 1.0


@dataclass
class State:
    """A basin of the PMF.

    Attributes
    ----------
    name
        ``'A'``, ``'B'``, ... in CV order, or the user's name.
    lo, hi
        CV range of the basin (CV units); on a periodic CV ``lo > hi`` means it wraps through the period boundary.
    minimum
        CV value of the lowest point of the basin.
    free_energy
        eV, PMF at the minimum relative to the global minimum of the PMF (0).
    error
        eV, per-point error of the PMF at the minimum (NaN when unknown).
    named
        True when the user named (and delimited) the state.
    edge
        True when the minimum lies at the border of the sampled region (free energy and barriers are bounds).
    """

    name: str
    lo: float
    hi: float
    minimum: float
    free_energy: float
    error: float
    named: bool = False
    edge: bool = False


@dataclass
class Transition:
    """A transition between two neighbouring states, over the highest point of the PMF between their minima.

    Attributes
    ----------
    name
        ``'{initial}->{final}'``, or the name of the user's range holding the TS; a TS position is appended when two
        transitions would share a name.
    initial, final
        State names.
    transition_state
        CV value of the TS.
    forward, backward
        eV, barriers from the initial (resp. final) state's minimum to the TS.
    forward_error, backward_error
        eV, ``sqrt(err(TS)**2 + err(minimum)**2)`` (NaN when unknown).
    rate_forward, rate_backward
        s^-1, transition-state-theory rates (:func:`aiida_mlff.core.wham.tst_rate`).
    named
        True when the name comes from the user's ranges.
    unsampled
        True when the path between the minima crosses unsampled bins: the TS and the barriers are lower bounds.
    """

    name: str
    initial: str
    final: str
    transition_state: float
    forward: float
    backward: float
    forward_error: float
    backward_error: float
    rate_forward: float
    rate_backward: float
    named: bool = False
    unsampled: bool = False


# ----------------------------------------------------------------------------------------------------------- ranges
def _width(lo: float, hi: float, period: float | None) -> float:
    """Length of the range ``(lo, hi)`` (CV units); a periodic range with ``lo > hi`` wraps."""
    if period is None:
        if lo > hi:
            raise ValueError(f'range ({lo:.6g}, {hi:.6g}) has lo > hi on a non-periodic CV')
        return hi - lo
    if hi - lo >= period:
        return period
    return float((hi - lo) % period) if lo > hi else hi - lo


def in_range(x: np.ndarray | float, lo: float, hi: float, period: float | None = None) -> np.ndarray:
    """Whether the CV values ``x`` lie in the (closed) range ``(lo, hi)``.

    Parameters
    ----------
    x
        CV values (CV units).
    lo, hi
        The range; on a periodic CV ``lo > hi`` wraps through the period boundary.
    period
        CV period (2 pi for a dihedral in radians) or None.

    Returns
    -------
    numpy.ndarray
        Booleans, the shape of ``x``.
    """
    x = np.asarray(x, dtype=float)
    width = _width(lo, hi, period)
    if period is None:
        return (x >= lo) & (x <= hi)
    tol = 1e-9 * period
    d = np.mod(x - lo, period)
    return (d <= width + tol) | (d >= period - tol)


def _overlap(a: tuple[float, float], b: tuple[float, float], period: float | None) -> bool:
    """Whether two ranges share more than an end point."""
    if period is None:
        return max(a[0], b[0]) < min(a[1], b[1])
    tol = 1e-9 * period
    wa, wb = _width(*a, period), _width(*b, period)
    if wa >= period - tol or wb >= period - tol:
        return True
    return (b[0] - a[0]) % period < wa - tol or (a[0] - b[0]) % period < wb - tol


def _auto_name(k: int) -> str:
    """``A``, ``B``, ..., ``Z``, ``AA``, ``AB``, ..."""
    letters = string.ascii_uppercase
    name = ''
    k += 1
    while k > 0:
        k, r = divmod(k - 1, 26)
        name = letters[r] + name
    return name


# ------------------------------------------------------------------------------------------------------------ basins
class _Profile:
    """The sampled points of a PMF, with their place in the full grid (to see unsampled bins)."""

    def __init__(self, grid: np.ndarray, free_energy: np.ndarray, period: float | None):
        grid = np.asarray(grid, dtype=float).ravel()
        free_energy = np.asarray(free_energy, dtype=float).ravel()
        if grid.shape != free_energy.shape:
            raise ValueError(f'{len(grid)} grid points for {len(free_energy)} free energies')
        order = np.argsort(grid, kind='stable')
        grid, free_energy = grid[order], free_energy[order]
        self.order = order
        self.n_grid = len(grid)
        index = np.flatnonzero(np.isfinite(free_energy))  # place of each sampled point in the grid
        if len(index) == 0:
            raise ValueError('the PMF has no finite point')
        self.ring = period is not None
        if self.ring and len(index) < self.n_grid:  # cut the ring at its longest unsampled run: start right after it
            runs = (np.roll(index, -1) - index) % self.n_grid
            index = np.roll(index, -(int(np.argmax(runs)) + 1))
            self.ring = False
        self.index = index
        self.x = grid[index]
        self.f = free_energy[index] - np.min(free_energy[index])
        self.period = period
        self.n = len(index)

    def neighbours(self, i: int) -> list[int]:
        """Sampled neighbours of sampled point i (across unsampled bins; around the ring when it is closed)."""
        if self.ring:
            return sorted({(i - 1) % self.n, (i + 1) % self.n} - {i})
        return [j for j in (i - 1, i + 1) if 0 <= j < self.n]

    def gap_after(self, i: int) -> bool:
        """Whether unsampled grid bins (or the end of the sampled data) lie between sampled point i and the next."""
        if i == self.n - 1 and not self.ring:
            return True
        return bool((self.index[(i + 1) % self.n] - self.index[i]) % self.n_grid > 1)

    def is_edge(self, i: int) -> bool:
        """Whether sampled point i borders the unsampled region (or an end of the sampled data)."""
        before = self.gap_after(i - 1) if i > 0 else (self.gap_after(self.n - 1) if self.ring else True)
        return bool(before or self.gap_after(i))

    def arc(self, a: int, b: int) -> np.ndarray:
        """Sampled indices from a to b going up the CV (around the ring through its end when ``b < a``)."""
        if b >= a:
            return np.arange(a, b + 1)
        return np.concatenate([np.arange(a, self.n), np.arange(0, b + 1)])

    def highest(self, arc: np.ndarray) -> int:
        """Sampled index of the highest point of the arc (the first one on a tie)."""
        return int(arc[np.argmax(self.f[arc])])

    def arc_has_gap(self, arc: np.ndarray) -> bool:
        """Whether unsampled bins lie inside the arc."""
        return any(self.gap_after(int(i)) for i in arc[:-1])

    def nearest(self, value: float) -> int:
        """Sampled index nearest to the CV value."""
        d = self.x - value
        if self.period is not None:
            d = d - self.period * np.round(d / self.period)
        return int(np.argmin(np.abs(d)))


def _persistent_minima(profile: _Profile, min_depth: float) -> list[int]:
    """Sampled indices of the minima whose basin is at least ``min_depth`` (eV) deep, in CV order.

    Zero-dimensional persistence of the sublevel sets: points are added from the lowest up; a point joining two
    basins is the saddle between them, and the basin with the higher minimum ends there with depth
    ``f(saddle) - f(its minimum)``. The global minimum never ends.
    """
    f = profile.f
    parent = np.full(profile.n, -1)
    lowest: dict[int, int] = {}  # root -> sampled index of the basin's minimum
    kept: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in np.argsort(f, kind='stable'):
        i = int(i)
        roots = sorted(
            {root(j) for j in profile.neighbours(i) if parent[j] >= 0}, key=lambda r: (f[lowest[r]], lowest[r])
        )
        if not roots:  # a new local minimum
            parent[i] = i
            lowest[i] = i
            continue
        parent[i] = roots[0]  # i joins the lower basin; any other one meets it here, at its saddle
        for young in roots[1:]:
            if f[i] - f[lowest[young]] >= min_depth:
                kept.append(lowest[young])
            parent[young] = roots[0]
    kept.append(int(np.argmin(f)))
    return sorted(set(kept))


def find_states(
    grid: np.ndarray,
    free_energy: np.ndarray,
    *,
    period: float | None = None,
    named: Mapping[str, Sequence[float]] | None = None,
    min_depth: float | None = None,
    temperature: float | None = None,
    error: np.ndarray | None = None,
    format_position: Callable[[float], str] | None = None,
) -> list[State]:
    """States (basins) of a PMF, in CV order.

    Parameters
    ----------
    grid
        (K,) CV values of the PMF points (CV units).
    free_energy
        (K,) eV; NaN in unsampled bins (dropped).
    period
        CV period (2 pi for a dihedral in radians) or None for an open CV.
    named
        Name -> ``(lo, hi)`` CV range (CV units; wrapping when periodic and ``lo > hi``). When given, the states are
        exactly these ranges, each with the lowest sampled point inside as its minimum.
    min_depth
        eV. Without ``named``: a basin whose barrier to a lower basin is below this is merged into it. Default
        ``DEFAULT_MIN_DEPTH_KT`` kT (needs ``temperature``).
    temperature
        K, for the default ``min_depth``.
    error
        (K,) eV, per-point error of the PMF (for ``State.error``); NaN when not given.
    format_position
        Writes a CV value (CV units) in the error messages (default ``'{:.4g}'``), e.g. in degrees.

    Returns
    -------
    list of State
        Without ``named``: one state per basin, named ``A``, ``B``, ... in CV order, each range reaching the highest
        points between its minimum and its neighbours' (the ends of the sampled data on an open CV; the whole
        sampled range for a single state).

    Raises
    ------
    ValueError
        When a named range holds no sampled point (the state lies outside the sampled windows), when named ranges
        overlap, or when neither ``min_depth`` nor ``temperature`` is given without ``named``.
    """
    profile, err = _profile_and_error(grid, free_energy, period, error)
    if named:
        return _named_states(profile, err, named, period, format_position or '{:.4g}'.format)
    return _basin_states(profile, err, _min_depth(min_depth, temperature))


def _range_text(r: tuple[float, float], fmt: Callable[[float], str]) -> str:
    """A range ``(lo, hi)`` (CV units) for an error message, each end written by ``fmt``."""
    return f'({fmt(r[0])}, {fmt(r[1])})'


def _check_named_ranges(
    ranges: Mapping[str, tuple[float, float]], period: float | None, fmt: Callable[[float], str]
) -> None:
    """Raise ValueError when a named range (CV units) has ``lo > hi`` on an open CV, or two of them overlap."""
    for name, (lo, hi) in ranges.items():
        if period is None and lo > hi:
            raise ValueError(f'state {name!r}: range {_range_text((lo, hi), fmt)} has lo > hi on a non-periodic CV')
    for (na, ra), (nb, rb) in itertools.combinations(ranges.items(), 2):
        if _overlap(ra, rb, period):
            raise ValueError(
                f'the named states {na!r} {_range_text(ra, fmt)} and {nb!r} {_range_text(rb, fmt)} overlap'
            )


def _named_states(
    profile: _Profile,
    err: np.ndarray,
    named: Mapping[str, Sequence[float]],
    period: float | None,
    fmt: Callable[[float], str],
) -> list[State]:
    """The user's states: each named ``(lo, hi)`` range (CV units) with its lowest sampled point, in CV order.

    ``err`` is the per-point error (eV) of the sampled points; ``fmt`` writes a CV value in the error messages.
    """
    ranges = {str(name): (float(r[0]), float(r[1])) for name, r in named.items()}
    _check_named_ranges(ranges, period, fmt)
    x, f = profile.x, profile.f
    states: list[State] = []
    for name, (lo, hi) in ranges.items():
        inside = np.flatnonzero(in_range(x, lo, hi, period))
        if len(inside) == 0:
            raise ValueError(
                f'state {name!r}: no sampled PMF point in its range {_range_text((lo, hi), fmt)}; it lies outside '
                f'the sampled windows, which cover ({fmt(x[0])}, {fmt(x[-1])})'
            )
        m = int(inside[np.argmin(f[inside])])
        states.append(State(name, lo, hi, float(x[m]), float(f[m]), float(err[m]), True, profile.is_edge(m)))
    return sorted(states, key=lambda s: profile.nearest(s.minimum))


def _min_depth(min_depth: float | None, temperature: float | None) -> float:
    """``min_depth`` in eV: as given, else :data:`DEFAULT_MIN_DEPTH_KT` kT at ``temperature`` (K)."""
    if min_depth is not None:
        return float(min_depth)
    if temperature is None:
        raise ValueError(
            f'find_states needs min_depth (eV) or temperature (K, for the default of {DEFAULT_MIN_DEPTH_KT:g} kT)'
        )
    return float(DEFAULT_MIN_DEPTH_KT * KB_EV * float(temperature))


def _basin_range(profile: _Profile, minima: Sequence[int], s: int) -> tuple[float, float]:
    """CV range (CV units) of basin ``s`` of the sampled ``minima`` (in CV order).

    It reaches the highest points between its minimum and its neighbours' (the ends of the sampled data on an open
    CV; the whole sampled range for a single basin).
    """
    x, k = profile.x, len(minima)
    if k == 1:
        return float(x[0]), float(x[-1])
    m = minima[s]
    lo = float(x[profile.highest(profile.arc(minima[s - 1], m))]) if s > 0 or profile.ring else float(x[0])
    hi = float(x[profile.highest(profile.arc(m, minima[(s + 1) % k]))]) if s < k - 1 or profile.ring else float(x[-1])
    return lo, hi


def _basin_states(profile: _Profile, err: np.ndarray, min_depth: float) -> list[State]:
    """One state per basin at least ``min_depth`` (eV) deep, named ``A``, ``B``, ... in CV order.

    ``err`` is the per-point error (eV) of the sampled points.
    """
    x, f = profile.x, profile.f
    minima = _persistent_minima(profile, min_depth)
    states: list[State] = []
    for s, m in enumerate(minima):
        lo, hi = _basin_range(profile, minima, s)
        states.append(State(_auto_name(s), lo, hi, float(x[m]), float(f[m]), float(err[m]), False, profile.is_edge(m)))
    return states


def _profile_and_error(
    grid: np.ndarray, free_energy: np.ndarray, period: float | None, error: np.ndarray | None
) -> tuple[_Profile, np.ndarray]:
    """The sampled points of a PMF and their per-point error (eV), NaN where unknown."""
    profile = _Profile(grid, free_energy, period)
    if error is None:
        return profile, np.full(profile.n, np.nan)
    error = np.asarray(error, dtype=float).ravel()
    if len(error) != profile.n_grid:
        raise ValueError(f'{len(error)} errors for {profile.n_grid} grid points')
    return profile, error[profile.order][profile.index]


# ------------------------------------------------------------------------------------------------------- transitions
def find_transitions(
    grid: np.ndarray,
    free_energy: np.ndarray,
    error: np.ndarray | None,
    states: Sequence[State],
    *,
    temperature: float,
    period: float | None = None,
    named: Mapping[str, Sequence[float]] | None = None,
    format_position: Callable[[float], str] | None = None,
) -> list[Transition]:
    """Transitions between neighbouring states along the CV.

    Parameters
    ----------
    grid, free_energy
        The PMF, as in :func:`find_states`.
    error
        (K,) eV, per-point error of the PMF, or None (barrier errors NaN).
    states
        The states, e.g. from :func:`find_states`; ordered here by the CV value of their minima.
    temperature
        K, for the TST rates.
    period
        CV period or None. On a periodic CV sampled all round the pairs wrap around: k >= 3 states give k
        transitions, and 2 states give two, one through either arc between them.
    named
        Name -> ``(lo, hi)`` CV range: a transition whose TS lies in a range takes its name (the first range that
        holds it, in the mapping's order).
    format_position
        Writes a CV value (CV units) for a name that needs disambiguation (default ``'{:.4g}'``), e.g. in degrees.

    Returns
    -------
    list of Transition
        In CV order of their initial state; names ``'{initial}->{final}'`` (initial: the state lower on the CV, or
        the one before the period boundary for the pair that wraps around), a named range's name, and, when two
        transitions would share a name, ``'{name} @ {TS position}'`` (decimal comma: a name never holds a ``'.'``).
    """
    profile, err = _profile_and_error(grid, free_energy, period, error)
    ordered = sorted(states, key=lambda s: profile.nearest(s.minimum))
    transitions = [
        _transition(profile, err, ordered[s], ordered[t], wraps, temperature)
        for s, t, wraps in _neighbour_pairs(len(ordered), profile.ring)
    ]
    _name_transitions(transitions, named, period, format_position or '{:.4g}'.format)
    return transitions


def _neighbour_pairs(k: int, ring: bool) -> list[tuple[int, int, bool]]:
    """Pairs ``(s, t, wraps)`` of neighbouring states among ``k`` in CV order.

    On a closed ring, ``k >= 3`` states also pair the last with the first, and 2 states pair twice: ``wraps`` marks
    the second pair, whose path is the other arc (from ``t`` up the CV to ``s``).
    """
    pairs = [(s, s + 1, False) for s in range(k - 1)]
    if ring and k >= 2:
        pairs.append((k - 1, 0, False) if k >= 3 else (0, 1, True))
    return pairs


def _transition(
    profile: _Profile, err: np.ndarray, initial: State, final: State, wraps: bool, temperature: float
) -> Transition:
    """The transition from ``initial`` to ``final`` over the highest point between their minima.

    Parameters
    ----------
    profile
        The sampled PMF (eV).
    err
        eV, per-point error of the sampled points (NaN when unknown).
    initial, final
        The two neighbouring states.
    wraps
        Take the path from ``final`` up the CV to ``initial`` (the second arc between two states on a ring).
    temperature
        K, for the TST rates.
    """
    a, b = profile.nearest(initial.minimum), profile.nearest(final.minimum)
    arc = profile.arc(b, a) if wraps else profile.arc(a, b)
    ts = profile.highest(arc)
    forward, backward = float(profile.f[ts] - profile.f[a]), float(profile.f[ts] - profile.f[b])
    return Transition(
        name=f'{initial.name}->{final.name}',
        initial=initial.name,
        final=final.name,
        transition_state=float(profile.x[ts]),
        forward=forward,
        backward=backward,
        forward_error=float(np.hypot(err[ts], err[a])),
        backward_error=float(np.hypot(err[ts], err[b])),
        rate_forward=tst_rate(forward, temperature),
        rate_backward=tst_rate(backward, temperature),
        unsampled=profile.arc_has_gap(arc),
    )


def _name_transitions(
    transitions: Sequence[Transition],
    named: Mapping[str, Sequence[float]] | None,
    period: float | None,
    fmt: Callable[[float], str],
) -> None:
    """Name the transitions, in place, after the user's ranges, and tell apart those that share a name.

    A transition whose TS lies in a named ``(lo, hi)`` range (CV units) takes its name (the first range that holds
    it); ``' @ {TS position}'`` (written by ``fmt``, with a decimal comma) is then appended to any name two
    transitions share. Names are keys of the results (AiiDA attribute keys, JSON): they never contain a ``'.'``.
    """
    for transition in transitions:
        for name, r in (named or {}).items():
            if in_range(transition.transition_state, float(r[0]), float(r[1]), period):
                transition.name, transition.named = str(name), True
                break
    counts: dict[str, int] = {}
    for transition in transitions:
        counts[transition.name] = counts.get(transition.name, 0) + 1
    for transition in transitions:
        if counts[transition.name] > 1:
            position = fmt(transition.transition_state).replace('.', ',')
            transition.name = f'{transition.name} @ {position}'


def _difference(this: float | None, this_error: float | None, other: float | None, other_error: float | None) -> dict:
    """Difference of two independent estimates, error ``sqrt(e1**2 + e2**2)`` (None where unknown)."""
    known = this is not None and other is not None
    difference = this - other if known else None
    errors_known = known and this_error is not None and other_error is not None
    error = float(np.hypot(this_error, other_error)) if errors_known else None
    z = abs(difference) / error if error else None
    return {
        'value': this,
        'error': this_error,
        'reference': other,
        'reference_error': other_error,
        'difference': difference,
        'difference_error': error,
        'z': z,
    }


def compare_barriers(this: Mapping, other: Mapping) -> dict:
    """Every transition and state that two barrier tables share by name, as differences ``this - other``.

    ``this`` and ``other`` are barrier tables as the campaign stores them (``transitions``: name ->
    ``forward_kcal_mol``, ``forward_error_kcal_mol``, ``backward_*``; ``states``: name -> ``kcal_mol``,
    ``error_kcal_mol``), e.g. a molecule in solution and the same molecule in the gas phase. The two are independent
    runs, so the error of a difference is ``sqrt(e1**2 + e2**2)`` of their errors (whatever those are: the tables'
    own, one sigma for ours); ``z`` is ``|difference| / error``. Names found in one table only are listed
    (``only_here``, ``only_there``), never dropped silently. Units: kcal/mol.
    """
    out: dict = {'transitions': {}, 'states': {}, 'only_here': [], 'only_there': []}
    for kind, keys in (('transitions', ('forward', 'backward')), ('states', ('',))):
        here, there = dict(this.get(kind) or {}), dict(other.get(kind) or {})
        for name in sorted(set(here) & set(there)):
            entry = {}
            for key in keys:
                value, error = (f'{key}_kcal_mol', f'{key}_error_kcal_mol') if key else ('kcal_mol', 'error_kcal_mol')
                entry[key or 'free_energy'] = _difference(
                    here[name].get(value), here[name].get(error), there[name].get(value), there[name].get(error)
                )
            out[kind][name] = entry
        out['only_here'] += [f'{kind}.{name}' for name in sorted(set(here) - set(there))]
        out['only_there'] += [f'{kind}.{name}' for name in sorted(set(there) - set(here))]
    return out
