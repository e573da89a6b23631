"""MBAR analysis of umbrella sampling along one collective variable: the per-sample counterpart of ``wham``.

The window free energies come from pymbar's MBAR solver on the reduced bias of every sample in every window (no
histogram enters the estimate). The unbiased weight of each sample then follows from the MBAR equations, and the PMF
is the histogram of those weights on the same grid as ``wham`` (see :func:`mbar` for why this binned reweighting is
used rather than pymbar's ``FES`` class). Errors come from the same block bootstrap as ``wham``.

Units: collective variables in their own unit (Å or radians), ``kappa`` in eV per CV unit squared, temperature in K,
free energies in eV.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logsumexp

from .wham import (
    KB_EV,
    PMF,
    _block_ids,
    _check_samples,
    _displacement,
    _histogram_edges,
    _overlap_messages,
    _to_free_energy,
)

if TYPE_CHECKING:
    from pymbar import MBAR

__all__ = ['mbar']


def _pymbar() -> ModuleType:
    """Pymbar, imported on first use, with its import-time notices (JAX missing, timeseries caveat) kept quiet."""
    logger = logging.getLogger('pymbar')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import pymbar
    finally:
        logger.setLevel(level)
    return pymbar


def _bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each sample, -1 outside; bins are left-closed and the last one also right-closed (``np.histogram``)."""
    n_bins = len(edges) - 1
    idx = np.searchsorted(edges, x, side='right') - 1
    idx[x == edges[-1]] = n_bins - 1
    idx[(idx < 0) | (idx >= n_bins)] = -1
    return idx


def _binned_free_energy(idx: np.ndarray, log_w: np.ndarray, widths: np.ndarray, kt: float) -> np.ndarray:
    """(K,) eV, minimum 0, NaN in empty bins: ``F_b = -kT ln(sum of the unbiased weights in bin b / width_b)``."""
    inside = idx >= 0
    k, lw = idx[inside], log_w[inside]
    top = np.full(len(widths), -np.inf)
    np.maximum.at(top, k, lw)  # per-bin largest log weight, so that no bin underflows
    sums = np.bincount(k, weights=np.exp(lw - top[k]), minlength=len(widths))
    with np.errstate(divide='ignore', invalid='ignore'):
        log_p = np.where(sums > 0, np.log(sums) + top, -np.inf)
    return _to_free_energy(log_p, widths, kt)


def _unbiased_log_weights(u_kn: np.ndarray, f_k: np.ndarray, n_k: np.ndarray) -> np.ndarray:
    """(N,) log of each sample's weight in the unbiased state: ``-ln sum_k N_k exp(f_k - u_k(x_n))`` (reduced)."""
    return -logsumexp(f_k[:, None] - u_kn + np.log(n_k)[:, None], axis=0)


def _solve(u_kn: np.ndarray, n_k: np.ndarray, f0: np.ndarray | None, seed: int) -> MBAR:
    """Pymbar's MBAR on reduced biases ``u_kn`` (W, N) and sample counts ``n_k`` (W,); ``f_k`` reduced, f_k[0] = 0.

    ``rseed`` is given so that pymbar does not reseed numpy's global random generator.
    """
    return _pymbar().MBAR(u_kn, np.asarray(n_k, dtype=np.int64), initial_f_k=f0, rseed=seed)


def _blocks(data: list[np.ndarray], period: float | None) -> list[list[np.ndarray]]:
    """Per window, the pooled-sample indices of its blocks of ``ceil(2 tau)`` consecutive samples (``wham``'s blocks).

    Tau is the integrated autocorrelation time of the window's series; the last block takes the remainder.
    """
    out, start = [], 0
    for d in data:
        block_id, _ = _block_ids(d, period)
        out.append(np.split(np.arange(start, start + len(d)), np.flatnonzero(np.diff(block_id)) + 1))
        start += len(d)
    return out


def _bootstrap_error(
    u_kn: np.ndarray,
    idx: np.ndarray,
    blocks: list[list[np.ndarray]],
    f_k: np.ndarray,
    widths: np.ndarray,
    kt: float,
    resamples: int,
    seed: int,
) -> np.ndarray:
    """(K,) eV: standard deviation of the PMF over block-bootstrap resamples, each solved again with MBAR.

    The blocks of every window are drawn with replacement (as many as it has); MBAR starts from ``f_k`` (reduced).
    """
    rng = np.random.default_rng(seed)
    pmfs = []
    for _ in range(resamples):
        picks = [np.concatenate([b[i] for i in rng.integers(0, len(b), len(b))]) for b in blocks]
        n_k = np.array([len(p) for p in picks])
        sel = np.concatenate(picks)
        u = u_kn[:, sel]
        f = _solve(u, n_k, f_k, seed).f_k
        pmfs.append(_binned_free_energy(idx[sel], _unbiased_log_weights(u, f, n_k), widths, kt))
    if len(pmfs) < 2:
        return np.full(len(widths), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        return np.nanstd(np.array(pmfs), axis=0, ddof=1)


def mbar(
    colvars: Sequence[np.ndarray],
    centers: Sequence[float] | np.ndarray,
    kappa: float | Sequence[float] | np.ndarray,
    temperature: float,
    bins: int | np.ndarray = 100,
    period: float | None = None,
    bootstrap: int = 0,
    range: tuple[float, float] | None = None,
    min_overlap: float = 0.03,
    seed: int = 0,
) -> PMF:
    """Potential of mean force from umbrella sampling with MBAR (pymbar), interchangeable with ``wham``.

    The window free energies are pymbar's MBAR solution on the exact bias of every sample (minimum image for a
    periodic CV), so no bias is approximated at a bin centre as in WHAM. The PMF is binned reweighting: each sample's
    unbiased MBAR weight is added to its bin on ``wham``'s grid. pymbar's ``FES`` class is not used because it fails
    on a query in a bin without samples (we need NaN there), loops over samples in Python, and its uncertainties
    assume independent samples. All samples are used, as in ``wham`` (no subsampling); samples outside a given
    ``range`` still enter the MBAR solution, only not the histogram.

    Parameters
    ----------
    colvars, centers, kappa, temperature, bins, period, range, min_overlap, seed
        As in :func:`aiida_mlff.core.wham.wham`: samples per window (CV units, time-ordered), centres (CV units),
        force constant(s) in eV per CV unit squared (bias ``0.5 * kappa * (s - center)**2``), K, number of bins or
        edges, CV period or None, histogram range, the neighbour-overlap threshold for warnings, bootstrap seed.
    bootstrap
        Number of block-bootstrap resamples for the error, exactly ``wham``'s scheme (blocks of ``2 tau`` samples per
        window drawn with replacement), each solved again with MBAR. The error is the 1-sigma spread of the PMF in eV,
        NaN when 0. A bootstrap rather than pymbar's analytical uncertainty, because MD samples are correlated and the
        analytical estimate assumes independent ones; so both estimators' error bands also mean the same thing.

    Returns
    -------
    PMF
        ``window_free_energies`` in eV (first window 0), ``overlap`` from pymbar's ``compute_overlap``, ``counts`` the
        histogram of each window, ``iterations`` 0 (pymbar does not report it).
    """
    data = [np.asarray(c, dtype=float).ravel() for c in colvars]
    n_win = len(data)
    centers = np.asarray(centers, dtype=float).ravel()
    _check_samples(data, centers)
    kappa = np.broadcast_to(np.asarray(kappa, dtype=float), (n_win,)).copy()
    kt = KB_EV * temperature

    edges, data = _histogram_edges(data, bins, period, range)
    grid = 0.5 * (edges[1:] + edges[:-1])
    widths = np.diff(edges)
    x = np.concatenate(data)
    n_k = np.array([len(d) for d in data])
    u_kn = 0.5 * kappa[:, None] * _displacement(x[None, :], centers[:, None], period) ** 2 / kt
    idx = _bin_index(x, edges)

    solution = _solve(u_kn, n_k, None, seed)
    f_k = np.asarray(solution.f_k, dtype=float) - solution.f_k[0]
    free = _binned_free_energy(idx, _unbiased_log_weights(u_kn, f_k, n_k), widths, kt)
    overlap = np.asarray(solution.compute_overlap()['matrix'], dtype=float)
    messages = _overlap_messages(overlap, centers, period, min_overlap)
    for msg in messages:
        warnings.warn(msg, stacklevel=2)

    error = np.full_like(free, np.nan)
    if bootstrap > 0:
        error = _bootstrap_error(u_kn, idx, _blocks(data, period), f_k, widths, kt, bootstrap, seed)
        error[~np.isfinite(free)] = np.nan

    return PMF(
        grid=grid,
        free_energy=free,
        error=error,
        window_free_energies=f_k * kt,
        overlap=overlap,
        counts=np.stack([np.histogram(d, bins=edges)[0] for d in data]).astype(float),
        temperature=float(temperature),
        period=period,
        warnings=messages,
        iterations=0,
    )
