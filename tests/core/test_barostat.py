"""NPT with stochastic cell rescaling, checked against exact referees on a truncated-and-shifted Lennard-Jones solid.

The model is argon-like (epsilon 0.0104 eV, sigma 3.40 Å, cutoff 6.9 Å, between the third and fourth fcc shells)
as an fcc crystal at 40 K: its pressure answers a volume change at once (one atom per primitive cell, no slow
structural relaxation), so the barostat's statistics converge in a few thousand steps. Referees:

- the stress against central finite differences of the energy under symmetric strain of a triclinic cell;
- the energies of an NPT run, whose Verlet list is reused while the cell deforms, against freshly built lists;
- the target pressure against the mean pressure of NVT runs at the NPT mean volume (``-trace(stress) / 3`` on the
  recorded frames plus the exact kinetic mean ``N kT / V``: all 3N degrees of freedom are thermalised), plus the
  second-order term ``P'' <dV^2> / 2`` by which ``P(<V>)`` differs from ``<P(V)> = P0`` in a small system;
- the isothermal compressibility from NPT volume fluctuations, ``<dV^2> / (kT <V>)``, against ``-1 / (V dP/dV)``
  from NVT runs at ``<V> (1 -/+ 3 %)``.

Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk

from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.lennard_jones import ShiftedLennardJones
from aiida_mlff.core.md import MDState, VerletList, simulate
from aiida_mlff.core.md.barostat import inverse_cells, volumes
from aiida_mlff.core.options import MD

from . import probes
from .test_host_sync import SYNC_OPS

pytestmark = pytest.mark.usefixtures('one_thread')

T = 40.0  # K
P0 = 500.0  # bar
DT = 10.0  # fs
COMMON = dict(timestep=DT, temperature=T, friction=0.01, skin=1.3)


def argon() -> ShiftedLennardJones:
    return ShiftedLennardJones(epsilon=0.0104, sigma=3.40, cutoff=6.9)


def crystal(a: float = 5.3, repeat: int = 2):
    """fcc argon, 4 repeat^3 atoms (32 by default), cubic cell of edge repeat * a Å."""
    return bulk('Ar', 'fcc', a=a, cubic=True) * (repeat, repeat, repeat)


def test_stress_matches_finite_strain():
    """Stress (ASE convention) equals central differences of the energy under symmetric strain, triclinic cells."""
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(2):
        atoms = crystal(5.4)
        atoms.set_cell(atoms.cell @ (np.eye(3) + rng.uniform(-0.08, 0.08, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.12, atoms.positions.shape)
        frames.append(atoms)
    lj = argon()
    stress = lj.evaluate(AtomsBatch.from_atoms(frames), stress=True)['stress'].numpy()

    def energy(atoms) -> float:
        return float(lj.evaluate(AtomsBatch.from_atoms([atoms]))['energy'][0])

    for atoms, s in zip(frames, stress, strict=True):
        fd = probes.finite_strain_stress(energy, atoms)
        assert np.abs(s - fd).max() < 1e-6 * np.abs(s).max()
        assert np.abs(s).max() > 1e-4  # eV/Å^3: a real test, not zeros against zeros


def test_forces_match_finite_differences():
    rng = np.random.default_rng(2)
    atoms = crystal(5.4)
    atoms.positions += rng.normal(0.0, 0.15, atoms.positions.shape)
    lj = argon()
    forces = lj.evaluate(AtomsBatch.from_atoms([atoms]))['forces'].numpy()
    h = 1e-5
    for atom, k in [(0, 0), (5, 1), (17, 2)]:
        energies = []
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.positions[atom, k] += sign * h
            energies.append(float(lj.evaluate(AtomsBatch.from_atoms([moved]))['energy'][0]))
        assert forces[atom, k] == pytest.approx(-(energies[0] - energies[1]) / (2.0 * h), rel=1e-6, abs=1e-9)


def test_verlet_list_criterion_under_strain():
    """A list kept while the cell is compressed (atoms move with it) gives the fresh-list energy until it is flagged.

    A strongly rattled crystal has pair distances everywhere, so pairs cross the cutoff as soon as the strain allows:
    the first compression at which the stale list gives a wrong energy must already be flagged, and the list is
    still reused across the first compressions.
    """
    rng = np.random.default_rng(3)
    atoms = crystal(5.3)
    atoms.positions += rng.normal(0.0, 0.6, atoms.positions.shape)
    lj = argon()
    start = AtomsBatch.from_atoms([atoms, atoms])
    vlist = VerletList(lj.cutoff, skin=0.5, variable_cell=True)
    stale = vlist.update(start)
    flags, correct = [], []
    for k in range(1, 40):
        f = 1.0 - 0.002 * k
        noise = torch.as_tensor(rng.normal(0.0, 0.01, start.positions.shape))
        batch = AtomsBatch(start.positions * f + noise, start.numbers, start.cell * f, start.pbc, start.batch)
        flags.append(bool(vlist.moved_too_far(batch.positions, batch.cell)))
        fresh = lj.evaluate(batch)['energy']
        correct.append(bool(torch.allclose(lj.evaluate(batch, stale)['energy'], fresh, rtol=1e-12, atol=0.0)))
    first_wrong = correct.index(False)
    assert flags[first_wrong]
    assert all(c for c, flag in zip(correct, flags, strict=True) if not flag)
    assert not flags[0]
    assert not flags[4]  # reused across 1 % compression


def test_npt_neighbor_list_follows_the_cell():
    """Along an NPT run that expands the cell by several %, every recorded energy equals that of a fresh list."""
    lj = argon()
    res = simulate(
        lj,
        [crystal(5.05), crystal(5.1)],
        ensemble='npt',
        steps=300,
        stride=3,
        pressure=1.0,
        compressibility=2e-4,
        tau_p=100.0,
        seed=7,
        **COMMON,
    )
    volume = res.extra['volume']
    assert np.all(volume[-1] / volume[0] > 1.04)  # the cell grew by more than 4 %
    assert res.n_neighbor_builds < len(res.step) / 2  # the list is reused between frames
    for frame in range(len(res.step)):
        batch = AtomsBatch(
            torch.as_tensor(res.positions[frame].reshape(-1, 3)),
            torch.full((64,), 18),
            torch.as_tensor(res.extra['cell'][frame]),
            torch.ones(2, 3, dtype=torch.bool),
            torch.arange(2).repeat_interleave(32),
        )
        np.testing.assert_allclose(res.potential_energy[frame], lj.evaluate(batch)['energy'].numpy(), rtol=1e-10)


def test_npt_restart_is_exact(tmp_path):
    """20 + 20 NPT steps through a saved state (cells, stress and RNG included) equal 40 steps in one go."""
    kwargs = dict(ensemble='npt', stride=5, pressure=[P0, 2 * P0], compressibility=5e-5, tau_p=200.0, **COMMON)
    atoms = [crystal(5.3), crystal(5.25)]
    full = simulate(argon(), atoms, steps=40, seed=11, **kwargs)
    first = simulate(argon(), atoms, steps=20, seed=11, **kwargs)
    state = MDState.load(first.final_state.save(tmp_path / 'state.npz'))
    second = simulate(argon(), None, steps=20, state=state, **kwargs)
    np.testing.assert_allclose(second.positions[-1], full.positions[-1], atol=1e-10)
    np.testing.assert_allclose(second.final_state.batch.cell.numpy(), full.final_state.batch.cell.numpy(), atol=1e-10)
    np.testing.assert_allclose(second.final_state.velocities.numpy(), full.final_state.velocities.numpy(), atol=1e-10)
    np.testing.assert_allclose(np.concatenate([first.extra['volume'], second.extra['volume']]), full.extra['volume'])
    assert not np.allclose(full.extra['volume'][0], full.extra['volume'][-1])


def test_anisotropic_restores_a_cubic_crystal():
    """A crystal stretched by 8 % along x: the anisotropic mode makes it cubic again, the isotropic one cannot."""
    stretched = crystal(5.3)
    stretched.set_cell(stretched.cell @ np.diag([1.08, 1.0, 1.0]), scale_atoms=True)
    kwargs = dict(ensemble='npt', stride=10, pressure=P0, compressibility=5e-5, tau_p=100.0, seed=5, **COMMON)
    aniso = simulate(argon(), [stretched] * 2, steps=400, barostat_mode='anisotropic', **kwargs)
    iso = simulate(argon(), [stretched] * 2, steps=100, barostat_mode='isotropic', **kwargs)
    cells = aniso.extra['cell'][-20:]  # (frames, replicas, 3, 3): the last 200 steps
    lengths = np.diagonal(cells, axis1=-2, axis2=-1).mean((0, 1))
    np.testing.assert_allclose(lengths[0] / lengths[1:], 1.0, atol=0.015)  # from 1.08: cubic within fluctuations
    assert np.all(cells[..., ~np.eye(3, dtype=bool)] == 0.0)  # no shear
    iso_cell = iso.extra['cell'][-1]
    np.testing.assert_allclose(iso_cell[:, 0, 0] / iso_cell[:, 1, 1], 1.08, rtol=1e-12)
    assert not np.allclose(iso_cell[:, 1, 1], stretched.cell[1, 1])  # the volume did move


def _replica_blocks(x: np.ndarray) -> tuple[float, float]:
    """Mean of (frames, replicas) samples and its standard error from the spread of the replica means."""
    means = x.mean(0)
    return float(means.mean()), float(means.std(ddof=1) / np.sqrt(len(means)))


def _nvt_pressures(res, starts, lj) -> np.ndarray:
    """Pressure (frames, replicas) bar of recorded NVT frames: ``-trace(stress) / 3`` + exact kinetic ``N kT / V``."""
    batch0 = AtomsBatch.from_atoms(starts)
    vlist = VerletList(lj.cutoff, skin=2.0)
    out = []
    for positions in res.positions:
        batch = AtomsBatch(
            torch.as_tensor(positions.reshape(-1, 3)), batch0.numbers, batch0.cell, batch0.pbc, batch0.batch
        )
        stress = lj.evaluate(batch, vlist.update(batch), forces=False, stress=True)['stress']
        out.append(-stress.diagonal(dim1=-2, dim2=-1).mean(-1).numpy())
    n_atoms = batch0.counts.numpy()
    volumes = np.abs(np.linalg.det(batch0.cell.numpy()))
    return (np.array(out) + n_atoms * units.kB * T / volumes) / units.bar


def test_npt_pressure_and_compressibility():
    """NPT <V> and volume fluctuations against NVT pressures of the same potential (12 + 18 replicas, 32 atoms)."""
    lj = argon()
    npt = simulate(
        lj,
        [crystal()] * 12,
        ensemble='npt',
        steps=2000,
        stride=4,
        pressure=P0,
        compressibility=5e-5,
        tau_p=200.0,
        seed=3,
        **COMMON,
    )
    skip = len(npt.step) // 6  # 330 steps of equilibration
    volume = npt.extra['volume'][skip:]
    v_mean, v_err = _replica_blocks(volume)
    kt = units.kB * T
    squares = ((volume - v_mean) ** 2).mean(0)  # (replicas,) Å^6, about the pooled mean
    kappa_fluct = float(squares.mean() / (kt * v_mean) * units.bar)  # 1/bar
    kappa_fluct_err = float(squares.std(ddof=1) / np.sqrt(len(squares)) / (kt * v_mean) * units.bar)
    p_int, p_int_err = _replica_blocks(npt.extra['pressure'][skip:])

    delta = 0.03
    starts = []
    for s, n in ((-delta, 5), (0.0, 8), (delta, 5)):
        for r in range(n):
            atoms = crystal()
            cell = npt.final_state.batch.cell[r].numpy()
            g = (v_mean * (1.0 + s) / abs(np.linalg.det(cell))) ** (1.0 / 3.0)
            atoms.set_cell(cell * g)
            atoms.positions = npt.final_state.positions[32 * r : 32 * (r + 1)].numpy() * g
            starts.append(atoms)
    nvt = simulate(lj, starts, ensemble='langevin', steps=1000, stride=5, seed=4, **COMMON)
    pressure = _nvt_pressures(nvt, starts, lj)[len(nvt.step) // 6 :]  # (frames, replicas) bar
    (p_lo, e_lo), (p_mid, e_mid), (p_hi, e_hi) = (
        _replica_blocks(pressure[:, k]) for k in (slice(0, 5), slice(5, 13), slice(13, 18))
    )
    bulk_modulus = -(p_hi - p_lo) / (2.0 * delta)  # bar, -V dP/dV
    kappa_fd = 1.0 / bulk_modulus
    kappa_fd_err = kappa_fd * np.hypot(e_hi, e_lo) / (p_lo - p_hi)
    # <P(V)> over the NPT volumes is P0; P(<V>) misses 1/2 P'' <dV^2> (tens of bar for 32 atoms): add it, with the
    # curvature from the three NVT points
    half_curvature = 0.5 * (p_hi - 2.0 * p_mid + p_lo) * float(squares.mean()) / (delta * v_mean) ** 2
    curvature_err = 0.5 * np.sqrt(e_hi**2 + 4.0 * e_mid**2 + e_lo**2) * float(squares.mean()) / (delta * v_mean) ** 2
    p_npt_mean = p_mid + half_curvature  # NVT estimate of <P(V)> over the NPT volume distribution
    # the NVT point sits at the measured <V>: its error moves the pressure by B * d<V> / <V>
    p_err = float(np.sqrt(e_mid**2 + curvature_err**2 + (bulk_modulus * v_err / v_mean) ** 2))
    print(
        f'\nNPT <V> = {v_mean:.2f} +- {v_err:.2f} Å^3, T = {npt.temperature[skip:].mean():.2f} K; barostat pressure'
        f' {p_int:.1f} +- {p_int_err:.1f} bar'
        f"\nNVT at <V>: P = {p_mid:.1f} +- {e_mid:.1f} bar; + 1/2 P'' <dV^2> = {half_curvature:.1f} bar:"
        f' {p_npt_mean:.1f} +- {p_err:.1f} bar (target {P0} bar)'
        f'\nNVT at <V>(1 -/+ {delta}): {p_lo:.1f} +- {e_lo:.1f}, {p_hi:.1f} +- {e_hi:.1f} bar'
        f'\nkappa: fluctuations {kappa_fluct:.4g} +- {kappa_fluct_err:.2g} 1/bar, '
        f'finite differences {kappa_fd:.4g} +- {kappa_fd_err:.2g} 1/bar, ratio {kappa_fluct / kappa_fd:.3f}'
    )
    assert abs(npt.temperature[skip:].mean() - T) < 1.0
    assert abs(p_npt_mean - P0) < 3.0 * p_err
    assert abs(p_int - P0) < 3.0 * p_int_err + 1.0
    assert abs(kappa_fluct / kappa_fd - 1.0) < 0.2


@pytest.mark.parametrize('mode', ['isotropic', 'anisotropic'])
def test_npt_loop_reads_the_host_once_per_step(mode, monkeypatch):
    """The barostat adds no host read: a steady NPT step reads once (the Verlet check), like NVT (test_host_sync)."""
    lj = argon()
    batch = AtomsBatch.from_atoms([crystal(), crystal()])
    nbrs = VerletList(lj.cutoff, 2.0).update(batch)
    external = sum(probes.count_syncs(lambda: lj.evaluate(batch, nbrs, stress=True), monkeypatch, SYNC_OPS).values())
    results = {}

    def counted(steps: int) -> int:
        def run() -> None:
            results[steps] = simulate(
                lj,
                [crystal(), crystal()],
                ensemble='npt',
                steps=steps,
                stride=1000,
                barostat_mode=mode,
                seed=1,
                pressure=P0,
                compressibility=5e-5,
                tau_p=200.0,
                timestep=DT,
                temperature=T,
                skin=2.0,
            )

        return sum(probes.count_syncs(run, monkeypatch, SYNC_OPS).values())

    short, long = counted(5), counted(25)
    assert results[5].n_neighbor_builds == results[25].n_neighbor_builds == 1
    assert not np.allclose(results[25].final_state.batch.cell.numpy(), crystal().cell[None])  # the cell did move
    assert (long - short) / 20 - external <= 1


def test_cell_helpers():
    cells = torch.as_tensor(np.random.default_rng(4).normal(0.0, 3.0, (5, 3, 3)))
    np.testing.assert_allclose(
        (inverse_cells(cells) @ cells).numpy(), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12
    )
    np.testing.assert_allclose(volumes(cells).numpy(), np.abs(np.linalg.det(cells.numpy())), rtol=1e-12)


def test_options_and_errors():
    values, errors = MD.resolve({'ensemble': 'npt', 'pressure': 1000.0, 'barostat_mode': 'anisotropic'}, 'md')
    assert not errors
    assert values['tau_p'] == MD['tau_p'].default
    assert values['compressibility'] > 0
    assert MD.resolve({'ensemble': 'npt', 'tau_p': 0.0}, 'md')[1]
    assert MD.resolve({'barostat_mode': 'shear'}, 'md')[1]
    open_box = crystal()
    open_box.pbc = False
    with pytest.raises(ValueError, match='periodic'):
        simulate(argon(), open_box, ensemble='npt', steps=1)
    with pytest.raises(ValueError, match='barostat_mode'):
        simulate(argon(), crystal(), ensemble='npt', steps=1, barostat_mode='shear')


@pytest.mark.parametrize('mode', ['isotropic', 'anisotropic'])
def test_ideal_gas_volume_distribution_is_exact(mode):
    """N non-interacting atoms at pressure P0: the isothermal-isobaric volume density is exactly ``V^N exp(-P0 V /
    kT)`` (the Gamma distribution of shape N + 1), so ``<V> = (N + 1) kT / P0`` and ``var V = (N + 1) (kT / P0)^2``.

    This checks the barostat's equation itself, drift and noise together, with no potential: a drift with an added
    ``+kT / V`` term would give shape N + 2 (a 33 % larger mean for N = 2), one without the kinetic pressure shape 1.
    Measured: 3.01 +- 0.06 (isotropic) and 3.08 +- 0.06 (anisotropic) kT/P0 at 2 fs; with 5 fs steps the rare small
    volumes of two free atoms take too large discrete steps and var V came out 10 times too large.
    """
    n_atoms, p0, temperature = 2, 1000.0, 300.0  # atoms, bar, K
    kt_over_p = units.kB * temperature / (p0 * units.bar)  # Å^3: 41.4 Å^3
    free = ShiftedLennardJones(epsilon=0.0, sigma=1.0, cutoff=0.5)  # zero energy, forces and stress
    gas = bulk('Ar', 'sc', a=5.0)
    gas = gas * (n_atoms, 1, 1)
    gas.set_cell(np.diag([1.0, 1.0, 1.0]) * ((n_atoms + 1) * kt_over_p) ** (1 / 3), scale_atoms=True)
    run = simulate(
        free,
        [gas] * 64,
        ensemble='npt',
        steps=1500,
        stride=5,
        pressure=p0,
        compressibility=1.0 / p0,
        tau_p=100.0,
        barostat_mode=mode,
        timestep=2.0,  # 5 fs: the volume's discrete steps at the rare small volumes inflate var V 10-fold
        temperature=temperature,
        friction=0.02,
        min_distance=0.0,  # free atoms may meet: no blow-up guard
        seed=5,
    )
    assert set(run.status) == {'ok'}
    volume = run.extra['volume'][len(run.step) // 10 :] / kt_over_p  # (frames, replicas), in units of kT / P0
    means = volume.mean(0)  # per replica: independent
    shape_mean, shape_err = float(means.mean()), float(means.std(ddof=1) / np.sqrt(len(means)))
    variance = float(volume.var())
    print(f'\n{mode}: <V> = {shape_mean:.3f} +- {shape_err:.3f} kT/P0 (exact {n_atoms + 1}), var V = {variance:.2f}')
    assert abs(shape_mean - (n_atoms + 1)) < 4 * shape_err
    assert shape_err < 0.1  # resolves N + 1 from N + 2 by 10 errors
    assert variance == pytest.approx(n_atoms + 1, rel=0.1)
