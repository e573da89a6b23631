"""Batched MD: integrators, Verlet lists, biases, stop rules, checkpoints and the committee potential."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from aiida_mlff.core.analytic import FlexibleWater, HarmonicBonds, LennardJones, SumPotential, water_box
from aiida_mlff.core.atoms import AtomsBatch, neighbor_list
from aiida_mlff.core.colvars import Dihedral, Distance, HarmonicBias
from aiida_mlff.core.md import MDState, VerletList, maxwell_boltzmann, simulate
from aiida_mlff.core.md.integrators import KB, KINETIC, kinetic_energy

KT300 = KB * 300.0


pytestmark = pytest.mark.usefixtures('one_thread')


def argon_pairs(n_replicas: int, distance: float = 3.8) -> list[Atoms]:
    return [Atoms('Ar2', positions=[[0, 0, 0], [distance, 0, 0]]) for _ in range(n_replicas)]


def test_maxwell_boltzmann_zero_momentum_and_width():
    gen = torch.Generator().manual_seed(0)
    masses = torch.tensor([16.0, 1.0, 1.0] * 2000 + [40.0] * 10, dtype=torch.float64)
    batch = torch.tensor([0] * 6000 + [1] * 10)
    temps = torch.tensor([300.0, 50.0], dtype=torch.float64)
    v = maxwell_boltzmann(masses, temps, batch, 2, gen)
    momentum = torch.zeros(2, 3, dtype=torch.float64).index_add_(0, batch, masses[:, None] * v)
    assert torch.allclose(momentum, torch.zeros_like(momentum), atol=1e-10)
    ke = kinetic_energy(v, masses, batch, 2)
    assert float(2 * ke[0] / (3 * 6000 - 3) / KB) == pytest.approx(300.0, rel=0.03)
    # units: 0.5 m <v^2> per component = kT / 2 with m in amu, v in Å/fs
    assert float((masses[:6000, None] * v[:6000] ** 2).mean() * KINETIC) == pytest.approx(KT300, rel=0.03)


def test_verlet_list_rebuilds_only_after_half_skin():
    atoms = water_box(8, seed=0)
    batch = AtomsBatch.from_atoms(atoms)
    vl = VerletList(cutoff=4.0, skin=1.0)
    nbrs = vl.update(batch)
    ref = neighbor_list(batch, 5.0)
    assert nbrs.n_pairs == ref.n_pairs
    batch.positions = batch.positions.clone()
    batch.positions[3] += torch.tensor([0.49, 0.0, 0.0], dtype=torch.float64)
    assert vl.update(batch) is nbrs
    assert vl.n_builds == 1
    batch.positions[3] += torch.tensor([0.02, 0.0, 0.0], dtype=torch.float64)
    assert vl.update(batch) is not nbrs
    assert vl.n_builds == 2


def test_nve_energy_conservation_float64():
    """Velocity Verlet, float64, dt = 0.25 fs, 5 ps (20,000 steps), 8 flexible waters in a periodic box."""
    atoms = water_box(8, seed=1)
    res = simulate(FlexibleWater(), atoms, ensemble='nve', timestep=0.25, steps=20_000, temperature=300.0, stride=50)
    assert res.status == ['ok']
    assert res.time[-1] == pytest.approx(5000.0)
    e = res.total_energy[:, 0] / len(atoms)
    slope_drift = np.polyfit(res.time, e, 1)[0] * res.time[-1]
    n = len(e) // 10
    block_drift = e[-n:].mean() - e[:n].mean()
    assert abs(slope_drift) < 1e-4, slope_drift
    assert abs(block_drift) < 1e-4, block_drift
    assert np.abs(e - e[0]).max() < 5e-4
    assert 150 < np.nanmean(res.temperature) < 450  # it really moved
    assert res.n_neighbor_builds > 10  # the list was rebuilt as atoms moved (skin 1 Å)
    assert res.n_neighbor_builds < 20_000 / 10


@pytest.mark.slow
def test_langevin_temperature_and_maxwell_boltzmann_water_box():
    """BAOAB, 96-atom water box, 20 ps at dt = 0.5 fs: mean T within 2 %, velocities pass a KS test."""
    from scipy.stats import kstest

    atoms = water_box(32, seed=2)
    res = simulate(
        FlexibleWater(),
        atoms,
        ensemble='langevin',
        timestep=0.5,
        steps=40_000,
        temperature=300.0,
        friction=0.02,
        stride=100,
        seed=3,
        record_velocities=True,
    )
    assert res.status == ['ok']
    t_mean = float(np.mean(res.temperature[1:, 0]))
    assert abs(t_mean / 300.0 - 1) < 0.02, t_mean
    equilibrated = res.time >= 2000.0
    assert abs(float(np.mean(res.temperature[equilibrated, 0])) / 300.0 - 1) < 0.02
    masses = atoms.get_masses()
    v = res.velocities[equilibrated, 0]  # (frames, 96, 3), 50 fs apart (friction time 50 fs)
    u = (v * np.sqrt(masses * KINETIC / KT300)[None, :, None]).ravel()
    p = kstest(u, 'norm').pvalue
    assert p > 0.01, p
    # the KS test has power: a 5 % too hot (or too cold) distribution is rejected with this many samples
    assert kstest(u / np.sqrt(1.05), 'norm').pvalue < 0.01
    assert kstest(u / np.sqrt(0.95), 'norm').pvalue < 0.01


def test_per_replica_temperatures_langevin():
    """Non-interacting argon: each replica relaxes to its own target temperature."""
    rng = np.random.default_rng(0)
    gas = [Atoms('Ar20', positions=rng.uniform(0, 200, (20, 3))) for _ in range(3)]
    temps = [100.0, 300.0, 900.0]
    res = simulate(
        LennardJones(epsilon=0.0104, cutoff=5.0, r_on=4.0),
        gas,
        ensemble='langevin',
        timestep=2.0,
        steps=3000,
        temperature=temps,
        friction=0.05,
        stride=5,
        seed=1,
    )
    mean_t = np.mean(res.temperature[20:], axis=0)
    np.testing.assert_allclose(mean_t, temps, rtol=0.06)


def test_batch_equals_single_runs_ragged():
    """Replicas of different systems in one batch follow the same trajectories as alone (NVE is deterministic)."""
    systems = [water_box(8, seed=4), water_box(4, seed=5), water_box(8, seed=6)]
    rng = np.random.default_rng(1)
    vels = [rng.normal(scale=0.01, size=(len(a), 3)) for a in systems]
    pot = FlexibleWater()
    batched = simulate(pot, systems, ensemble='nve', timestep=0.5, steps=200, stride=50, velocities=vels)
    assert batched.positions.shape == (5, 3, 24, 3)
    assert batched.atom_mask.sum(axis=1).tolist() == [24, 12, 24]
    assert np.isnan(batched.positions[:, 1, 12:]).all()
    for r, (a, v) in enumerate(zip(systems, vels, strict=True)):
        single = simulate(pot, a, ensemble='nve', timestep=0.5, steps=200, stride=50, velocities=v)
        np.testing.assert_allclose(batched.replica_positions(r), single.positions[:, 0], atol=1e-9)
        np.testing.assert_allclose(batched.total_energy[:, r], single.total_energy[:, 0], atol=1e-9)


def test_umbrella_windows_as_one_batch():
    """Two free argon atoms restrained by one harmonic bias per replica: <r> matches the exact biased average."""
    centers = np.repeat([2.5, 3.5, 4.5, 5.5], 4)  # 4 windows x 4 copies, 16 replicas in one batch
    kappa = 0.5  # eV/Å^2
    res = simulate(
        LennardJones(epsilon=0.0, cutoff=3.0, r_on=2.5),
        argon_pairs(16, 4.0),
        ensemble='langevin',
        timestep=2.0,
        steps=6000,
        temperature=300.0,
        friction=0.02,
        biases=[HarmonicBias(Distance(0, 1), centers, kappa)],
        colvars=[Distance(1, 0)],
        stride=5,
        seed=2,
    )
    assert res.colvar_names == ['distance(0,1)', 'distance(1,0)']
    assert res.colvars.shape == (1201, 16, 2)
    np.testing.assert_allclose(res.colvars[..., 0], res.colvars[..., 1])
    r = np.linspace(0.5, 9.0, 20001)
    for w_index, c in enumerate(centers[::4]):
        w = r**2 * np.exp(-0.5 * kappa * (r - c) ** 2 / KT300)  # r^2: the Jacobian of a 3-D distance
        exact = np.sum(r * w) / np.sum(w)
        sampled = res.colvars[100:, 4 * w_index : 4 * w_index + 4, 0]
        assert np.mean(sampled) == pytest.approx(exact, abs=0.02)
        assert np.std(sampled) == pytest.approx(np.sqrt(np.sum((r - exact) ** 2 * w) / np.sum(w)), rel=0.1)
    np.testing.assert_allclose(res.bias_energy, 0.5 * kappa * (res.colvars[..., 0] - centers) ** 2, atol=1e-10)


def test_blow_up_stops_one_replica_and_keeps_earlier_frames():
    """Replica 1 starts with the argon atoms on top of each other: it stops with a diagnostic, others go on."""
    systems = argon_pairs(3, 3.8)
    systems[1].positions[1, 0] = 1.6  # 4 eps (sigma/r)^12 ~ 3e2 eV
    res = simulate(
        LennardJones(), systems, ensemble='nve', timestep=1.0, steps=100, temperature=50.0, stride=10, seed=0
    )
    assert res.status == ['ok', 'blown_up', 'ok']
    assert 'energy jump' in res.diagnostic[1]
    assert res.stop_step.tolist() == [-1, 1, -1]
    assert np.isfinite(res.positions[0, 1]).all()  # the frame written before the blow-up is kept
    assert np.isnan(res.positions[1:, 1]).all()
    assert np.isfinite(res.total_energy[:, [0, 2]]).all()
    # the stopped replica is frozen at the state before the jump
    final = res.final_state.positions.numpy()
    np.testing.assert_allclose(final[2:4], systems[1].positions)


def test_too_close_atoms_are_blown_up():
    systems = argon_pairs(2, 3.8)
    systems[1].positions[1, 0] = 0.3
    res = simulate(LennardJones(), systems, ensemble='nve', timestep=1.0, steps=10, stride=5, min_distance=0.5)
    assert res.status[1] == 'blown_up'
    assert 'closer than' in res.diagnostic[1]
    assert res.status[0] == 'ok'


def test_runaway_atom_is_blown_up_before_the_neighbour_list_sees_it():
    systems = argon_pairs(2, 3.8)
    v = np.zeros((4, 3))
    v[3, 0] = 5.0  # Å/fs: 2.5 Å in one step
    res = simulate(LennardJones(), systems, ensemble='nve', timestep=0.5, steps=10, stride=5, velocities=v)
    assert res.status == ['ok', 'blown_up']
    assert 'moved more than' in res.diagnostic[1]
    np.testing.assert_allclose(res.final_state.positions.numpy()[2:], systems[1].positions)


def test_checkpoint_restart_is_exact(tmp_path):
    """50 + 50 steps through a saved state (RNG included) equal 100 steps in one go."""
    atoms = [water_box(8, seed=7), water_box(8, seed=8)]
    kwargs = dict(ensemble='langevin', timestep=0.5, temperature=[300.0, 350.0], friction=0.01, stride=10)
    full = simulate(FlexibleWater(), atoms, steps=100, seed=5, **kwargs)
    first = simulate(FlexibleWater(), atoms, steps=50, seed=5, **kwargs)
    path = first.final_state.save(tmp_path / 'state.npz')
    state = MDState.load(path)
    assert state.step == 50
    second = simulate(FlexibleWater(), None, steps=50, state=state, **kwargs)
    assert second.step.tolist() == [60, 70, 80, 90, 100]
    np.testing.assert_allclose(second.positions[-1], full.positions[-1], atol=1e-10)
    np.testing.assert_allclose(second.final_state.velocities.numpy(), full.final_state.velocities.numpy(), atol=1e-10)
    np.testing.assert_allclose(np.concatenate([first.time, second.time]), full.time)


def test_float32_run():
    res = simulate(
        FlexibleWater(), water_box(8, seed=9), ensemble='langevin', steps=100, stride=50, dtype=torch.float32
    )
    assert res.final_state.positions.dtype == torch.float32
    assert np.isfinite(res.total_energy).all()


def test_committee_potential_deviation_monitoring():
    """A random committee drives H2O2 replicas; the replicas over the deviation limit stop, flagged, the rest go on."""
    from aiida_mlff.core.models import Potential

    committee = Potential.build(['H', 'O'], cutoff=4.0, committee=3, seed=0, dtype='float64')
    # random weights alone let the molecule collapse: harmonic bonds keep it in shape, the committee adds the spread
    bonds = HarmonicBonds([(0, 1, 30.0, 1.47), (0, 2, 45.0, 0.97), (1, 3, 45.0, 0.97)])
    pot = SumPotential(committee, bonds)
    assert pot.committee_size == 3
    base = molecule('H2O2')
    rng = np.random.default_rng(0)
    systems = []
    for _ in range(6):
        a = base.copy()
        a.positions += rng.normal(scale=0.15, size=a.positions.shape)
        systems.append(a)
    phi = Dihedral(2, 0, 1, 3)  # H-O-O-H in ase's H2O2 (O, O, H, H)
    free = simulate(pot, systems, ensemble='langevin', steps=40, stride=1, seed=1, timestep=0.5, colvars=[phi])
    assert free.status == ['ok'] * 6
    dev = free.max_force_deviation
    assert dev.shape == (41, 6)
    assert np.all(dev > 0)
    limit = float(np.median(dev.max(axis=0)))
    res = simulate(
        pot,
        systems,
        ensemble='langevin',
        steps=40,
        stride=4,
        seed=1,
        timestep=0.5,
        colvars=[phi],
        max_force_deviation=limit,
    )
    stopped = [r for r, s in enumerate(res.status) if s == 'deviation_exceeded']
    assert 0 < len(stopped) < 6
    for r in range(6):
        if r in stopped:
            frame = int(np.flatnonzero(res.flagged[:, r])[0])
            assert res.step[frame] == res.stop_step[r]
            assert res.max_force_deviation[frame, r] > limit
            assert np.all(res.max_force_deviation[:frame, r] <= limit)
            assert np.isfinite(res.positions[frame, r]).all()  # the flagged frame is kept
            assert np.isnan(res.positions[frame + 1 :, r]).all()
            assert 'max force deviation' in res.diagnostic[r]
        else:
            assert res.status[r] == 'ok'
            # same seed and dynamics: unstopped replicas follow the free run exactly
            np.testing.assert_allclose(res.colvars[-1, r, 0], free.colvars[-1, r, 0], atol=1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    atoms = water_box(8, seed=3)
    kwargs = dict(ensemble='nve', timestep=0.5, steps=100, stride=50, seed=0)
    cpu = simulate(FlexibleWater(), atoms, **kwargs)
    gpu = simulate(FlexibleWater(), atoms, device='cuda', **kwargs)
    np.testing.assert_allclose(gpu.positions, cpu.positions, atol=1e-8)
