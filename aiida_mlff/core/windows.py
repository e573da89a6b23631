"""Umbrella windows along one collective variable: their placement, neighbours and midpoints.

:func:`place_windows` turns the windows of a job or campaign file (explicit ``centers``, or ``start``, ``stop`` and
``count``) into :class:`Windows`: centres in neighbour order and whether they close a ring around the period of a
periodic CV. :func:`neighbour_pairs` and :func:`midpoint` then name the neighbouring windows and the point halfway
between two of them, across the seam of a periodic CV.

Units: the numbers given to :func:`place_windows` are in the CV's file unit (Å, degrees); :class:`Windows` and
:func:`midpoint` speak internal units (Å, radians), see :mod:`aiida_mlff.core.colvars`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .colvars import CollectiveVariable, _is_number

__all__ = [
    'WindowSpecError',
    'Windows',
    'exchange_pairs',
    'midpoint',
    'neighbour_pairs',
    'place_windows',
]


class WindowSpecError(ValueError):
    """Umbrella windows with problems; ``errors`` lists every one, each starting with the field path."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__('; '.join(self.errors))


@dataclass(frozen=True, eq=False)
class Windows:
    """Centres of umbrella windows along one CV.

    Attributes
    ----------
    centers
        (W,) internal units (Å, rad), in neighbour order.
    closed
        True when the windows form a ring around the full period of a periodic CV: then the last and the first
        window are neighbours too.
    """

    centers: np.ndarray
    closed: bool

    def __len__(self) -> int:
        return len(self.centers)


def place_windows(
    cv: CollectiveVariable,
    *,
    centers: Sequence[float] | None = None,
    start: float | None = None,
    stop: float | None = None,
    count: int | None = None,
    where: str = 'umbrella.windows',
) -> Windows:
    """Place umbrella windows from explicit ``centers`` or from ``start``, ``stop`` and ``count``, in FILE units.

    ``start, stop, count``: ``count`` evenly spaced centres from start to stop, both included, in that order;
    except when a periodic CV's range spans its full period (``|stop - start|`` = period, e.g. -180..180 deg on a
    dihedral), where the end point is not repeated. A range shorter than the period (e.g. -70..70 deg) is open.

    ``centers``: sorted ascending; on a periodic CV ordered around the circle instead, starting after the widest
    gap, and compared modulo the period.

    For a periodic CV the windows are *closed* (a ring: last and first are neighbours) when there are at least
    three and they are evenly spaced around the full period (which covers -180..180 with the end left out, and
    also -180..170 in steps of 10); otherwise they are open.

    Parameters
    ----------
    cv
        The collective variable (its :attr:`~aiida_mlff.core.colvars.CollectiveVariable.file_unit` is the unit of
        the numbers given).
    centers
        Explicit window centres, file units.
    start, stop
        Ends of the range, file units.
    count
        Number of windows, at least 2.
    where
        Path of the windows in the user's input, used in the error messages.

    Returns
    -------
    Windows
        Centres in internal units and whether they are closed.

    Raises
    ------
    WindowSpecError
        With every problem in ``errors``: fewer than 2 windows, an empty range (start == stop), non-finite values,
        coinciding centres, a range longer than the period, both or neither of the two ways.
    """
    unit = cv.file_unit or 'dimensionless'
    period = cv.file_period
    if centers is not None:
        if any(v is not None for v in (start, stop, count)):
            raise WindowSpecError([f'{where}: give `centers`, or `start`, `stop` and `count`, not both'])
        values, closed = _listed_centers(centers, period, where, unit)
    else:
        values, closed = _ranged_centers(start, stop, count, period, where, unit)
    return Windows(np.asarray(cv.to_internal(values), dtype=float), closed)


def _listed_centers(centers, period: float | None, where: str, unit: str) -> tuple[np.ndarray, bool]:
    """Explicit centres (file units) in neighbour order and whether they close a ring; raise on any problem."""
    if not isinstance(centers, Sequence | np.ndarray) or isinstance(centers, str):
        raise WindowSpecError([f'{where}.centers: must be a list of numbers ({unit}), got {centers!r}'])
    errors: list[str] = []
    bad = [c for c in centers if not _is_number(c)]
    if bad:
        errors.append(f'{where}.centers: must be finite numbers ({unit}), got {bad!r} among them')
    if len(centers) < 2:
        errors.append(f'{where}.centers: at least 2 windows are needed, got {len(centers)}')
    if errors:
        raise WindowSpecError(errors)
    return _order_centers(np.asarray(centers, dtype=float), period, where, unit)


def _ranged_centers(start, stop, count, period: float | None, where: str, unit: str) -> tuple[np.ndarray, bool]:
    """``count`` centres from ``start`` to ``stop`` (file units) and whether they close a ring; raise on problems."""
    ranged = {'start': start, 'stop': stop, 'count': count}
    missing = [key for key, value in ranged.items() if value is None]
    if missing:
        raise WindowSpecError(
            [f'{where}.{key}: missing; give `centers`, or `start`, `stop` and `count`' for key in missing]
        )
    errors = _range_errors(start, stop, count, period, where, unit)
    if errors:
        raise WindowSpecError(errors)
    span = abs(float(stop) - float(start))
    full = period is not None and abs(span - period) <= 1e-9 * period
    values = np.linspace(float(start), float(stop), int(count), endpoint=not full)
    closed = period is not None and _evenly_around(values, period)
    return values, closed


def _range_errors(start, stop, count, period: float | None, where: str, unit: str) -> list[str]:
    """Every problem of ``start``, ``stop`` (file units) and ``count``: too few windows, bad or empty range."""
    errors: list[str] = []
    if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 2:
        errors.append(f'{where}.count: at least 2 windows are needed, got {count!r}')
    for key, value in (('start', start), ('stop', stop)):
        if not _is_number(value):
            errors.append(f'{where}.{key}: must be a finite number ({unit}), got {value!r}')
    if _is_number(start) and _is_number(stop):
        span = abs(float(stop) - float(start))
        if span == 0:
            errors.append(f'{where}.stop: equals start ({start} {unit}); the range is empty')
        if period is not None and span > period * (1 + 1e-9):
            errors.append(
                f'{where}.stop: the range {start}..{stop} {unit} is longer than the period ({period:g} {unit})'
            )
    return errors


def _circular_gaps(values: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    """Order of ``values`` around the circle and the gap after each of them (the last one wraps)."""
    wrapped = np.mod(values, period)
    order = np.argsort(wrapped, kind='stable')
    ring = wrapped[order]
    return order, np.diff(np.append(ring, ring[0] + period))


def _evenly_around(values: np.ndarray, period: float) -> bool:
    """At least three values, evenly spaced around the full period (within 0.1 % of a gap)."""
    if len(values) < 3:
        return False
    _, gaps = _circular_gaps(values, period)
    return bool(np.allclose(gaps, period / len(values), rtol=0.0, atol=1e-3 * period / len(values)))


def _order_centers(values: np.ndarray, period: float | None, where: str, unit: str) -> tuple[np.ndarray, bool]:
    """Explicit centres in neighbour order and whether they close a ring; raise on coinciding centres."""
    if period is None:
        ordered = np.sort(values)
        same = np.isclose(np.diff(ordered), 0.0, rtol=0.0, atol=1e-9 * max(1.0, float(np.abs(ordered).max())))
        if same.any():
            raise WindowSpecError(
                [f'{where}.centers: must be distinct, {sorted(set(ordered[1:][same].tolist()))} {unit} repeat']
            )
        return ordered, False
    order, gaps = _circular_gaps(values, period)
    same = gaps <= 1e-9 * period
    if same.any():
        twins = sorted({float(values[order[(k + d) % len(order)]]) for k in np.flatnonzero(same) for d in (0, 1)})
        raise WindowSpecError(
            [f'{where}.centers: must be distinct modulo the period ({period:g} {unit}); {twins} {unit} repeat']
        )
    closed = _evenly_around(values, period)
    # a ring starts at the smallest centre; an open arc right after its widest gap
    first = int(np.flatnonzero(order == np.argmin(values))[0]) if closed else (int(np.argmax(gaps)) + 1) % len(gaps)
    return values[np.roll(order, -first)], closed


def neighbour_pairs(windows: Windows) -> list[tuple[int, int]]:
    """Index pairs of neighbouring windows, ``(k, k + 1)``, and ``(W - 1, 0)`` only for closed windows."""
    n = len(windows.centers)
    pairs = [(k, k + 1) for k in range(n - 1)]
    if windows.closed:
        pairs.append((n - 1, 0))
    return pairs


def exchange_pairs(cv: CollectiveVariable, centers) -> list[tuple[int, int]]:
    """Pairs of neighbouring windows for replica exchange, as indices into ``centers`` (internal units).

    Windows are taken in order along the CV: sorted for a non-periodic CV; around the circle for a periodic one,
    as an arc that starts after its widest gap, or as a ring (the last and first windows are neighbours too) when the
    centres go evenly around the whole period.
    """
    values = np.asarray(centers, dtype=float).ravel()
    n = len(values)
    if n < 2:
        return []
    if cv.period is None:
        order = np.argsort(values, kind='stable')
        closed = False
    else:
        order, gaps = _circular_gaps(values, cv.period)
        closed = _evenly_around(values, cv.period)
        if not closed:
            order = np.roll(order, -((int(np.argmax(gaps)) + 1) % n))
    pairs = [(int(order[k]), int(order[k + 1])) for k in range(n - 1)]
    if closed:
        pairs.append((int(order[-1]), int(order[0])))
    return pairs


def midpoint(cv: CollectiveVariable, a: float, b: float) -> float:
    """Point halfway between centres ``a`` and ``b`` (internal units), across the seam for a periodic CV.

    ``a + (b - a) / 2`` with ``b - a`` taken as its minimum image; the result is not wrapped into the principal
    range (a bias does not mind, it measures displacements by their minimum image too).
    """
    return float(a + 0.5 * cv.difference(float(b), float(a)))
