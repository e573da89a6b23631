"""WHAM against exact PMFs, against pymbar's MBAR, periodic CVs, barriers, rates and overlap warnings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.signal import lfilter
from scipy.special import logsumexp
from scipy.stats import norm

from aiida_mlff.core.wham import H_EV_S, KB_EV, autocorrelation_time, tst_rate, wham

T = 300.0
KT = KB_EV * T


def double_well(x):
    """Exact PMF in units of kT: asymmetric double well, minima near +-1, barrier about 3 kT."""
    return 3.0 * (x**2 - 1.0) ** 2 + 0.5 * x


def dihedral_pmf(phi):
    """Exact periodic PMF in units of kT (three-fold cosine plus a one-fold tilt)."""
    return 2.0 * (1.0 + np.cos(3.0 * phi)) + 0.7 * np.cos(phi)


def sample_umbrella(pmf, centers, kappa_kt, n, lo, hi, period=None, rho=0.5, seed=0):
    """Correlated samples with the exact biased marginal: an AR(1) Gaussian copula through the inverse CDF."""
    rng = np.random.default_rng(seed)
    x = np.linspace(lo, hi, 20001)
    out = []
    for c in centers:
        d = x - c
        if period is not None:
            d = d - period * np.round(d / period)
        logp = -(pmf(x) + 0.5 * kappa_kt * d**2)
        p = np.exp(logp - logp.max())
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
        cdf /= cdf[-1]
        eps = rng.standard_normal(n) * np.sqrt(1 - rho**2)
        eps[0] = rng.standard_normal()
        z = lfilter([1.0], [1.0, -rho], eps)
        out.append(np.interp(norm.cdf(z), cdf, x))
    return out


def bin_exact(pmf, edges):
    """Exact PMF averaged over each bin, in kT: -ln(mean over the bin of exp(-F))."""
    vals = []
    for a, b in itertools.pairwise(edges):
        x = np.linspace(a, b, 201)
        vals.append(-logsumexp(-pmf(x)) + np.log(len(x)))
    vals = np.array(vals)
    return vals - vals.min()


def mbar_pmf(pymbar, data, centers, kappa_kt, edges, period=None):
    """PMF in kT histogrammed from MBAR's unbiased weights (pymbar, for comparison only)."""
    x = np.concatenate(data)
    if period is not None:
        x = edges[0] + np.mod(x - edges[0], period)
    n_k = np.array([len(d) for d in data])
    d = x[None, :] - centers[:, None]
    if period is not None:
        d -= period * np.round(d / period)
    u_kn = 0.5 * kappa_kt * d**2
    mbar = pymbar.MBAR(u_kn, n_k)
    log_w = -logsumexp(mbar.f_k[:, None] - u_kn + np.log(n_k)[:, None], axis=0)
    idx = np.digitize(x, edges) - 1
    inside = (idx >= 0) & (idx < len(edges) - 1)
    hist = np.bincount(idx[inside], weights=np.exp(log_w[inside]), minlength=len(edges) - 1)
    with np.errstate(divide='ignore'):
        f_mbar = -np.log(hist / np.diff(edges))
    return f_mbar - np.nanmin(f_mbar)


@pytest.fixture(scope='module')
def double_well_data():
    centers = np.linspace(-1.6, 1.6, 25)
    kappa_kt = 100.0
    data = sample_umbrella(double_well, centers, kappa_kt, 4000, -2.2, 2.2)
    return centers, kappa_kt, data


def test_double_well_matches_exact_and_mbar(double_well_data):
    centers, kappa_kt, data = double_well_data
    edges = np.linspace(-1.8, 1.8, 73)
    pmf = wham(data, centers, kappa_kt * KT, T, bins=edges, bootstrap=20)
    exact = bin_exact(double_well, edges)
    f = pmf.free_energy / KT
    sel = exact < 5.0
    assert np.all(np.isfinite(f[sel]))
    shift = np.mean(f[sel] - exact[sel])  # compare shapes, not the arbitrary zero
    rms = np.sqrt(np.mean((f[sel] - shift - exact[sel]) ** 2))
    assert rms < 0.1, rms
    # bootstrap errors: finite, of the size of the actual error (within a factor of a few)
    err = pmf.error[sel] / KT
    assert np.all(np.isfinite(err))
    assert 0.2 * rms < np.sqrt(np.mean(err**2)) < 5 * rms + 0.05

    # MBAR (pymbar) on the same samples, PMF histogrammed from the unbiased weights; every 4th sample keeps
    # pymbar's cost down (about 2 s), WHAM sees the same thinned data
    pymbar = pytest.importorskip('pymbar')
    thin = [d[::4] for d in data]
    f = wham(thin, centers, kappa_kt * KT, T, bins=edges).free_energy / KT
    f_mbar = mbar_pmf(pymbar, thin, centers, kappa_kt, edges)
    diff = f[sel] - f_mbar[sel]
    diff -= diff.mean()
    assert np.sqrt(np.mean(diff**2)) < 0.05, np.sqrt(np.mean(diff**2))
    assert np.max(np.abs(diff)) < 0.1


def test_barrier_and_rate(double_well_data):
    centers, kappa_kt, data = double_well_data
    pmf = wham(data, centers, kappa_kt * KT, T, bins=72, range=(-1.8, 1.8))
    x = np.linspace(-1.8, 1.8, 100001)
    e = double_well(x)
    left, right, top = e[x < 0].min(), e[x > 0].min(), e[np.abs(x) < 0.3].max()
    b = pmf.barrier()
    assert b.forward >= b.reverse
    assert abs(b.forward / KT - (top - left)) < 0.25
    assert abs(b.reverse / KT - (top - right)) < 0.25
    assert abs(b.transition_state) < 0.15
    assert {round(b.basin_a), round(b.basin_b)} == {-1, 1}
    given = pmf.barrier(basins=((-1.5, -0.5), (0.5, 1.5)))
    assert given.forward == pytest.approx(b.forward)
    assert b.rate_forward == pytest.approx(KT / H_EV_S * np.exp(-b.forward / KT))
    assert tst_rate(0.0, 300.0) == pytest.approx(6.25e12, rel=1e-2)  # kT/h at 300 K


def test_periodic_dihedral():
    period = 2 * np.pi
    centers = np.linspace(-np.pi, np.pi, 24, endpoint=False)
    kappa_kt = 40.0
    data = sample_umbrella(dihedral_pmf, centers, kappa_kt, 3000, -np.pi, np.pi, period=period, seed=3)
    # shift half of the samples by a full period: the result must not change
    data = [d + period * (i % 2) for i, d in enumerate(data)]
    pmf = wham(data, centers, kappa_kt * KT, T, bins=60, period=period)
    assert pmf.grid.min() > -np.pi
    assert pmf.grid.max() < np.pi
    edges = np.linspace(-np.pi, np.pi, 61)
    exact = bin_exact(dihedral_pmf, edges)
    f = pmf.free_energy / KT
    sel = exact < 5.0
    shift = np.mean(f[sel] - exact[sel])
    rms = np.sqrt(np.mean((f[sel] - shift - exact[sel]) ** 2))
    assert rms < 0.1, rms
    pymbar = pytest.importorskip('pymbar')
    thin = [d[::3] for d in data]
    diff = wham(thin, centers, kappa_kt * KT, T, bins=60, period=period).free_energy / KT
    diff = diff[sel] - mbar_pmf(pymbar, thin, centers, kappa_kt, edges, period=period)[sel]
    diff -= diff.mean()
    assert np.sqrt(np.mean(diff**2)) < 0.05, np.sqrt(np.mean(diff**2))
    # from the deepest basin (phi = pi) over the lower saddle (near 2 pi / 3) to the basin near pi / 3
    fine = np.linspace(-np.pi, np.pi, 36001)
    e = dihedral_pmf(fine)
    top = e[(fine > 1.2) & (fine < 2.8)].max()
    b = pmf.barrier(basins=((2.6, 3.2), (0.6, 1.5)))
    assert b.forward / KT == pytest.approx(top - e.min(), abs=0.25)
    assert b.reverse / KT == pytest.approx(top - e[(fine > 0.6) & (fine < 1.5)].min(), abs=0.25)
    # automatic search on a circle: a pair of basins separated by the 3.3 kT saddles (not the 4.7 kT one at 0)
    auto = pmf.barrier()
    assert auto.reverse / KT == pytest.approx(top - e[(fine > 0.6) & (fine < 1.5)].min(), abs=0.3)
    assert abs(auto.transition_state) > 1.5
    assert not pmf.warnings


def test_overlap_warning_names_windows():
    rng = np.random.default_rng(1)
    centers = np.array([0.0, 0.2, 0.4, 2.0])
    data = [c + 0.05 * rng.standard_normal(2000) for c in centers]
    with pytest.warns(UserWarning, match='windows 2 .* and 3 '):
        pmf = wham(data, centers, 400 * KT, T, bins=50)
    assert pmf.overlap.shape == (4, 4)
    np.testing.assert_allclose(pmf.overlap.sum(axis=1), 1.0, atol=1e-8)
    assert pmf.overlap[0, 1] > 0.03
    assert len(pmf.warnings) == 1


def test_autocorrelation_time():
    rng = np.random.default_rng(0)
    assert autocorrelation_time(rng.standard_normal(20000)) == pytest.approx(1.0, abs=0.2)
    rho = 0.9
    z = lfilter([1.0], [1.0, -rho], rng.standard_normal(400_000))
    assert autocorrelation_time(z) == pytest.approx((1 + rho) / (1 - rho), rel=0.15)
