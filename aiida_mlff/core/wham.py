"""Weighted histogram analysis (WHAM) of umbrella sampling along one collective variable.

Plain numpy. The self-consistent WHAM equations are iterated in log space (``logsumexp``) until the window free
energies stop changing. Periodic collective variables (dihedrals) are handled with minimum-image bias distances.
Errors come from a bootstrap over decorrelated blocks of each window's time series.

Units: collective variables in their own unit (Å or radians), ``kappa`` in eV per CV unit squared, temperature in K,
free energies in eV, rates in s^-1.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import constants
from scipy.special import logsumexp

__all__ = ['PMF', 'Barrier', 'autocorrelation_time', 'tst_rate', 'wham']

KB_EV = constants.k / constants.e  # eV/K
H_EV_S = constants.h / constants.e  # eV s


def tst_rate(barrier: float, temperature: float) -> float:
    """Transition-state-theory rate ``k = (kT/h) exp(-dF/kT)``.

    Parameters
    ----------
    barrier
        Free-energy barrier dF in eV.
    temperature
        Temperature in K.

    Returns
    -------
    float
        Rate in s^-1.
    """
    kt = KB_EV * temperature
    return float(kt / H_EV_S * np.exp(-barrier / kt))


def autocorrelation_time(x: np.ndarray) -> float:
    """Integrated autocorrelation time of a 1-D series, in samples (1 for uncorrelated data).

    Uses the FFT autocorrelation function and Sokal's automatic window (stop at the first lag ``t >= 5 tau(t)``).
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 4 or np.var(x) == 0:
        return 1.0
    y = x - x.mean()
    f = np.fft.rfft(y, n=2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    tau = 1.0
    for t in range(1, n):
        tau += 2.0 * acf[t]
        if t >= 5.0 * tau:
            break
    return float(max(tau, 1.0))


@dataclass
class Barrier:
    """A free-energy barrier between two basins of a PMF.

    Attributes
    ----------
    forward, reverse
        dF in eV from basin A (resp. B) to the transition state.
    basin_a, basin_b, transition_state
        CV values of the two minima and of the highest point on the lower path between them.
    temperature
        K.
    """

    forward: float
    reverse: float
    basin_a: float
    basin_b: float
    transition_state: float
    temperature: float

    @property
    def rate_forward(self) -> float:
        """TST rate from basin A to basin B in s^-1."""
        return tst_rate(self.forward, self.temperature)

    @property
    def rate_reverse(self) -> float:
        """TST rate from basin B to basin A in s^-1."""
        return tst_rate(self.reverse, self.temperature)


@dataclass
class PMF:
    """Potential of mean force on a grid.

    Attributes
    ----------
    grid
        (K,) bin centres in CV units.
    free_energy
        (K,) eV, minimum 0; NaN in bins without samples.
    error
        (K,) eV, bootstrap standard deviation (NaN without bootstrap or where undefined).
    window_free_energies
        (W,) eV, the WHAM free energy of each biased window (first window 0).
    overlap
        (W, W) overlap matrix between windows (rows sum to 1, MBAR-style, from the binned weights).
    counts
        (W, K) histogram of each window.
    temperature
        K.
    period
        CV period (e.g. 2 pi for a dihedral) or None.
    warnings
        Messages about too little overlap between neighbouring windows.
    iterations
        Number of Newton iterations used.
    """

    grid: np.ndarray
    free_energy: np.ndarray
    error: np.ndarray
    window_free_energies: np.ndarray
    overlap: np.ndarray
    counts: np.ndarray
    temperature: float
    period: float | None = None
    warnings: list[str] = field(default_factory=list)
    iterations: int = 0

    @property
    def kt(self) -> float:
        """KT in eV."""
        return KB_EV * self.temperature

    def barrier(self, basins: Sequence[tuple[float, float]] | None = None) -> Barrier:
        """Barrier between two basins.

        Parameters
        ----------
        basins
            Two CV ranges ``((a_lo, a_hi), (b_lo, b_hi))``; the minimum of the PMF in each range is a basin. When
            None the two basins are found automatically: of all pairs of grid points, the pair whose lower
            connecting path has the largest barrier above the higher of the two (so noise near the edges does not
            count), and the lowest point on either side of that transition state.

        Returns
        -------
        Barrier
        """
        f = self.free_energy
        ok = np.isfinite(f)
        x = self.grid[ok]
        f = f[ok]
        n = len(f)
        if n < 3:
            raise ValueError('the PMF has fewer than three finite points')
        periodic = self.period is not None
        if basins is not None:
            (a_lo, a_hi), (b_lo, b_hi) = basins
            a = self._argmin_in(x, f, a_lo, a_hi)
            b = self._argmin_in(x, f, b_lo, b_hi)
            ts = self._path_max(f, a, b, periodic)
        else:
            best = (-np.inf, 0, 0, 0)
            for a in range(n):
                g = np.roll(f, -a)
                ts_val = np.maximum.accumulate(g)  # highest point on the path a -> a + k going forward
                if periodic:  # or going backwards through the end of the grid, whichever is lower
                    ts_val = np.minimum(ts_val, np.maximum(g[0], np.maximum.accumulate(g[::-1])[::-1]))
                    ks = np.arange(1, n)
                else:
                    ks = np.arange(1, n - a)
                if len(ks) == 0:
                    continue
                score = ts_val[ks] - np.maximum(g[0], g[ks])
                k = int(np.argmax(score))
                if score[k] > best[0]:
                    best = (score[k], a, (a + ks[k]) % n, 0)
            _, a, b, _ = best
            # refine: lowest minimum on either side of the transition state
            ts = self._path_max(f, a, b, periodic)
            a, b = self._refine(f, a, b, ts, periodic)
            ts = self._path_max(f, a, b, periodic)
        if f[a] > f[b]:
            a, b = b, a
        return Barrier(
            forward=float(f[ts] - f[a]),
            reverse=float(f[ts] - f[b]),
            basin_a=float(x[a]),
            basin_b=float(x[b]),
            transition_state=float(x[ts]),
            temperature=self.temperature,
        )

    @staticmethod
    def _argmin_in(x: np.ndarray, f: np.ndarray, lo: float, hi: float) -> int:
        sel = np.flatnonzero((x >= lo) & (x <= hi))
        if len(sel) == 0:
            raise ValueError(f'no finite PMF point in the basin range ({lo}, {hi})')
        return int(sel[np.argmin(f[sel])])

    @staticmethod
    def _arcs(n: int, a: int, b: int, periodic: bool) -> list[np.ndarray]:
        lo, hi = min(a, b), max(a, b)
        arcs = [np.arange(lo, hi + 1)]
        if periodic:
            arcs.append(np.concatenate([np.arange(hi, n), np.arange(0, lo + 1)]))
        return arcs

    @classmethod
    def _path_max(cls, f: np.ndarray, a: int, b: int, periodic: bool) -> int:
        """Index of the highest point on the lower path from a to b."""
        best = None
        for arc in cls._arcs(len(f), a, b, periodic):
            top = int(arc[np.argmax(f[arc])])
            if best is None or f[top] < f[best]:
                best = top
        return int(best)

    @staticmethod
    def _refine(f: np.ndarray, a: int, b: int, ts: int, periodic: bool) -> tuple[int, int]:
        """Move a and b to the lowest point on their side of the transition state."""
        n = len(f)
        if not periodic:
            left = np.arange(0, ts)
            right = np.arange(ts + 1, n)
            if len(left) == 0 or len(right) == 0:
                return a, b
            return int(left[np.argmin(f[left])]), int(right[np.argmin(f[right])])
        # periodic: the two sides are split by the transition state and by the highest point on the other arc
        g = np.roll(f, -ts)
        other = int(np.argmax(g[1:])) + 1  # highest point elsewhere: splits the circle into two sides
        side1 = np.arange(1, other) if other > 1 else np.array([other])
        side2 = np.arange(other + 1, n) if other + 1 < n else np.array([other])
        i1 = int((side1[np.argmin(g[side1])] + ts) % n)
        i2 = int((side2[np.argmin(g[side2])] + ts) % n)
        return i1, i2


def _histogram_edges(
    data: list[np.ndarray], bins: int | np.ndarray, period: float | None, range_: tuple[float, float] | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Bin edges (CV units) and the samples, periodic ones wrapped into one period (for ``wham`` and ``mbar``).

    Periodic: ``bins`` equal bins over ``[lo, lo + period)`` with ``lo = range[0]`` or ``-period / 2``. Otherwise
    ``bins`` equal bins over ``range`` or the range of the data; explicit edges are used as given.
    """
    if period is not None:
        lo = -period / 2 if range_ is None else range_[0]
        edges = np.linspace(lo, lo + period, int(bins) + 1) if np.isscalar(bins) else np.asarray(bins, dtype=float)
        return edges, [_wrap(d, period, lo) for d in data]
    if not np.isscalar(bins):
        return np.asarray(bins, dtype=float), data
    if range_ is None:
        pooled = np.concatenate(data)
        range_ = (float(pooled.min()), float(pooled.max()))
    return np.linspace(range_[0], range_[1], int(bins) + 1), data


def _overlap_messages(overlap: np.ndarray, centers: np.ndarray, period: float | None, min_overlap: float) -> list[str]:
    """Messages for neighbouring windows (sorted by centre; also last and first if periodic) that overlap too little."""
    order = np.argsort(centers)
    pairs = list(itertools.pairwise(order))
    if period is not None and len(centers) > 2:
        pairs.append((order[-1], order[0]))
    messages = []
    for i, j in pairs:
        o = min(overlap[i, j], overlap[j, i])
        if o < min_overlap:
            messages.append(
                f'windows {int(i)} (centre {centers[i]:.4g}) and {int(j)} (centre {centers[j]:.4g}) overlap too '
                f'little: {o:.3g} < {min_overlap}'
            )
    return messages


def _block_ids(d: np.ndarray, period: float | None) -> tuple[np.ndarray, int]:
    """Block of each sample of one window's series, blocks of ``ceil(2 tau)`` samples (the last takes the rest).

    Tau is the integrated autocorrelation time (of the minimum-image displacement for a periodic CV). Returns the
    block index per sample and the number of blocks, for the block bootstrap of ``wham`` and ``mbar``.
    """
    tau = autocorrelation_time(d - np.mean(d) if period is None else _circular_displacement(d, period))
    size = max(1, int(np.ceil(2 * tau)))
    n_blocks = max(1, len(d) // size)
    return np.minimum(np.arange(len(d)) // size, n_blocks - 1), n_blocks


def _check_samples(data: Sequence[np.ndarray], centers: np.ndarray, finite: bool = True) -> None:
    """Raise unless there is one centre per window, every window has a sample and (``finite``) all are finite."""
    if len(centers) != len(data):
        raise ValueError(f'{len(centers)} centres for {len(data)} windows')
    if any(len(d) == 0 for d in data):
        raise ValueError('every window needs at least one sample')
    if finite and not all(np.all(np.isfinite(d)) for d in data):
        raise ValueError('the samples must be finite')


def _wrap(x: np.ndarray, period: float | None, lo: float) -> np.ndarray:
    if period is None:
        return x
    return lo + np.mod(x - lo, period)


def _displacement(x: np.ndarray, c: np.ndarray, period: float | None) -> np.ndarray:
    d = x - c
    if period is not None:
        d = d - period * np.round(d / period)
    return d


def _solve(
    counts: np.ndarray, n_samples: np.ndarray, ubias: np.ndarray, f0: np.ndarray | None, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Solve the WHAM equations in log space.

    counts (W, K), n_samples (W,), ubias (W, K) reduced bias at bin centres. Returns (log p (K,), f (W,), iters),
    with p normalised over the bins and f the reduced window free energies (f[0] = 0).

    The WHAM self-consistency conditions are the stationarity conditions of the convex function
    ``A(f) = -sum_i N_i f_i + sum_k n_k log sum_i N_i exp(f_i - u_ik)``; a damped Newton iteration on it (with f[0]
    fixed) reaches the fixed point of the classic iteration ``p_k = n_k / sum_i N_i exp(f_i - u_ik)``,
    ``f_i = -log sum_k p_k exp(-u_ik)`` in a few steps instead of thousands.
    """
    total = counts.sum(axis=0)
    occupied = total > 0
    n_k = total[occupied]
    u = ubias[:, occupied]
    log_n = np.log(n_samples)
    f = np.zeros(len(n_samples)) if f0 is None else f0 - f0[0]

    def objective(f: np.ndarray) -> tuple[float, np.ndarray]:
        a = log_n[:, None] + f[:, None] - u
        lse = logsumexp(a, axis=0)
        return float(-np.dot(n_samples, f) + np.dot(n_k, lse)), np.exp(a - lse)

    value, w = objective(f)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        grad = -n_samples + w @ n_k
        hess = np.diag(w @ n_k) - (w * n_k) @ w.T
        step = np.zeros_like(f)
        step[1:] = np.linalg.lstsq(hess[1:, 1:], -grad[1:], rcond=None)[0]
        scale = 1.0
        while True:
            new_value, new_w = objective(f + scale * step)
            if new_value <= value + 1e-12 * abs(value) or scale < 1e-8:
                break
            scale *= 0.5
        f = f + scale * step
        value, w = new_value, new_w
        if np.max(np.abs(scale * step)) < tol:
            break
    log_p = np.full(counts.shape[1], -np.inf)
    log_p[occupied] = np.log(n_k) - logsumexp(log_n[:, None] + f[:, None] - u, axis=0)
    log_p -= logsumexp(log_p[occupied])
    return log_p, f, it


def wham(
    colvars: Sequence[np.ndarray],
    centers: Sequence[float] | np.ndarray,
    kappa: float | Sequence[float] | np.ndarray,
    temperature: float,
    bins: int | np.ndarray = 100,
    period: float | None = None,
    bootstrap: int = 0,
    range: tuple[float, float] | None = None,
    tol: float = 1e-9,
    max_iter: int = 200,
    min_overlap: float = 0.03,
    seed: int = 0,
) -> PMF:
    """Potential of mean force from umbrella sampling with WHAM.

    Parameters
    ----------
    colvars
        One 1-D array of CV samples per window (CV units; time-ordered, for the block bootstrap).
    centers
        (W,) umbrella centres in CV units.
    kappa
        Force constant(s), eV per CV unit squared; bias ``0.5 * kappa * (s - center)**2`` (minimum image when
        ``period`` is given).
    temperature
        K.
    bins
        Number of bins, or bin edges.
    period
        CV period (``2 * np.pi`` for a dihedral in radians) or None for a non-periodic CV. Periodic samples are
        wrapped into ``[range[0], range[0] + period)``, by default ``[-period / 2, period / 2)``.
    bootstrap
        Number of bootstrap resamples for the error; blocks of ``2 tau`` samples (tau: integrated autocorrelation
        time of each window) are resampled with replacement.
    range
        (lo, hi) of the histogram; default: the data range (non-periodic) or one period (periodic).
    tol
        Convergence threshold on the reduced window free energies.
    max_iter
        Maximum number of Newton iterations.
    min_overlap
        Neighbouring windows (sorted by centre) whose overlap-matrix element is below this raise a warning.
    seed
        Seed of the bootstrap.

    Returns
    -------
    PMF
    """
    data = [np.asarray(c, dtype=float).ravel() for c in colvars]
    n_win = len(data)
    centers = np.asarray(centers, dtype=float).ravel()
    _check_samples(data, centers, finite=False)
    kappa = np.broadcast_to(np.asarray(kappa, dtype=float), (n_win,)).copy()
    kt = KB_EV * temperature

    edges, data = _histogram_edges(data, bins, period, range)
    grid = 0.5 * (edges[1:] + edges[:-1])
    widths = np.diff(edges)

    ubias = 0.5 * kappa[:, None] * _displacement(grid[None, :], centers[:, None], period) ** 2 / kt
    counts = np.stack([np.histogram(d, bins=edges)[0] for d in data]).astype(float)
    n_samples = counts.sum(axis=1)
    if np.any(n_samples == 0):
        empty = [int(i) for i in np.flatnonzero(n_samples == 0)]
        raise ValueError(f'windows {empty} have no samples inside the histogram range')

    log_p, f, iters = _solve(counts, n_samples, ubias, None, tol, max_iter)
    free = _to_free_energy(log_p, widths, kt)

    # overlap matrix from the binned weights: O_ij = sum_k n_k W_ki W_kj N_j
    total = counts.sum(axis=0)
    occ = total > 0
    log_w = f[:, None] - ubias[:, occ]  # (W, K')
    log_w = log_w - logsumexp(np.log(n_samples)[:, None] + log_w, axis=0)
    w = np.exp(log_w)
    overlap = (w * total[occ]) @ w.T * n_samples[None, :]

    messages = _overlap_messages(overlap, centers, period, min_overlap)
    for msg in messages:
        warnings.warn(msg, stacklevel=2)

    error = np.full_like(free, np.nan)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        blocks = []
        for d in data:
            block_id, n_blocks = _block_ids(d, period)
            idx = np.minimum(np.digitize(d, edges) - 1, len(grid) - 1)
            inside = (d >= edges[0]) & (d <= edges[-1])
            block_hist = np.zeros((n_blocks, len(grid)))
            np.add.at(block_hist, (block_id[inside], idx[inside]), 1.0)
            blocks.append(block_hist)
        samples = []
        for _ in np.arange(bootstrap):
            c = np.stack([b[rng.integers(0, len(b), len(b))].sum(axis=0) for b in blocks])
            ns = c.sum(axis=1)
            if np.any(ns == 0):
                continue
            lp, _, _ = _solve(c, ns, ubias, f, tol * 10, max_iter)
            samples.append(_to_free_energy(lp, widths, kt))
        if samples:
            s = np.array(samples)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', RuntimeWarning)
                error = np.nanstd(s, axis=0, ddof=1) if len(s) > 1 else np.full_like(free, np.nan)
            error[~np.isfinite(free)] = np.nan

    return PMF(
        grid=grid,
        free_energy=free,
        error=error,
        window_free_energies=f * kt,
        overlap=overlap,
        counts=counts,
        temperature=float(temperature),
        period=period,
        warnings=messages,
        iterations=iters,
    )


def _circular_displacement(d: np.ndarray, period: float) -> np.ndarray:
    """Displacement of periodic samples from their circular mean (for the autocorrelation time)."""
    phase = 2 * np.pi * d / period
    mean = np.angle(np.mean(np.exp(1j * phase)))
    return np.angle(np.exp(1j * (phase - mean))) * period / (2 * np.pi)


def _to_free_energy(log_p: np.ndarray, widths: np.ndarray, kt: float) -> np.ndarray:
    with np.errstate(divide='ignore', invalid='ignore'):
        free = -kt * (log_p - np.log(widths))
    free[~np.isfinite(free)] = np.nan
    if np.any(np.isfinite(free)):
        free -= np.nanmin(free)
    return free
