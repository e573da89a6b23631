"""Free-energy surfaces in two collective variables: the data class, 2-D WHAM and MBAR, minima and paths.

The data class is the contract between the estimators (umbrella WHAM/MBAR here, metadynamics in
:mod:`aiida_mlff.core.metadynamics`), the AiiDA layer and the report.

- :func:`umbrella_grid`, :func:`default_kappa`: a 2-D grid of umbrella windows (one replica per window) and its
  force constants.
- :func:`wham2d`: binned WHAM (bias at bin centres, minimum image for periodic CVs), solved by the Newton iteration
  of :mod:`aiida_mlff.core.wham`.
- :func:`mbar2d`: window free energies from pymbar's MBAR on the exact per-sample bias, the surface by binned
  reweighting (as :mod:`aiida_mlff.core.mbar` in 1-D).
- Both: errors by the block bootstrap of each window's time series, NaN in bins without samples.
- :func:`find_minima`: basins of the surface (persistence-merged local minima); :func:`minimum_free_energy_path`:
  zero-temperature string method on a spline of the surface, with the saddle and the barriers.

Units: CV internal units (Å, rad), eV, K.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import RectBivariateSpline

from .mbar import _bin_index, _binned_free_energy, _bootstrap_error, _unbiased_log_weights
from .mbar import _solve as _mbar_solve
from .wham import (
    _check_samples,
    _circular_displacement,
    _displacement,
    _histogram_edges,
    _to_free_energy,
    autocorrelation_time,
)
from .wham import _solve as _wham_solve

__all__ = [
    'FreeEnergyPath',
    'FreeEnergySurface',
    'Minimum',
    'default_kappa',
    'find_minima',
    'mbar2d',
    'minimum_free_energy_path',
    'umbrella_grid',
    'wham2d',
]

KB_EV = 8.617333262e-5  # eV/K

Periods = tuple[float | None, float | None]


@dataclass
class FreeEnergySurface:
    """A free energy on a grid of two CVs.

    Attributes
    ----------
    edges
        ``(x_edges (K0+1,), y_edges (K1+1,))`` bin edges, internal CV units.
    free_energy
        (K0, K1) eV, minimum 0; NaN in bins without samples.
    error
        (K0, K1) eV, standard error (bootstrap or block analysis; NaN where undefined).
    temperature
        K.
    periods
        ``(period_x, period_y)``, each None for a non-periodic CV.
    names, units
        Per CV, e.g. ``('dihedral(2,0,1,3)', 'position(0,x)')`` and ``('rad', 'Å')``.
    estimator
        ``'wham'``, ``'mbar'`` or ``'metadynamics'``.
    warnings
        Messages (low overlap, unconverged, ...).
    window_free_energies
        (W,) eV, free energy of each umbrella window (first 0); None when not from umbrella sampling.
    counts
        (K0, K1) number of samples in each bin, all windows together; None when not from a histogram.
    iterations
        Solver iterations (WHAM Newton steps; 0 when not reported).
    """

    edges: tuple[np.ndarray, np.ndarray]
    free_energy: np.ndarray
    error: np.ndarray
    temperature: float
    periods: tuple[float | None, float | None] = (None, None)
    names: tuple[str, str] = ('cv0', 'cv1')
    units: tuple[str, str] = ('', '')
    estimator: str = ''
    warnings: list[str] = field(default_factory=list)
    window_free_energies: np.ndarray | None = None
    counts: np.ndarray | None = None
    iterations: int = 0

    @property
    def kt(self) -> float:
        """KT in eV."""
        return KB_EV * self.temperature

    @property
    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin centres along each CV."""
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)

    def minima(self, min_depth: float | None = None) -> list[Minimum]:
        """Basins of the surface, see :func:`find_minima`."""
        return find_minima(self, min_depth)

    def path(self, start: Sequence[float], end: Sequence[float], **kwargs) -> FreeEnergyPath:
        """Minimum free-energy path from ``start`` to ``end``, see :func:`minimum_free_energy_path`."""
        return minimum_free_energy_path(self, start, end, **kwargs)


@dataclass
class Minimum:
    """A basin of a free-energy surface.

    Attributes
    ----------
    position
        (2,) CV coordinates of the minimum (bin centre refined by a parabola through its neighbours), CV units.
    free_energy
        eV, the surface value in the minimum bin (the surface minimum is 0).
    error
        eV, the surface error in that bin.
    index
        (i, j) of the minimum bin.
    depth
        eV, how far the basin must be filled before it spills into a deeper one (inf for the global minimum).
    """

    position: np.ndarray
    free_energy: float
    error: float
    index: tuple[int, int]
    depth: float


@dataclass
class FreeEnergyPath:
    """A minimum free-energy path between two points of a surface (zero-temperature string).

    Attributes
    ----------
    points
        (n, 2) images along the path, CV units; periodic CVs unwrapped (continuous along the path).
    free_energy
        (n,) eV on the interpolated surface (surface minimum 0).
    saddle
        (2,) CV coordinates of the highest point on the path (the saddle estimate), wrapped into the grid.
    saddle_free_energy
        eV.
    barrier_forward, barrier_reverse
        eV, saddle minus the free energy of the first (resp. last) image.
    error_forward, error_reverse
        eV, the surface errors at the saddle and at the end point combined in quadrature (NaN without errors).
    iterations
        String iterations used.
    converged
        Whether the largest image displacement of an iteration fell below the tolerance.
    """

    points: np.ndarray
    free_energy: np.ndarray
    saddle: np.ndarray
    saddle_free_energy: float
    barrier_forward: float
    barrier_reverse: float
    error_forward: float
    error_reverse: float
    iterations: int
    converged: bool


# ---------------------------------------------------------------------------------------------------------- windows


def umbrella_grid(
    centers_x: Sequence[float] | np.ndarray, centers_y: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened 2-D grid of umbrella centres, one window (replica) per grid point.

    Parameters
    ----------
    centers_x, centers_y
        (Kx,) and (Ky,) centres along each CV, CV units.

    Returns
    -------
    tuple of np.ndarray
        ``(cx (W,), cy (W,))`` with ``W = Kx * Ky``; window ``i * Ky + j`` sits at ``(centers_x[i], centers_y[j])``.
        Give them to two :class:`~aiida_mlff.core.colvars.HarmonicBias` objects, one per CV.
    """
    gx, gy = np.meshgrid(np.asarray(centers_x, float), np.asarray(centers_y, float), indexing='ij')
    return gx.ravel(), gy.ravel()


def default_kappa(
    centers_x: Sequence[float] | np.ndarray, centers_y: Sequence[float] | np.ndarray, temperature: float
) -> np.ndarray:
    """Force constant per CV, ``3 kT / spacing^2`` (as the 1-D ``umbrella_windows``), eV per CV unit squared, (2,).

    The spacing is the median distance between sorted neighbouring centres of that CV; the bias standard deviation is
    then spacing / sqrt(3), so neighbouring windows overlap.
    """
    kt = KB_EV * float(temperature)
    out = []
    for c in (centers_x, centers_y):
        c = np.unique(np.asarray(c, dtype=float))
        if len(c) < 2:
            raise ValueError('each CV needs at least two distinct centres for a default force constant')
        out.append(3.0 * kt / float(np.median(np.diff(c))) ** 2)
    return np.array(out)


# ------------------------------------------------------------------------------------------------------ data set-up


@dataclass
class _Setup:
    """Checked umbrella data: wrapped samples (n_w, 2) per window, centres and force constants (W, 2), bins."""

    data: list[np.ndarray]
    centers: np.ndarray
    kappa: np.ndarray
    edges: tuple[np.ndarray, np.ndarray]
    periods: Periods
    kt: float

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.edges[0]) - 1, len(self.edges[1]) - 1

    @property
    def areas(self) -> np.ndarray:
        """(K0 * K1,) bin areas, CV units squared."""
        return np.outer(np.diff(self.edges[0]), np.diff(self.edges[1])).ravel()

    def flat_index(self, x: np.ndarray) -> np.ndarray:
        """Flat bin index ``i * K1 + j`` of samples (N, 2), -1 outside the grid."""
        i, j = (_bin_index(x[:, d], self.edges[d]) for d in (0, 1))
        return np.where((i >= 0) & (j >= 0), i * self.shape[1] + j, -1)

    def reduced_bias(self, x: np.ndarray) -> np.ndarray:
        """(W, N) reduced bias of every window at the points x (N, 2), minimum image for periodic CVs."""
        u = np.zeros((len(self.centers), len(x)))
        for d in (0, 1):
            disp = _displacement(x[None, :, d], self.centers[:, d, None], self.periods[d])
            u += 0.5 * self.kappa[:, d, None] * disp**2
        return u / self.kt

    def bin_centre_bias(self) -> np.ndarray:
        """(W, K0 * K1) reduced bias at the bin centres (WHAM)."""
        grid = [0.5 * (e[1:] + e[:-1]) for e in self.edges]
        u = []
        for d in (0, 1):
            disp = _displacement(grid[d][None, :], self.centers[:, d, None], self.periods[d])
            u.append(0.5 * self.kappa[:, d, None] * disp**2 / self.kt)
        return (u[0][:, :, None] + u[1][:, None, :]).reshape(len(self.centers), -1)


def _as_pair(value, name: str) -> tuple:
    """``value`` given once or per CV, as a pair."""
    if value is None or np.isscalar(value):
        return value, value
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f'{name}: give one value or one per CV (2), got {len(value)}')
    return value


def _setup(colvars, centers, kappa, temperature, bins, periods, ranges) -> _Setup:
    """Check and bin the umbrella data (see :func:`wham2d` for the arguments)."""
    data = [np.asarray(c, dtype=float).reshape(-1, 2) for c in colvars]
    n_win = len(data)
    centers = np.asarray(centers, dtype=float).reshape(-1, 2)
    _check_samples(data, centers)
    kappa = np.asarray(kappa, dtype=float)
    kappa = np.broadcast_to(kappa if kappa.ndim != 1 or kappa.size != 2 else kappa[None, :], (n_win, 2)).copy()
    periods = _as_pair(periods, 'periods')
    bins = (bins, bins) if np.isscalar(bins) else tuple(bins)
    if len(bins) != 2:
        raise ValueError('bins: one number, a pair of numbers or a pair of edge arrays')
    ranges = (None, None) if ranges is None else tuple(ranges)
    edges, columns = [], []
    for d in (0, 1):
        e, col = _histogram_edges([x[:, d] for x in data], bins[d], periods[d], ranges[d])
        edges.append(e)
        columns.append(col)
    data = [np.stack([a, b], axis=1) for a, b in zip(*columns, strict=True)]
    return _Setup(data, centers, kappa, (edges[0], edges[1]), periods, KB_EV * float(temperature))


def _block_ids(d: np.ndarray, periods: Periods) -> tuple[np.ndarray, int]:
    """Block of each sample of one window's (n, 2) series, blocks of ``ceil(2 tau)`` samples, and their number.

    Tau is the larger integrated autocorrelation time of the two CVs (minimum-image displacement for periodic ones).
    """
    taus = []
    for k in (0, 1):
        x = d[:, k]
        taus.append(autocorrelation_time(x - x.mean() if periods[k] is None else _circular_displacement(x, periods[k])))
    size = max(1, int(np.ceil(2 * max(taus))))
    n_blocks = max(1, len(d) // size)
    return np.minimum(np.arange(len(d)) // size, n_blocks - 1), n_blocks


def _overlap_messages(overlap: np.ndarray, centers: np.ndarray, min_overlap: float) -> list[str]:
    """Messages for windows whose largest overlap with any other window is below ``min_overlap``."""
    off = overlap - np.diag(np.diag(overlap))
    messages = []
    for i in np.flatnonzero(np.maximum(off.max(axis=0), off.max(axis=1)) < min_overlap):
        messages.append(
            f'window {int(i)} (centre {centers[i, 0]:.4g}, {centers[i, 1]:.4g}) overlaps too little with every other '
            f'window: {max(off[i].max(), off[:, i].max()):.3g} < {min_overlap}'
        )
    return messages


def _surface(setup: _Setup, flat: np.ndarray, error: np.ndarray, **kwargs) -> FreeEnergySurface:
    """A surface from flat (K0 * K1,) free energies and errors on the set-up's grid."""
    counts = np.zeros(setup.shape[0] * setup.shape[1])
    for d in setup.data:
        idx = setup.flat_index(d)
        counts += np.bincount(idx[idx >= 0], minlength=len(counts))
    error = np.where(np.isfinite(flat), error, np.nan)
    return FreeEnergySurface(
        edges=setup.edges,
        free_energy=flat.reshape(setup.shape),
        error=error.reshape(setup.shape),
        temperature=setup.kt / KB_EV,
        periods=setup.periods,
        counts=counts.reshape(setup.shape),
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------------------- WHAM


def _wham_counts(setup: _Setup) -> tuple[list[np.ndarray], np.ndarray]:
    """Flat bin index per sample of each window and the (W, K) histograms."""
    n_bins = setup.shape[0] * setup.shape[1]
    idx = [setup.flat_index(d) for d in setup.data]
    counts = np.stack([np.bincount(i[i >= 0], minlength=n_bins) for i in idx]).astype(float)
    return idx, counts


def _wham_bootstrap(
    setup: _Setup, idx: list[np.ndarray], ubias: np.ndarray, f: np.ndarray, resamples: int, seed: int, tol: float
) -> np.ndarray:
    """(K,) eV: spread of the WHAM surface over block-bootstrap resamples of every window's time series."""
    rng = np.random.default_rng(seed)
    n_bins = ubias.shape[1]
    blocks = [_block_ids(d, setup.periods) for d in setup.data]
    samples = []
    for _ in range(resamples):
        counts = np.zeros((len(idx), n_bins))
        for w, (i, (block_id, n_blocks)) in enumerate(zip(idx, blocks, strict=True)):
            times = np.bincount(rng.integers(0, n_blocks, n_blocks), minlength=n_blocks)  # multiplicity per block
            inside = i >= 0
            counts[w] = np.bincount(i[inside], weights=times[block_id[inside]], minlength=n_bins)
        n_samples = counts.sum(axis=1)
        if np.any(n_samples == 0):
            continue
        log_p, _, _ = _wham_solve(counts, n_samples, ubias, f, tol * 10, 200)
        samples.append(_to_free_energy(log_p, setup.areas, setup.kt))
    if len(samples) < 2:
        return np.full(n_bins, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        return np.nanstd(np.array(samples), axis=0, ddof=1)


def wham2d(
    colvars: Sequence[np.ndarray],
    centers: np.ndarray,
    kappa: float | Sequence[float] | np.ndarray,
    temperature: float,
    bins: int | Sequence[int] | Sequence[np.ndarray] = (50, 50),
    periods: tuple[float | None, float | None] = (None, None),
    bootstrap: int = 0,
    seed: int = 0,
    ranges: Sequence[tuple[float, float] | None] | None = None,
    tol: float = 1e-9,
    max_iter: int = 200,
    min_overlap: float = 0.01,
    names: tuple[str, str] = ('cv0', 'cv1'),
    units: tuple[str, str] = ('', ''),
) -> FreeEnergySurface:
    """Free-energy surface from 2-D umbrella sampling with binned WHAM.

    The bias of window i at bin k is taken at the bin centre (minimum image for periodic CVs),
    ``u_ik = sum_d 0.5 kappa_id (s_kd - c_id)^2 / kT``; the WHAM equations are solved by the damped Newton iteration
    on their convex objective in log space (:func:`aiida_mlff.core.wham._solve`).

    Parameters
    ----------
    colvars
        Per window, the (n_w, 2) time-ordered samples of the two CVs, CV units (e.g. ``result.colvars[:, w]``).
    centers
        (W, 2) window centres, CV units.
    kappa
        Force constants, eV per CV unit squared: a scalar, (2,) per CV, or (W, 2) per window and CV. The bias is
        ``0.5 kappa_x (x - c_x)^2 + 0.5 kappa_y (y - c_y)^2``.
    temperature
        K.
    bins
        Bins per CV (one number or a pair), or a pair of edge arrays.
    periods
        Period of each CV (e.g. ``2 pi`` rad) or None; periodic samples are wrapped into
        ``[range[0], range[0] + period)``, by default ``[-period / 2, period / 2)``.
    bootstrap
        Number of block-bootstrap resamples for the error (blocks of ``2 tau`` samples per window, tau the larger
        integrated autocorrelation time of its two CVs, drawn with replacement).
    seed
        Seed of the bootstrap.
    ranges
        Per CV (lo, hi) of the histogram or None (data range, or one period for a periodic CV).
    tol, max_iter
        Convergence threshold on the reduced window free energies and maximum Newton iterations.
    min_overlap
        Windows whose largest overlap-matrix element with another window is below this raise a warning.
    names, units
        Stored on the surface.

    Returns
    -------
    FreeEnergySurface
        ``estimator='wham'``; free energy (K0, K1) eV with minimum 0, NaN in empty bins; error NaN without bootstrap.
    """
    setup = _setup(colvars, centers, kappa, temperature, bins, periods, ranges)
    idx, counts = _wham_counts(setup)
    n_samples = counts.sum(axis=1)
    if np.any(n_samples == 0):
        empty = [int(i) for i in np.flatnonzero(n_samples == 0)]
        raise ValueError(f'windows {empty} have no samples inside the histogram range')
    ubias = setup.bin_centre_bias()
    log_p, f, iters = _wham_solve(counts, n_samples, ubias, None, tol, max_iter)
    free = _to_free_energy(log_p, setup.areas, setup.kt)

    # overlap matrix from the binned weights, O_ij = sum_k n_k W_ki W_kj N_j (as the 1-D wham)
    total = counts.sum(axis=0)
    occ = total > 0
    log_w = f[:, None] - ubias[:, occ]
    log_w = log_w - np.logaddexp.reduce(np.log(n_samples)[:, None] + log_w, axis=0)
    w = np.exp(log_w)
    overlap = (w * total[occ]) @ w.T * n_samples[None, :]
    messages = _overlap_messages(overlap, setup.centers, min_overlap)
    for msg in messages:
        warnings.warn(msg, stacklevel=2)

    error = np.full_like(free, np.nan)
    if bootstrap > 0:
        error = _wham_bootstrap(setup, idx, ubias, f, bootstrap, seed, tol)
    return _surface(
        setup,
        free,
        error,
        names=names,
        units=units,
        estimator='wham',
        warnings=messages,
        window_free_energies=f * setup.kt,
        iterations=iters,
    )


# ------------------------------------------------------------------------------------------------------------- MBAR


def _mbar_blocks(setup: _Setup) -> list[list[np.ndarray]]:
    """Per window, the pooled-sample indices of its blocks of ``ceil(2 tau)`` consecutive samples."""
    out, start = [], 0
    for d in setup.data:
        block_id, _ = _block_ids(d, setup.periods)
        out.append(np.split(np.arange(start, start + len(d)), np.flatnonzero(np.diff(block_id)) + 1))
        start += len(d)
    return out


def _initial_guess(setup: _Setup) -> np.ndarray | None:
    """Reduced window free energies from binned WHAM on the same grid: a start that spares pymbar most iterations.

    None when a window has no sample inside the grid (pymbar then starts from zeros).
    """
    _, counts = _wham_counts(setup)
    n_samples = counts.sum(axis=1)
    if np.any(n_samples == 0):
        return None
    _, f, _ = _wham_solve(counts, n_samples, setup.bin_centre_bias(), None, 1e-6, 100)
    return f


def mbar2d(
    colvars: Sequence[np.ndarray],
    centers: np.ndarray,
    kappa: float | Sequence[float] | np.ndarray,
    temperature: float,
    bins: int | Sequence[int] | Sequence[np.ndarray] = (50, 50),
    periods: tuple[float | None, float | None] = (None, None),
    bootstrap: int = 0,
    seed: int = 0,
    ranges: Sequence[tuple[float, float] | None] | None = None,
    min_overlap: float = 0.01,
    names: tuple[str, str] = ('cv0', 'cv1'),
    units: tuple[str, str] = ('', ''),
) -> FreeEnergySurface:
    """Free-energy surface from 2-D umbrella sampling with MBAR (pymbar), interchangeable with :func:`wham2d`.

    The window free energies are pymbar's MBAR solution on the exact bias of every sample (minimum image for
    periodic CVs). The surface is binned reweighting: each sample's unbiased MBAR weight is added to its bin, as
    :func:`aiida_mlff.core.mbar.mbar` does in 1-D. All samples enter MBAR; samples outside ``ranges`` only miss the
    histogram. The reduced-bias matrix is W x (all samples): keep W times the number of samples to some 10^7-10^8.

    Parameters
    ----------
    colvars, centers, kappa, temperature, bins, periods, bootstrap, seed, ranges, min_overlap, names, units
        As in :func:`wham2d`; the bootstrap resamples the same blocks and solves MBAR again for each resample.

    Returns
    -------
    FreeEnergySurface
        ``estimator='mbar'``; window free energies from pymbar, ``iterations`` 0.
    """
    setup = _setup(colvars, centers, kappa, temperature, bins, periods, ranges)
    x = np.concatenate(setup.data)
    n_k = np.array([len(d) for d in setup.data])
    u_kn = setup.reduced_bias(x)
    idx = setup.flat_index(x)
    solution = _mbar_solve(u_kn, n_k, _initial_guess(setup), seed)
    f_k = np.asarray(solution.f_k, dtype=float) - solution.f_k[0]
    free = _binned_free_energy(idx, _unbiased_log_weights(u_kn, f_k, n_k), setup.areas, setup.kt)
    overlap = np.asarray(solution.compute_overlap()['matrix'], dtype=float)
    messages = _overlap_messages(overlap, setup.centers, min_overlap)
    for msg in messages:
        warnings.warn(msg, stacklevel=2)
    error = np.full_like(free, np.nan)
    if bootstrap > 0:
        error = _bootstrap_error(u_kn, idx, _mbar_blocks(setup), f_k, setup.areas, setup.kt, bootstrap, seed)
    return _surface(
        setup,
        free,
        error,
        names=names,
        units=units,
        estimator='mbar',
        warnings=messages,
        window_free_energies=f_k * setup.kt,
    )


# ----------------------------------------------------------------------------------------------------------- minima


def _neighbours(i: int, j: int, shape: tuple[int, int], periods: Periods) -> list[tuple[int, int]]:
    """The (up to 8) neighbouring cells of (i, j), across the grid ends along periodic CVs."""
    out = []
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di == dj == 0:
                continue
            a, b = i + di, j + dj
            if periods[0] is not None:
                a %= shape[0]
            if periods[1] is not None:
                b %= shape[1]
            if 0 <= a < shape[0] and 0 <= b < shape[1] and (a, b) != (i, j):
                out.append((a, b))
    return out


def _basins(f: np.ndarray, periods: Periods) -> dict[int, float]:
    """Flood the surface from below: {flat index of each basin's minimum: depth in eV} (global minimum: inf).

    Cells are added in order of increasing F; when a cell joins two basins, the one with the higher minimum dies
    with depth = F(cell) - F(its minimum) and is merged into the other (persistence of sub-level sets).
    """
    shape = f.shape
    parent: dict[int, int] = {}

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    flat = f.ravel()
    depth: dict[int, float] = {}
    for k in np.argsort(np.where(np.isfinite(flat), flat, np.inf), kind='stable'):
        if not np.isfinite(flat[k]):
            break
        k = int(k)
        parent[k] = k
        near = (a * shape[1] + b for a, b in _neighbours(*divmod(k, shape[1]), shape, periods))
        roots = {root(n) for n in near if n in parent and n != k}
        if not roots:
            depth[k] = np.inf
            continue
        ordered = sorted(roots, key=lambda r: flat[r])
        parent[k] = ordered[0]
        for r in ordered[1:]:
            depth[r] = float(flat[k] - flat[r])
            parent[r] = ordered[0]
    return depth


def _refine(f: np.ndarray, i: int, j: int, centers: tuple[np.ndarray, np.ndarray], periods: Periods) -> np.ndarray:
    """Position of the minimum of a parabola through the cell and its two neighbours, along each CV (CV units)."""
    pos = np.array([centers[0][i], centers[1][j]], dtype=float)
    for d, (k, n) in enumerate(((i, f.shape[0]), (j, f.shape[1]))):
        lo, hi = k - 1, k + 1
        if periods[d] is not None:
            lo, hi = lo % n, hi % n
        if not (0 <= lo < n and 0 <= hi < n):
            continue
        line = f[:, j] if d == 0 else f[i, :]
        a, b, c = line[lo], line[k], line[hi]
        curvature = a - 2 * b + c
        if np.isfinite(curvature) and curvature > 0:
            h = centers[d][1] - centers[d][0]
            pos[d] += np.clip(0.5 * (a - c) / curvature, -0.5, 0.5) * h
    return pos


def _inside(f: np.ndarray, i: int, j: int, periods: Periods) -> bool:
    """Whether cell (i, j) has all 8 neighbours on the grid and sampled: a minimum on the rim is not confirmed."""
    near = _neighbours(i, j, f.shape, periods)
    return len(near) == 8 and all(np.isfinite(f[a, b]) for a, b in near)


def find_minima(fes: FreeEnergySurface, min_depth: float | None = None) -> list[Minimum]:
    """Minima of a free-energy surface, one per basin, sorted by free energy (lowest first).

    Local minima on the grid (8 neighbours, across the ends of periodic CVs; NaN bins ignored) are merged by basin:
    a minimum whose basin spills into a deeper one after filling by less than ``min_depth`` belongs to that one. A
    minimum on the rim of the sampled region (a neighbour off the grid or without samples) is left out: the surface
    may go on down beyond it.

    Parameters
    ----------
    fes
        The surface.
    min_depth
        eV; default 1 kT.

    Returns
    -------
    list of Minimum
    """
    min_depth = fes.kt if min_depth is None else float(min_depth)
    f = np.asarray(fes.free_energy, dtype=float)
    centers = fes.centers
    out = []
    for k, depth in _basins(f, fes.periods).items():
        i, j = divmod(k, f.shape[1])
        if depth < min_depth or not _inside(f, i, j, fes.periods):
            continue
        out.append(
            Minimum(
                position=_refine(f, i, j, centers, fes.periods),
                free_energy=float(f[i, j]),
                error=float(fes.error[i, j]),
                index=(i, j),
                depth=float(depth),
            )
        )
    return sorted(out, key=lambda m: m.free_energy)


# ------------------------------------------------------------------------------------------------------------- path


class _Spline:
    """Cubic spline of a surface (NaN bins set to a high value, optional Gaussian smoothing), periodic-aware.

    Periodic CVs are padded by wrapped copies of the grid, and points are wrapped into the grid before evaluation.
    """

    def __init__(self, fes: FreeEnergySurface, smooth: float, fill: float | None) -> None:
        from scipy.ndimage import gaussian_filter

        f = np.array(fes.free_energy, dtype=float)
        finite = np.isfinite(f)
        if finite.sum() < 16:
            raise ValueError('the surface has too few finite bins for a path')
        f[~finite] = np.max(f[finite]) + 5.0 * fes.kt if fill is None else fill
        modes = ['wrap' if p is not None else 'nearest' for p in fes.periods]
        if smooth > 0:
            f = gaussian_filter(f, smooth, mode=modes)
        axes, self.lo, self.periods = [], [], fes.periods
        pad = 4
        for d, p in enumerate(fes.periods):
            c = fes.centers[d]
            self.lo.append(fes.edges[d][0])
            if p is not None:
                h = c[1] - c[0]
                c = np.concatenate([c[0] - h * np.arange(pad, 0, -1), c, c[-1] + h * np.arange(1, pad + 1)])
                f = np.concatenate([np.take(f, range(-pad, 0), d), f, np.take(f, range(pad), d)], axis=d)
            axes.append(c)
        self.spline = RectBivariateSpline(axes[0], axes[1], f, kx=3, ky=3)
        self.bounds = [(a[0], a[-1]) for a in axes]

    def wrap(self, x: np.ndarray) -> np.ndarray:
        """Points (n, 2) wrapped into the grid along periodic CVs, clipped to it along the others."""
        x = np.array(x, dtype=float)
        for d, p in enumerate(self.periods):
            if p is not None:
                x[:, d] = self.lo[d] + np.mod(x[:, d] - self.lo[d], p)
            else:
                x[:, d] = np.clip(x[:, d], *self.bounds[d])
        return x

    def value(self, x: np.ndarray) -> np.ndarray:
        """(n,) interpolated free energy, eV."""
        w = self.wrap(x)
        return self.spline.ev(w[:, 0], w[:, 1])

    def gradient(self, x: np.ndarray) -> np.ndarray:
        """(n, 2) gradient, eV per CV unit."""
        w = self.wrap(x)
        return np.stack([self.spline.ev(w[:, 0], w[:, 1], dx=1), self.spline.ev(w[:, 0], w[:, 1], dy=1)], axis=1)


def _reparametrise(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced in arc length along the polyline ``points`` (m, 2)."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    if s[-1] == 0:
        return np.repeat(points[:1], n, axis=0)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, points[:, d]) for d in (0, 1)], axis=1)


def _error_at(fes: FreeEnergySurface, x: np.ndarray) -> float:
    """The surface error (eV) in the bin holding the point x (2,), NaN outside or where undefined."""
    idx = []
    for d, p in enumerate(fes.periods):
        e, v = fes.edges[d], x[d]
        if p is not None:
            v = e[0] + np.mod(v - e[0], p)
        k = int(np.searchsorted(e, v, side='right') - 1)
        if not 0 <= k < len(e) - 1:
            return float('nan')
        idx.append(k)
    return float(fes.error[idx[0], idx[1]])


def _string(
    spline: _Spline, path: np.ndarray, step: float, max_step: float, tol: float, max_iter: int, relax_ends: bool
) -> tuple[np.ndarray, int, bool]:
    """Zero-temperature string: steepest-descent move of every image, then equal-arc-length reparametrisation."""
    n = len(path)
    for it in range(1, max_iter + 1):
        move = -step * spline.gradient(path)
        norm = np.linalg.norm(move, axis=1, keepdims=True)
        move *= np.minimum(1.0, max_step / np.maximum(norm, 1e-300))
        if not relax_ends:
            move[[0, -1]] = 0.0
        new = _reparametrise(path + move, n)
        change = float(np.max(np.linalg.norm(new - path, axis=1)))
        path = new
        if change < tol:
            return path, it, True
    return path, max_iter, False


def _bin_of(fes: FreeEnergySurface, x: np.ndarray) -> tuple[int, int] | None:
    """(i, j) of the bin holding point x (wrapped along periodic CVs), or None outside the grid."""
    idx = []
    for d, p in enumerate(fes.periods):
        e, v = fes.edges[d], float(x[d])
        if p is not None:
            v = e[0] + np.mod(v - e[0], p)
        k = int(np.clip(np.searchsorted(e, v, side='right') - 1, 0, len(e) - 2)) if e[0] <= v <= e[-1] else -1
        if k < 0:
            return None
        idx.append(k)
    return idx[0], idx[1]


def _grid_path(fes: FreeEnergySurface, start: np.ndarray, end: np.ndarray) -> np.ndarray | None:
    """A first guess of the path through sampled bins only, or None where there is no such path.

    Dijkstra on the 8-neighbour grid with the step cost ``length * exp(F / kT)`` (the low passes win), unwrapped
    along periodic CVs.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    f = np.asarray(fes.free_energy, dtype=float)
    shape = f.shape
    a, b = _bin_of(fes, start), _bin_of(fes, end)
    if a is None or b is None or not (np.isfinite(f[a]) and np.isfinite(f[b])):
        return None
    centers = fes.centers
    weight = np.exp(np.clip((f - np.nanmin(f)) / fes.kt, 0.0, 600.0))
    rows, cols, costs = [], [], []
    for i, j in zip(*np.nonzero(np.isfinite(f)), strict=True):
        for p, q in _neighbours(int(i), int(j), shape, fes.periods):
            if np.isfinite(f[p, q]):
                step = np.hypot(
                    *(_displacement(centers[d][(p, q)[d]], centers[d][(i, j)[d]], fes.periods[d]) for d in (0, 1))
                )
                rows.append(i * shape[1] + j)
                cols.append(p * shape[1] + q)
                costs.append(step * 0.5 * (weight[i, j] + weight[p, q]))
    graph = coo_matrix((costs, (rows, cols)), shape=(f.size, f.size)).tocsr()
    _, previous = dijkstra(graph, indices=a[0] * shape[1] + a[1], return_predecessors=True)
    node, chain = b[0] * shape[1] + b[1], []
    while node >= 0:
        chain.append(divmod(int(node), shape[1]))
        node = previous[node]
    if chain[-1] != a:
        return None
    points = [start.copy()]
    for i, j in reversed(chain[:-1]):
        here = np.array([centers[0][i], centers[1][j]])
        step = np.array([_displacement(here[d], points[-1][d], fes.periods[d]) for d in (0, 1)])
        points.append(points[-1] + step)
    step = np.array([_displacement(end[d], points[-1][d], fes.periods[d]) for d in (0, 1)])
    points.append(points[-1] + step)
    return np.asarray(points)


def minimum_free_energy_path(
    fes: FreeEnergySurface,
    start: Sequence[float],
    end: Sequence[float],
    n_images: int = 30,
    smooth: float = 0.0,
    relax_ends: bool = True,
    tol: float | None = None,
    max_iter: int = 20000,
    fill: float | None = None,
) -> FreeEnergyPath:
    """Minimum free-energy path between two points by the zero-temperature string method.

    The surface is interpolated by a cubic spline (NaN bins set to ``fill``, by default the highest finite value
    plus 5 kT; optionally Gaussian-smoothed). The string starts on the cheapest path through sampled bins (Dijkstra,
    step cost ``length * exp(F / kT)``, so it starts in the low pass and never crosses unsampled bins, where the fill
    is flat and would hold it), else on the straight line from ``start`` to ``end`` (minimum image along periodic
    CVs, so the path is unwrapped: continuous across the period); every iteration
    moves the images down the gradient (time step 0.2 / the 99th percentile of the grid curvature, at most a quarter
    bin per image) and redistributes them at equal arc length, until no image moves more than ``tol``. The saddle
    is the highest point of the converged string, refined on 20 sub-points per segment.

    Parameters
    ----------
    fes
        The surface.
    start, end
        (2,) CV coordinates of the two ends (e.g. ``find_minima(fes)[k].position``).
    n_images
        Images of the string.
    smooth
        Standard deviation of a Gaussian smoothing of the surface before interpolation, in bins (0: none); smoothing
        lowers barriers by about ``smooth^2 h^2 curvature / 2``.
    relax_ends
        Let the end images descend into their minima (otherwise they stay fixed).
    tol
        Convergence threshold on the image displacement per iteration, CV units; default 1e-4 of the smaller bin.
    max_iter
        Maximum iterations (a warning is issued when they are used up).
    fill
        eV, value in NaN bins.

    Returns
    -------
    FreeEnergyPath
    """
    spline = _Spline(fes, smooth, fill)
    h = min(float(np.min(np.diff(e))) for e in fes.edges)
    tol = 1e-4 * h if tol is None else float(tol)
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    guess = _grid_path(fes, start, end)
    if guess is None:  # no path through sampled bins: the straight line
        delta = np.array([_displacement(end[d], start[d], fes.periods[d]) for d in (0, 1)])
        path = start + np.linspace(0.0, 1.0, n_images)[:, None] * delta[None, :]
    else:
        path = _reparametrise(guess, n_images)

    curvature = _curvature_scale(fes, smooth)
    path, iters, converged = _string(spline, path, 0.2 / curvature, 0.25 * h, tol, max_iter, relax_ends)
    if not converged:
        warnings.warn(f'the string did not converge in {max_iter} iterations', stacklevel=2)

    fine = _reparametrise(path, 20 * (n_images - 1) + 1)
    values = spline.value(fine)
    top = int(np.argmax(values))
    saddle = spline.wrap(fine[top : top + 1])[0]
    f_path = spline.value(path)
    f_s = float(values[top])
    err_s = _error_at(fes, saddle)
    return FreeEnergyPath(
        points=path,
        free_energy=f_path,
        saddle=saddle,
        saddle_free_energy=f_s,
        barrier_forward=f_s - float(f_path[0]),
        barrier_reverse=f_s - float(f_path[-1]),
        error_forward=float(np.hypot(err_s, _error_at(fes, path[0]))),
        error_reverse=float(np.hypot(err_s, _error_at(fes, path[-1]))),
        iterations=iters,
        converged=converged,
    )


def _curvature_scale(fes: FreeEnergySurface, smooth: float) -> float:
    """99th percentile of the absolute second differences of the finite surface, eV per CV unit squared."""
    f = np.asarray(fes.free_energy, dtype=float)
    values = []
    for d in (0, 1):
        h = float(np.median(np.diff(fes.edges[d])))
        with np.errstate(invalid='ignore', over='ignore'):
            second = np.abs(np.diff(f, n=2, axis=d)) / h**2
        values.append(second[np.isfinite(second)])
    pooled = np.concatenate(values)
    if len(pooled) == 0:  # pragma: no cover - the spline already needs finite bins
        return 1.0
    return max(float(np.percentile(pooled, 99)), 1e-12)
