"""MBAR (pymbar) PMFs: against exact free energies, against WHAM on the same samples, and with committee reweighting.

The referee is exact: independent samples drawn from each window's biased Boltzmann density (inverse CDF on a fine
grid), so the only errors are the statistical ones and the estimators' own.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp

from aiida_mlff.core.free_energy import member_pmfs
from aiida_mlff.core.mbar import mbar
from aiida_mlff.core.options import UMBRELLA
from aiida_mlff.core.wham import KB_EV, wham

T = 300.0
KT = KB_EV * T
PERIOD = 2 * np.pi


def double_well(x: np.ndarray) -> np.ndarray:
    """Exact PMF in kT: asymmetric double well, minima near -1 and +1, barrier about 3 kT."""
    return 3.0 * (x**2 - 1.0) ** 2 + 0.5 * x


def torsion(phi: np.ndarray) -> np.ndarray:
    """Exact periodic PMF in kT (period 2 pi): three-fold cosine plus a one-fold tilt, as a dihedral."""
    return 2.0 * (1.0 + np.cos(3.0 * phi)) + 0.7 * np.cos(phi)


def exact_samples(free, centers, kappa_kt, n, lo, hi, period=None, seed=0):
    """``n`` independent samples per window from ``exp(-F(x) - 0.5 kappa (x - c)^2)`` (kT units) on ``[lo, hi]``."""
    rng = np.random.default_rng(seed)
    x = np.linspace(lo, hi, 40001)
    out = []
    for c in centers:
        d = x - c
        if period is not None:
            d -= period * np.round(d / period)
        log_p = -(free(x) + 0.5 * kappa_kt * d**2)
        p = np.exp(log_p - log_p.max())
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
        out.append(np.interp(rng.random(n), cdf / cdf[-1], x))
    return out


def exact_binned(free, edges: np.ndarray) -> np.ndarray:
    """Exact PMF of each bin in kT, minimum 0: ``-ln`` of the bin average of ``exp(-F)``."""
    values = np.array([-logsumexp(-free(np.linspace(a, b, 201))) + np.log(201) for a, b in itertools.pairwise(edges)])
    return values - values.min()


def shape_error(f: np.ndarray, exact: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Deviation in kT from the exact PMF on ``sel``, after removing the arbitrary offset (mean difference)."""
    diff = f[sel] - exact[sel]
    return diff - diff.mean()


@pytest.fixture(scope='module')
def well():
    """Double well: 17 windows on [-1.6, 1.6], kappa 60 kT per unit^2, 4000 samples each."""
    centers = np.linspace(-1.6, 1.6, 17)
    kappa_kt = 60.0
    return centers, kappa_kt, exact_samples(double_well, centers, kappa_kt, 4000, -2.6, 2.6, seed=1)


@pytest.fixture(scope='module')
def dihedral():
    """Torsion: 24 windows around the circle, kappa 40 kT/rad^2, 3000 samples each; odd windows shifted by 2 pi."""
    centers = np.linspace(-np.pi, np.pi, 24, endpoint=False)
    kappa_kt = 40.0
    data = exact_samples(torsion, centers, kappa_kt, 3000, -np.pi, np.pi, period=PERIOD, seed=2)
    return centers, kappa_kt, [d + PERIOD * (i % 2) for i, d in enumerate(data)]


def test_double_well_matches_exact(well):
    """Within 0.25 kT everywhere F < 5 kT, 0.07 kT rms (measured over seeds 1-3: max 0.06-0.22, rms 0.03-0.05)."""
    centers, kappa_kt, data = well
    edges = np.linspace(-1.8, 1.8, 73)  # narrower than the data: outside samples still enter the MBAR solution
    pmf = mbar(data, centers, kappa_kt * KT, T, bins=edges)
    np.testing.assert_allclose(pmf.grid, 0.5 * (edges[1:] + edges[:-1]))
    exact = exact_binned(double_well, edges)
    sel = exact < 5.0
    f = pmf.free_energy / KT
    assert np.all(np.isfinite(f[sel]))
    assert np.nanmin(f) == 0.0
    dev = shape_error(f, exact, sel)
    assert np.max(np.abs(dev)) < 0.25, np.max(np.abs(dev))
    assert np.sqrt(np.mean(dev**2)) < 0.07, np.sqrt(np.mean(dev**2))
    assert np.all(np.isnan(pmf.error))  # no bootstrap asked for
    assert pmf.window_free_energies[0] == 0.0
    assert pmf.overlap.shape == (17, 17)
    np.testing.assert_allclose(pmf.overlap.sum(axis=1), 1.0, atol=1e-8)
    assert pmf.counts.shape == (17, 72)
    assert not pmf.warnings


def test_bootstrap_error_is_the_size_of_the_actual_error(well):
    """On a quarter of the samples: the block-bootstrap 1-sigma (eV) is within a factor 2-3 of the actual error."""
    centers, kappa_kt, data = well
    edges = np.linspace(-1.8, 1.8, 73)
    pmf = mbar([d[::4] for d in data], centers, kappa_kt * KT, T, bins=edges, bootstrap=20, seed=5)
    exact = exact_binned(double_well, edges)
    sel = exact < 5.0
    rms = np.sqrt(np.mean(shape_error(pmf.free_energy / KT, exact, sel) ** 2))
    err = pmf.error[sel] / KT
    assert np.all(np.isfinite(err))
    assert 0.5 * rms < np.sqrt(np.mean(err**2)) < 3 * rms, (rms, np.sqrt(np.mean(err**2)))
    again = mbar([d[::4] for d in data], centers, kappa_kt * KT, T, bins=edges, bootstrap=20, seed=5)
    np.testing.assert_array_equal(again.error, pmf.error)  # the seed fixes the resamples


def test_periodic_torsion_matches_exact(dihedral):
    """Period 2 pi: within 0.25 kT where F < 5 kT, 0.07 kT rms (seeds 1-3: max 0.10-0.14, rms 0.04-0.05).

    Samples shifted by a whole period change nothing.
    """
    centers, kappa_kt, data = dihedral
    pmf = mbar(data, centers, kappa_kt * KT, T, bins=60, period=PERIOD)
    edges = np.linspace(-np.pi, np.pi, 61)
    np.testing.assert_allclose(pmf.grid, 0.5 * (edges[1:] + edges[:-1]))
    exact = exact_binned(torsion, edges)
    sel = exact < 5.0
    dev = shape_error(pmf.free_energy / KT, exact, sel)
    assert np.max(np.abs(dev)) < 0.25, np.max(np.abs(dev))
    assert np.sqrt(np.mean(dev**2)) < 0.07, np.sqrt(np.mean(dev**2))
    wrapped = [(d + np.pi) % PERIOD - np.pi for d in data]
    np.testing.assert_allclose(
        mbar(wrapped, centers, kappa_kt * KT, T, bins=60, period=PERIOD).free_energy, pmf.free_energy
    )
    assert pmf.period == PERIOD
    assert not pmf.warnings  # windows around the whole circle, the last and the first are neighbours too


@pytest.mark.parametrize('bins', [UMBRELLA['bins'].default, 100])
@pytest.mark.parametrize('case', ['well', 'dihedral'])
def test_wham_and_mbar_agree(case, bins, request):
    """Same samples; the umbrella default of 72 bins and wham's own default of 100 (over the data range or one period).

    Within 0.1 kT where WHAM's F < 5 kT, with no offset removed (measured over seeds 1-3: at most 0.036 kT).
    """
    centers, kappa_kt, data = request.getfixturevalue(case)
    period = PERIOD if case == 'dihedral' else None
    args = (data, centers, kappa_kt * KT, T)
    f_wham = wham(*args, bins=bins, period=period).free_energy / KT
    f_mbar = mbar(*args, bins=bins, period=period).free_energy / KT
    sel = np.isfinite(f_wham) & (f_wham < 5.0)
    assert np.array_equal(np.isfinite(f_wham), np.isfinite(f_mbar))
    diff = np.abs(f_wham[sel] - f_mbar[sel])  # both have their minimum at 0
    assert np.max(diff) < 0.1, np.max(diff)


@pytest.mark.parametrize('case', ['well', 'dihedral'])
def test_member_pmfs_on_an_mbar_pmf(case, request):
    """Members with zero energy differences reproduce the MBAR PMF exactly; a tilted member is tilted."""
    centers, kappa_kt, data = request.getfixturevalue(case)
    period = PERIOD if case == 'dihedral' else None
    pmf = mbar(data, centers, kappa_kt * KT, T, bins=48, period=period)
    n = sum(len(d) for d in data)
    members = member_pmfs(pmf, data, centers, kappa_kt * KT, np.zeros((n, 3)))
    assert members.shape == (3, 48)
    for member in members:
        np.testing.assert_allclose(member, pmf.free_energy, atol=1e-9, equal_nan=True)
    # a member whose energy is higher by 0.5 kT * cos(x): its PMF is the MBAR PMF plus that (up to the bin average)
    x = np.concatenate(data)
    tilt = 0.5 * KT * np.cos(x)
    tilted = member_pmfs(pmf, data, centers, kappa_kt * KT, np.stack([tilt, -tilt], axis=1))
    sel = np.isfinite(pmf.free_energy) & (pmf.free_energy < 5 * KT)
    for sign, member in zip((1, -1), tilted, strict=True):
        expected = pmf.free_energy + sign * 0.5 * KT * np.cos(pmf.grid)
        diff = (member - expected)[sel] / KT
        assert np.max(np.abs(diff - diff.mean())) < 0.02


def test_low_overlap_warns_and_empty_bins_are_nan():
    rng = np.random.default_rng(1)
    centers = np.array([0.0, 0.2, 0.4, 2.0])
    data = [c + 0.05 * rng.standard_normal(2000) for c in centers]
    with pytest.warns(UserWarning, match=r'windows 2 \(centre 0.4\) and 3 \(centre 2\) overlap too little'):
        pmf = mbar(data, centers, 400 * KT, T, bins=50, bootstrap=3)
    assert len(pmf.warnings) == 1
    assert pmf.overlap[0, 1] > 0.03
    gap = (pmf.grid > 0.8) & (pmf.grid < 1.6)
    assert np.all(np.isnan(pmf.free_energy[gap]))
    assert np.all(np.isnan(pmf.error[gap]))
    assert np.all(np.isfinite(pmf.free_energy[np.abs(pmf.grid - 0.2) < 0.1]))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='2 centres for 3 windows'):
        mbar([np.zeros(3)] * 3, [0.0, 1.0], 1.0, T)
    with pytest.raises(ValueError, match='at least one sample'):
        mbar([np.zeros(3), np.zeros(0)], [0.0, 1.0], 1.0, T)
    with pytest.raises(ValueError, match='finite'):
        mbar([np.zeros(3), np.array([0.0, np.nan])], [0.0, 1.0], 1.0, T)
