"""WHAM vs pymbar's MBAR on synthetic umbrella data of a 1-D double well, side by side in one run.

Potential ``U(x) = h (x^2 - 1)^2`` with ``h = 4 kT``; 20 harmonic windows on ``[-1.6, 1.6]``,
``kappa = 40 kT`` per unit^2. Samples are drawn exactly from each biased distribution on a fine grid (inverse CDF
with uniform jitter inside a grid cell), so the exact PMF is known. Times ``aiida_mlff.core.wham.wham`` and pymbar's
``MBAR`` (solve + PMF from its weights on the same bins) and prints the largest PMF differences (in kT) where the
exact PMF is below 5 kT: WHAM vs MBAR, and each against the exact PMF.

The last line is ``RESULT {json}`` for ``benchmarks/run``.
Usage: ``python benchmarks/bench_wham.py [--samples 20000] [--thin 1]`` (``--thin N``: MBAR uses every N-th sample).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.special import logsumexp

KB = 8.617333262e-5  # eV/K
TEMPERATURE = 300.0
KT = KB * TEMPERATURE
BARRIER = 4.0  # kT
KAPPA = 40.0 * KT  # eV per unit^2
LO, HI, BINS = -2.0, 2.0, 100


def potential(x: np.ndarray) -> np.ndarray:
    """Double well in eV."""
    return BARRIER * KT * (x**2 - 1.0) ** 2


def sample_windows(centers: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` exact samples from each biased distribution ``exp(-(U + bias) / kT)`` on ``[LO, HI]``."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(LO, HI, 400_001)
    mid = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    out = []
    for c in centers:
        log_p = -(potential(mid) + 0.5 * KAPPA * (mid - c) ** 2) / KT
        p = np.exp(log_p - log_p.max())
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        cell = np.searchsorted(cdf, rng.random(n))
        out.append(edges[cell] + width * rng.random(n))
    return out


def exact_pmf(edges: np.ndarray) -> np.ndarray:
    """Bin-averaged exact PMF in kT (``-ln`` of the mean Boltzmann factor over each bin), minimum 0."""
    fine = np.linspace(edges[0], edges[-1], 200 * (len(edges) - 1) + 1)
    mid = 0.5 * (fine[1:] + fine[:-1])
    boltz = np.exp(-potential(mid) / KT).reshape(len(edges) - 1, -1).mean(axis=1)
    f = -np.log(boltz)
    return f - f.min()


def run_mbar(samples: list[np.ndarray], centers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """PMF in kT from pymbar's MBAR: reduced bias energies of every sample in every window, then its weights."""
    import pymbar

    x = np.concatenate(samples)
    n_k = np.array([len(s) for s in samples])
    u_kn = 0.5 * KAPPA * (x[None, :] - centers[:, None]) ** 2 / KT
    mbar = pymbar.MBAR(u_kn, n_k)
    f_k = mbar.f_k
    # unbiased-state weight of each sample: 1 / sum_k N_k exp(f_k - u_kn)
    log_w = -logsumexp(f_k[:, None] - u_kn, b=n_k[:, None], axis=0)
    which = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
    log_hist = np.full(len(edges) - 1, -np.inf)
    for b in np.unique(which):
        log_hist[b] = logsumexp(log_w[which == b])
    f = -(log_hist - np.log(np.diff(edges)))
    return f - np.nanmin(f[np.isfinite(f)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--windows', type=int, default=20)
    parser.add_argument('--samples', type=int, default=20000, help='samples per window')
    parser.add_argument('--thin', type=int, default=1, help='MBAR uses every N-th sample (WHAM always uses all)')
    args = parser.parse_args()

    from aiida_mlff.core.wham import wham

    centers = np.linspace(-1.6, 1.6, args.windows)
    samples = sample_windows(centers, args.samples)
    edges = np.linspace(LO, HI, BINS + 1)
    exact = exact_pmf(edges)

    t0 = time.perf_counter()
    pmf = wham(samples, centers, KAPPA, TEMPERATURE, bins=edges)
    t_wham = time.perf_counter() - t0
    f_wham = pmf.free_energy / KT

    thinned = [s[:: args.thin] for s in samples]
    t0 = time.perf_counter()
    f_mbar = run_mbar(thinned, centers, edges)
    t_mbar = time.perf_counter() - t0

    low = exact < 5.0

    # compare shapes: shift each PMF to the exact one's mean over the low region
    def aligned(f):
        return f - np.nanmean(f[low] - exact[low])

    fw, fm = aligned(f_wham), aligned(f_mbar)
    d_wm = float(np.nanmax(np.abs(fw[low] - fm[low])))
    d_we = float(np.nanmax(np.abs(fw[low] - exact[low])))
    d_me = float(np.nanmax(np.abs(fm[low] - exact[low])))
    n_mbar = sum(len(s) for s in thinned)
    print(f'{args.windows} windows x {args.samples} samples; MBAR on {n_mbar} samples (thin {args.thin}); {BINS} bins')
    print(f'WHAM {t_wham:.3f} s, MBAR {t_mbar:.2f} s, ratio {t_mbar / t_wham:.0f}x')
    print(f'max |PMF diff| where F < 5 kT: WHAM-MBAR {d_wm:.3f} kT, WHAM-exact {d_we:.3f} kT, MBAR-exact {d_me:.3f} kT')
    result = {
        't_wham': t_wham,
        't_mbar': t_mbar,
        'thin': args.thin,
        'samples': args.samples,
        'windows': args.windows,
        'max_diff_wham_mbar_kT': d_wm,
        'max_diff_wham_exact_kT': d_we,
        'max_diff_mbar_exact_kT': d_me,
    }
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
