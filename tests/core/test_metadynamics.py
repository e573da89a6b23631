"""Well-tempered multiple-walker metadynamics: exact hills, model-surface referees and restart.

Units: Å, rad, eV, K, fs, MD steps.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from ase import Atoms

from aiida_mlff.core.colvars import Dihedral, Position
from aiida_mlff.core.fes2d import FreeEnergySurface
from aiida_mlff.core.md import MDState, simulate
from aiida_mlff.core.metadynamics import MetadynamicsBias, bias_free_energy, reweighted_free_energy
from aiida_mlff.core.surfaces import KB_EV, DoubleWell, MullerBrown, exact_free_energy
from aiida_mlff.core.wham import PMF

pytestmark = pytest.mark.usefixtures('one_thread')

T = 300.0
KT = KB_EV * T
MB_GRID = [(-1.7, 1.3, 301), (-0.4, 2.2, 261)]
MB_EDGES = [np.linspace(-1.7, 1.3, 31), np.linspace(-0.4, 2.2, 27)]


def rms_kt(estimate: np.ndarray, exact: np.ndarray, mask: np.ndarray) -> float:
    """RMS difference [kT] over ``mask`` after removing the mean offset (free energies are defined up to one)."""
    d = (estimate[mask] - exact[mask]) / KT
    assert np.isfinite(d).all(), 'bins without samples inside the compared region'
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def walkers(x: float, y: float, n: int) -> list[Atoms]:
    return [Atoms('C', [[x, y, 0.0]]) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ hills
def test_hills_on_grid_match_analytic_gaussians_with_periodic_wrap():
    """Grid value and gradient vs the analytic sum of Gaussians at random points, a periodic CV included.

    Multilinear interpolation errs by at most ``sum_d h_d^2 / 8 max|d^2 f / ds_d^2|``: for the value
    ``sum_j H_j sum_d h_d^2 / (8 sigma_d^2)``; for dV/ds_d, ``sum_j H_j (1.38 h_d^2 / (8 sigma_d^3) +
    sum_{e != d} e^{-1/2} h_e^2 / (8 sigma_d sigma_e^2))`` (1.38 = max |x^3 - 3x| e^{-x^2/2}).
    """
    cvs = [Dihedral(0, 1, 2, 3), Position(0, 'x')]
    sigma = np.array([0.3, 0.1])
    bias = MetadynamicsBias(cvs, [(-np.pi, np.pi, 360), (-1.0, 1.0, 201)], 0.01, sigma, 1, None, T)
    centers = torch.tensor([[3.0, 0.2], [-3.1, -0.5], [0.5, 0.9]], dtype=torch.float64)  # two hills near the seam
    heights = torch.tensor([0.01, 0.02, 0.005], dtype=torch.float64)
    bias.add_hills(centers, heights)

    gen = torch.Generator().manual_seed(0)
    s = torch.rand(2000, 2, generator=gen, dtype=torch.float64) * torch.tensor([2 * np.pi, 2.0])
    s = (s - torch.tensor([np.pi, 1.0])).requires_grad_(True)
    energy = bias.energy_from_cv(s)
    (grad,) = torch.autograd.grad(energy.sum(), s)

    d0 = cvs[0].difference(s[:, None, 0].detach(), centers[None, :, 0])  # minimum image across +-pi
    d1 = s[:, None, 1].detach() - centers[None, :, 1]
    g = heights * torch.exp(-0.5 * (d0 / sigma[0]) ** 2 - 0.5 * (d1 / sigma[1]) ** 2)
    exact_v = g.sum(1)
    exact_g = torch.stack([(-d0 / sigma[0] ** 2 * g).sum(1), (-d1 / sigma[1] ** 2 * g).sum(1)], -1)

    h = np.array([2 * np.pi / 360, 0.01])
    total = float(heights.sum())
    bound_v = total * np.sum(h**2 / (8 * sigma**2))
    bound_g = [
        total
        * (1.38 * h[d] ** 2 / (8 * sigma[d] ** 3) + np.exp(-0.5) * h[1 - d] ** 2 / (8 * sigma[d] * sigma[1 - d] ** 2))
        for d in range(2)
    ]
    assert float((energy.detach() - exact_v).abs().max()) < bound_v  # ~3.3e-5 eV
    for d in range(2):
        assert float((grad[:, d] - exact_g[:, d]).abs().max()) < bound_g[d]
    # wrap: the value just below +pi equals the one just above -pi
    edge = torch.tensor([[np.pi - 1e-9, 0.2], [-np.pi + 1e-9, 0.2]], dtype=torch.float64)
    v, _ = bias.interpolate(edge)
    assert float(v[0]) == pytest.approx(float(v[1]), abs=1e-9)
    # outside a non-periodic grid: the edge value, no force
    v_out, g_out = bias.interpolate(torch.tensor([[0.5, 1.5]], dtype=torch.float64))
    v_edge, _ = bias.interpolate(torch.tensor([[0.5, 1.0]], dtype=torch.float64))
    assert float(v_out[0]) == pytest.approx(float(v_edge[0]))
    assert float(g_out[0, 1]) == 0.0


def test_well_tempered_heights_and_ct():
    """Deposits scale heights by exp(-V / (kB (gamma - 1) T)); c(t) follows the Tiwary-Parrinello integral."""
    bias = MetadynamicsBias([Position(0, 'x')], [(-2.0, 2.0, 401)], 0.01, 0.2, 5, 4.0, T)
    s = torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64)
    bias.update(3, s, torch.ones(3, dtype=torch.bool))  # not a multiple of pace: nothing
    assert bias.n_deposits == 0
    bias.update(5, s, torch.tensor([True, True, False]))
    hills = bias.hills()
    assert hills['heights'].tolist() == pytest.approx([0.01, 0.01])  # V = 0 before; the stopped walker adds none
    v0 = float(bias.interpolate(torch.tensor([[0.0]], dtype=torch.float64))[0][0])
    assert v0 == pytest.approx(0.02, rel=1e-6)
    bias.update(10, s, torch.ones(3, dtype=torch.bool))
    h = bias.hills()['heights'][2:]
    assert h[0] == pytest.approx(0.01 * np.exp(-v0 / (KT * 3.0)), rel=1e-6)
    v = bias.bias_on_grid()
    ct = KT * np.log(np.sum(np.exp(4 / 3 * v / KT)) / np.sum(np.exp(v / (3 * KT))))
    steps, history = bias.ct_history()
    assert steps.tolist() == [5, 10]
    assert history[-1] == pytest.approx(ct, rel=1e-10)
    assert bias.ct_at([0, 5, 6, 10, 11]).tolist() == pytest.approx([0.0, 0.0, history[0], history[0], history[1]])


# ------------------------------------------------------------------------------------------------ referees
def test_double_well_well_tempered_free_energy():
    """1-D double well (barrier 6 kT), 8 walkers: bias and reweighted F within 0.2 kT RMS where exact F < 5 kT."""
    surface = DoubleWell(height=6 * KT, a=1.0, k=1.0)
    bias = MetadynamicsBias([Position(0, 'x')], [(-2.0, 2.0, 401)], 0.2 * KT, 0.06, 10, 5.0, T)
    result = simulate(
        surface, walkers(-1.0, 0.0, 8), 'langevin', timestep=4.0, steps=20_000, temperature=T, friction=0.01,
        biases=[bias], stride=10, seed=1,
    )  # fmt: skip
    assert result.status == ['ok'] * 8
    edges = [np.linspace(-1.8, 1.8, 37)]
    exact = exact_free_energy(surface, edges, T)
    mask = exact < 5 * KT
    from_bias = bias_free_energy(bias, edges)
    reweighted = reweighted_free_energy(result.colvars, result.bias_energy, bias.ct_at(result.step), edges, T)
    assert isinstance(from_bias, PMF)
    assert isinstance(reweighted, PMF)
    rms_bias, rms_rew = rms_kt(from_bias.free_energy, exact, mask), rms_kt(reweighted.free_energy, exact, mask)
    print(
        f'double well: RMS bias {rms_bias:.3f} kT, reweighted {rms_rew:.3f} kT'
    )  # measured 0.10-0.12 / 0.07-0.10 (seeds 1-3)
    assert rms_bias < 0.2
    assert rms_rew < 0.2
    assert np.nanmax(reweighted.error[mask]) < 0.5 * KT


def test_muller_brown_referee():
    """The referee: 2-D well-tempered metadynamics on Müller-Brown (scale kT/10), 64 walkers from the deepest basin.

    Bias and reweighted free energies within 0.2 kT RMS of the exact one over the 0.1 Å bins where exact F < 8 kT
    (bias_factor 6, 15,000 steps of 2 fs; measured RMS 0.13-0.16 kT from the bias, ~0.10 kT reweighted; 50-90 s).
    """
    surface = MullerBrown(scale=KT / 10)
    cvs = [Position(0, 'x'), Position(0, 'y')]
    bias = MetadynamicsBias(cvs, MB_GRID, 0.5 * KT, [0.05, 0.05], 20, 6.0, T)
    start = time.perf_counter()
    result = simulate(
        surface, walkers(-0.56, 1.44, 64), 'langevin', timestep=2.0, steps=15_000, temperature=T, friction=0.01,
        biases=[bias], stride=10, seed=1,
    )  # fmt: skip
    wall = time.perf_counter() - start
    assert result.status == ['ok'] * 64
    exact = exact_free_energy(surface, MB_EDGES, T)
    mask = exact < 8 * KT
    from_bias = bias_free_energy(bias, MB_EDGES)
    reweighted = reweighted_free_energy(result.colvars, result.bias_energy, bias.ct_at(result.step), MB_EDGES, T)
    assert isinstance(reweighted, FreeEnergySurface)
    assert reweighted.estimator == 'metadynamics'
    rms_bias, rms_rew = rms_kt(from_bias.free_energy, exact, mask), rms_kt(reweighted.free_energy, exact, mask)
    print(f'Müller-Brown: RMS bias {rms_bias:.3f} kT, reweighted {rms_rew:.3f} kT, MD {wall:.0f} s')
    assert rms_bias < 0.2
    assert rms_rew < 0.2


# ------------------------------------------------------------------------------------------------ restart
@pytest.mark.parametrize('split', [205, 200])
def test_restart_gives_the_same_hills_and_free_energy(tmp_path, split):
    """N steps in one go vs a split run (save, load, the rest with a fresh bias): the same hills, c(t) and F.

    At 200 the run is cut on a deposit step: the saved state carries the forces computed before that step's hill,
    which the uninterrupted run uses for its next half-kick, so the continued run is exact there too.
    """
    surface = DoubleWell(height=6 * KT)

    def fresh() -> MetadynamicsBias:
        return MetadynamicsBias([Position(0, 'x')], [(-2.0, 2.0, 201)], 0.3 * KT, 0.1, 10, 5.0, T)

    kwargs = dict(ensemble='langevin', timestep=4.0, temperature=T, friction=0.01, stride=10, seed=3)
    whole = fresh()
    r_all = simulate(surface, walkers(-1.0, 0.0, 4), steps=410, biases=[whole], **kwargs)
    first = fresh()
    r1 = simulate(surface, walkers(-1.0, 0.0, 4), steps=split, biases=[first], **kwargs)
    path = r1.final_state.save(tmp_path / 'state')
    second = fresh()
    r2 = simulate(surface, None, steps=410 - split, biases=[second], state=MDState.load(path), **kwargs)

    a, b = whole.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert int(b['n_deposits']) == 41
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-15, err_msg=key)
    np.testing.assert_allclose(r2.colvars, r_all.colvars[21:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r2.bias_energy, r_all.bias_energy[21:], rtol=1e-12, atol=1e-15)
    f_all, f_restart = bias_free_energy(whole).free_energy, bias_free_energy(second).free_energy
    np.testing.assert_allclose(f_restart, f_all, rtol=1e-12, atol=1e-15)


def test_load_rejects_other_parameters():
    bias = MetadynamicsBias([Position(0, 'x')], [(-2.0, 2.0, 201)], 0.01, 0.1, 10, 5.0, T)
    other = MetadynamicsBias([Position(0, 'x')], [(-2.0, 2.0, 201)], 0.01, 0.1, 10, 6.0, T)
    with pytest.raises(ValueError, match='bias_factor'):
        other.load_state_dict(bias.state_dict())


def test_bias_forces_by_the_chain_rule_equal_autograd():
    """The engine's bias forces (closed-form CV gradients x dE/ds) equal autograd through the biases' calls."""
    import torch
    from ase.build import molecule

    from aiida_mlff.core.atoms import AtomsBatch
    from aiida_mlff.core.colvars import Dihedral, Distance, HarmonicBias, batch_offsets
    from aiida_mlff.core.md.runner import _bias_terms

    frames = []
    for k in range(5):
        atoms = molecule('H2O2')
        atoms.rattle(0.2, seed=k)
        frames.append(atoms)
    batch = AtomsBatch.from_atoms(frames, dtype=torch.float64)
    offsets = batch_offsets(batch)
    phi, bond = Dihedral(2, 0, 1, 3), Distance(0, 1)
    meta = MetadynamicsBias([phi, bond], [(-np.pi, np.pi, 90), (1.0, 2.0, 51)], 0.02, [0.3, 0.05], 10, 5.0, T, 3.0)
    centers = np.linspace(-2.0, 2.0, 5)
    meta.add_hills(torch.tensor([[0.5, 1.4], [-1.0, 1.5]], dtype=torch.float64), torch.tensor([0.02, 0.01]))
    biases = [HarmonicBias(phi, centers, 0.7), meta]
    energy, _, forces = _bias_terms(biases, batch.positions, batch.cell, batch.pbc, offsets, {})
    pos = batch.positions.clone().requires_grad_(True)
    reference = sum(b(pos, batch.cell, batch.pbc, offsets)[0] for b in biases)
    (grad,) = torch.autograd.grad(reference.sum(), pos)
    np.testing.assert_allclose(energy.numpy(), reference.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(forces.numpy(), -grad.numpy(), rtol=0, atol=1e-10)
