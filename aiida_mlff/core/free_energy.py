"""Committee-aware free energies: the PMF of every committee member by reweighting umbrella samples.

Samples are drawn with the committee-mean potential. For member ``m`` the PMF follows from the unbiased WHAM weight
of each sample times ``exp(-(E_m - E_mean) / kT)`` (free-energy perturbation along the collective variable), so no
extra MD is needed. Energies in eV, temperatures in K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from .wham import KB_EV, PMF

__all__ = ['combined_error', 'member_pmfs', 'sample_log_weights']


def _displacement(s: np.ndarray, centers: np.ndarray, period: float | None) -> np.ndarray:
    d = s[:, None] - centers[None, :]
    if period is not None:
        d = d - period * np.round(d / period)
    return d


def sample_log_weights(
    pmf: PMF, colvars: Sequence[np.ndarray], centers: Sequence[float], kappa: float | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(samples, log w)``: all samples pooled, and the log of their unbiased WHAM weights."""
    samples = np.concatenate([np.asarray(c, dtype=float).ravel() for c in colvars])
    counts = np.array([len(np.asarray(c).ravel()) for c in colvars], dtype=float)
    centers = np.asarray(centers, dtype=float)
    kappa = np.broadcast_to(np.asarray(kappa, dtype=float), centers.shape)
    beta = 1.0 / (KB_EV * pmf.temperature)
    bias = 0.5 * kappa[None, :] * _displacement(samples, centers, pmf.period) ** 2  # (S, W) eV
    f = np.asarray(pmf.window_free_energies, dtype=float)
    log_denominator = logsumexp(np.log(counts)[None, :] + beta * (f[None, :] - bias), axis=1)
    return samples, -log_denominator


def member_pmfs(
    pmf: PMF,
    colvars: Sequence[np.ndarray],
    centers: Sequence[float],
    kappa: float | Sequence[float],
    energy_differences: np.ndarray,
) -> np.ndarray:
    """(M, K) PMF of every member on ``pmf.grid`` (eV, minimum 0; NaN in empty bins).

    ``energy_differences`` is (S, M): ``E_m - E_mean`` in eV for each pooled sample, in the order of ``colvars``.
    """
    samples, log_w = sample_log_weights(pmf, colvars, centers, kappa)
    delta = np.asarray(energy_differences, dtype=float)
    if delta.shape[0] != len(samples):
        raise ValueError(f'{delta.shape[0]} energy differences for {len(samples)} samples')
    beta = 1.0 / (KB_EV * pmf.temperature)
    grid = np.asarray(pmf.grid)
    half = np.diff(grid).mean() / 2 if len(grid) > 1 else 0.5
    edges = np.concatenate([grid - half, [grid[-1] + half]])
    x = samples
    if pmf.period is not None:
        x = edges[0] + np.mod(x - edges[0], pmf.period)
    which = np.clip(np.searchsorted(edges, x, side='right') - 1, 0, len(grid) - 1)
    out = np.full((delta.shape[1], len(grid)), np.nan)
    for m in range(delta.shape[1]):
        log_terms = log_w - beta * delta[:, m]
        for k in np.unique(which):
            out[m, k] = -logsumexp(log_terms[which == k]) / beta
        out[m] -= np.nanmin(out[m])
    return out


def combined_error(bootstrap_error: np.ndarray, members: np.ndarray | None) -> np.ndarray:
    """Error band (eV): the bootstrap error and the spread of the member PMFs added in quadrature."""
    error = np.nan_to_num(np.asarray(bootstrap_error, dtype=float), nan=0.0)
    if members is not None and len(members) > 1:
        spread = np.nanstd(members, axis=0)
        error = np.sqrt(error**2 + np.nan_to_num(spread, nan=0.0) ** 2)
    return error
