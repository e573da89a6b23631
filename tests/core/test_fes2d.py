"""2-D free-energy surfaces: umbrella sampling on the Müller-Brown surface against its exact free energy, minima and
minimum free-energy paths on the exact surface, and a periodic CV.

The referee of the estimators is real Langevin MD (one carbon atom per window, all windows in one batch) on
``MullerBrown(scale=kT/10)`` at 300 K, compared with :func:`exact_free_energy` on the same bins.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ase import Atoms

from aiida_mlff.core.colvars import HarmonicBias, Position
from aiida_mlff.core.fes2d import (
    FreeEnergySurface,
    default_kappa,
    find_minima,
    mbar2d,
    minimum_free_energy_path,
    umbrella_grid,
    wham2d,
)
from aiida_mlff.core.md.runner import simulate
from aiida_mlff.core.surfaces import MullerBrown, exact_free_energy

pytestmark = pytest.mark.usefixtures('one_thread')

T = 300.0
KT = 8.617333262e-5 * T
H = 0.05  # Å, bin width of the Müller-Brown histograms
EDGES = (np.arange(-1.75, 1.35 + 1e-9, H), np.arange(-0.45, 2.25 + 1e-9, H))
MINIMA = np.array([[-0.558, 1.442], [0.623, 0.028], [-0.050, 0.467]])
SADDLES = np.array([[-0.822, 0.624], [0.212, 0.293]])
SADDLE_HIGH = (-40.7 + 146.7) / 10.0  # kT, the higher saddle above the global minimum (scale kT / 10)


def exact_surface() -> FreeEnergySurface:
    """Exact bin free energies of the Müller-Brown surface (NaN where the Boltzmann factor underflows)."""
    f = exact_free_energy(MullerBrown(scale=KT / 10), list(EDGES), T)
    f[~np.isfinite(f)] = np.nan
    return FreeEnergySurface(EDGES, f, np.zeros_like(f), T, names=('position(0,x)', 'position(0,y)'))


def rms_kt(fes: FreeEnergySurface, exact: np.ndarray, below: float = 8.0) -> tuple[float, int]:
    """RMS deviation in kT over the bins with exact F < ``below`` kT, after subtracting the plain mean difference.

    Returns the RMS and the number of those bins the estimate left empty (NaN).
    """
    sel = exact < below * KT
    ok = sel & np.isfinite(fes.free_energy)
    diff = (fes.free_energy[ok] - exact[ok]) / KT
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2))), int(np.sum(sel & ~ok))


@pytest.fixture(scope='module')
def mb_umbrella():
    """14 x 12 windows (0.2 Å apart, kappa 3 kT / spacing^2 = 75 kT/Å^2) over x [-1.5, 1.1], y [-0.2, 2.0].

    Each window starts at its centre; 16000 Langevin steps of 2 fs (friction 0.05/fs), every 10th step recorded,
    the first 10 % dropped.
    """
    xs, ys = np.linspace(-1.5, 1.1, 14), np.linspace(-0.2, 2.0, 12)
    cx, cy = umbrella_grid(xs, ys)
    kappa = default_kappa(xs, ys, T)
    biases = [HarmonicBias(Position(0, 'x'), cx, kappa[0]), HarmonicBias(Position(0, 'y'), cy, kappa[1])]
    atoms = [Atoms('C', [[x, y, 0.0]]) for x, y in zip(cx, cy, strict=True)]
    start = time.perf_counter()
    result = simulate(
        MullerBrown(scale=KT / 10),
        atoms,
        ensemble='langevin',
        timestep=2.0,
        steps=16000,
        temperature=T,
        friction=0.05,
        biases=biases,
        stride=10,
        seed=1,
        max_energy_jump=20.0,  # windows in the steep corners start far uphill
    )
    print(f'\nMD of {len(cx)} windows: {time.perf_counter() - start:.1f} s')
    assert np.mean(np.asarray(result.status) == 'ok') > 0.95  # a stopped corner window keeps its frames up to the stop
    cv = result.colvars[result.colvars.shape[0] // 10 :]
    series = [cv[:, w][np.all(np.isfinite(cv[:, w]), axis=1)] for w in range(len(cx))]
    keep = [w for w, s in enumerate(series) if len(s) > 0]
    return [series[w] for w in keep], np.stack([cx, cy], axis=1)[keep], kappa


def test_umbrella_grid_layout():
    cx, cy = umbrella_grid([0.0, 1.0, 2.0], [5.0, 6.0])
    assert cx.tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert cy.tolist() == [5.0, 6.0, 5.0, 6.0, 5.0, 6.0]
    assert np.allclose(default_kappa([0.0, 0.5, 1.0], [0.0, 0.25], T), [3 * KT / 0.25, 3 * KT / 0.0625])


@pytest.mark.parametrize('estimator', [wham2d, mbar2d])
def test_muller_brown_umbrella_matches_exact(mb_umbrella, estimator):
    """Both estimators within 0.2 kT RMS of the exact surface where it is below 8 kT (plain-mean offset removed)."""
    colvars, centers, kappa = mb_umbrella
    # MBAR on every 2nd frame (40 fs apart), to keep its (W, N) bias matrix small
    stride = 1 if estimator is wham2d else 2
    start = time.perf_counter()
    fes = estimator([c[::stride] for c in colvars], centers, kappa, T, bins=EDGES)
    rms, empty = rms_kt(fes, exact_surface().free_energy)
    print(f'\n{fes.estimator}: RMS {rms:.3f} kT over F < 8 kT, {time.perf_counter() - start:.1f} s')
    assert empty == 0
    assert rms < 0.2
    assert np.nanmin(fes.free_energy) == 0.0
    assert fes.window_free_energies.shape == (len(centers),)


def test_minima_of_muller_brown():
    """The three minima; the intermediate basin spills over the low saddle at about 0.86 kT, so min_depth 0.5 kT."""
    fes = exact_surface()
    minima = find_minima(fes, min_depth=0.5 * KT)
    assert len(minima) == 3
    found = np.array([m.position for m in minima])
    assert np.all(np.linalg.norm(found - MINIMA, axis=1) < 0.03)  # bin 0.05 Å, parabola-refined
    assert minima[0].free_energy == 0.0
    assert minima[0].depth == np.inf
    assert [m.free_energy for m in minima] == sorted(m.free_energy for m in minima)
    assert len(find_minima(fes)) == 2  # default 1 kT merges the shallow intermediate basin


def test_minimum_free_energy_path_of_muller_brown():
    """The string from the global to the second minimum crosses both saddles; the barrier matches the exact one.

    Tolerance of the barrier: the binned exact surface differs from the point energies by the bin average,
    about ``h^2 (U_xx + U_yy) / 24`` (<0.1 kT for h = 0.05 Å and curvatures of a few hundred kT/Å^2 at the
    minimum), and the cubic spline and the saddle's location on the string add less; so 0.2 kT.
    """
    fes = exact_surface()
    minima = find_minima(fes, min_depth=0.5 * KT)
    path = minimum_free_energy_path(fes, minima[0].position, minima[1].position, n_images=30)
    assert path.converged
    assert np.linalg.norm(path.saddle - SADDLES[0]) < 0.05
    dense = np.concatenate([np.linspace(a, b, 20) for a, b in zip(path.points[:-1], path.points[1:], strict=True)])
    for saddle in SADDLES:
        assert np.min(np.linalg.norm(dense - saddle, axis=1)) < 0.1
    assert np.linalg.norm(path.points[0] - MINIMA[0]) < 0.05
    assert np.linalg.norm(path.points[-1] - MINIMA[1]) < 0.05
    assert path.barrier_forward / KT == pytest.approx(SADDLE_HIGH, abs=0.2)
    assert path.barrier_reverse / KT == pytest.approx((-40.7 + 108.2) / 10.0, abs=0.2)
    assert path.error_forward == 0.0


def periodic_samples(centers: np.ndarray, kappa: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Independent samples of ``F = 2 cos(3 x) + cos(x) + 0.5 y^2`` (kT) under each window's bias, x of period 2 pi."""
    rng = np.random.default_rng(seed)
    gx = np.linspace(-np.pi, np.pi, 360, endpoint=False)
    gy = np.linspace(-3.0, 3.0, 121)
    hx, hy = gx[1] - gx[0], gy[1] - gy[0]
    x, y = np.meshgrid(gx, gy, indexing='ij')
    out = []
    for (c0, c1), (k0, k1) in zip(centers, kappa, strict=True):
        dx = (x - c0 + np.pi) % (2 * np.pi) - np.pi
        log_p = -(2 * np.cos(3 * x) + np.cos(x) + 0.5 * y**2) - 0.5 * (k0 * dx**2 + k1 * (y - c1) ** 2) / KT
        p = np.exp(log_p - log_p.max()).ravel()
        pick = rng.choice(p.size, n, p=p / p.sum())
        i, j = np.divmod(pick, len(gy))
        out.append(np.stack([gx[i] + hx * rng.random(n), gy[j] + hy * (rng.random(n) - 0.5)], axis=1))
    return out


def test_periodic_cv_same_on_shifted_range():
    """A periodic x: the surface on [-pi, pi) equals the one on [0, 2 pi) rolled by half a period; samples given
    shifted by whole periods change nothing."""
    cx, cy = umbrella_grid(np.linspace(-np.pi, np.pi, 12, endpoint=False), [-1.0, 0.0, 1.0])
    centers = np.stack([cx, cy], axis=1)
    kappa = np.array([3 * KT / (np.pi / 6) ** 2, 3 * KT])
    data = periodic_samples(centers, np.broadcast_to(kappa, centers.shape), 1500, seed=3)
    shifted = [d + np.array([2 * np.pi * (w % 3 - 1), 0.0]) for w, d in enumerate(data)]
    kw = {'bins': (48, 20), 'periods': (2 * np.pi, None)}
    base = wham2d(data, centers, kappa, T, ranges=(None, (-2.5, 2.5)), **kw)
    moved = wham2d(shifted, centers, kappa, T, ranges=((0.0, 2 * np.pi), (-2.5, 2.5)), **kw)
    assert np.allclose(moved.edges[0], base.edges[0] + np.pi)
    assert np.allclose(np.roll(base.free_energy, -24, axis=0), moved.free_energy, equal_nan=True, atol=1e-6)
    # and near the exact bin-averaged surface (plain-mean offset removed) where it is below 4 kT
    sub = [e[:-1, None] + np.diff(e)[:, None] * (np.arange(10) + 0.5) / 10 for e in base.edges]  # 10 per bin
    u = 2 * np.cos(3 * sub[0]) + np.cos(sub[0])  # (48, 10) kT
    exact = -KT * (np.log(np.exp(-u).mean(1))[:, None] + np.log(np.exp(-0.5 * sub[1] ** 2).mean(1))[None, :])
    sel = (exact - exact.min() < 4 * KT) & np.isfinite(base.free_energy)
    diff = (base.free_energy[sel] - exact[sel]) / KT
    print(f'\nperiodic WHAM: RMS {np.sqrt(np.mean((diff - diff.mean()) ** 2)):.3f} kT')
    assert np.sqrt(np.mean((diff - diff.mean()) ** 2)) < 0.3  # noise-limited: ~20-100 samples in the outer bins
    # MBAR agrees with WHAM on the same samples, and the bootstrap gives finite errors where there are samples
    other = mbar2d(data, centers, kappa, T, ranges=(None, (-2.5, 2.5)), bootstrap=3, **kw)
    gap = (other.free_energy - base.free_energy)[sel] / KT
    assert np.sqrt(np.mean((gap - gap.mean()) ** 2)) < 0.1
    assert np.mean(np.isfinite(other.error[sel])) > 0.9  # a sparse outer bin may be empty in all but one resample
    assert np.nanmedian(other.error[sel]) < 0.3 * KT


def test_periodic_minima_and_path_wrap():
    """Minima are merged across the periodic end, and a path between them goes the short way, unwrapped."""
    gx = np.linspace(-np.pi, np.pi, 36, endpoint=False) + np.pi / 36
    gy = np.linspace(-2.0, 2.0, 21)
    edges = (np.linspace(-np.pi, np.pi, 37), np.linspace(-2.1, 2.1, 22))
    gy = 0.5 * (edges[1][1:] + edges[1][:-1])
    f = (np.cos(2 * gx)[:, None] * 3.0 + 0.5 * gy[None, :] ** 2 * 4.0) * KT  # minima at x = +-pi/2
    f -= f.min()
    fes = FreeEnergySurface(edges, f, np.full_like(f, 0.01), T, periods=(2 * np.pi, None))
    minima = find_minima(fes)
    assert len(minima) == 2
    xs = sorted(m.position[0] for m in minima)
    assert np.allclose(xs, [-np.pi / 2, np.pi / 2], atol=0.1)
    path = minimum_free_energy_path(fes, [np.pi / 2, 0.0], [-np.pi / 2 + 0.2, 0.0], n_images=20)
    assert np.all(np.abs(np.diff(path.points[:, 0])) < 0.5)  # continuous (unwrapped)
    assert path.barrier_forward / KT == pytest.approx(6.0, abs=0.1)
    assert path.error_forward == pytest.approx(np.hypot(0.01, 0.01))
