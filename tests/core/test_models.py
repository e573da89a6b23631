"""Symmetry, conservation and committee tests of the potential (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from aiida_mlff.core.atoms import AtomsBatch, neighbor_list
from aiida_mlff.core.models import Potential

from .probes import finite_strain_stress

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def pot():
    pot = Potential.build(['H', 'O'], cutoff=4.0, committee=3, seed=1, dtype='float64', angular_cutoff=3.0)
    return pot


def _cluster(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 3.0, size=(8, 3))
    return Atoms('OH2OH2OH', positions=positions)


def _energy(pot, atoms) -> float:
    return float(pot.evaluate(AtomsBatch.from_atoms(atoms), forces=False)['energy'][0])


def _forces(pot, atoms) -> np.ndarray:
    return pot.evaluate(AtomsBatch.from_atoms(atoms))['forces'].numpy()


def test_build_defaults():
    pot = Potential.build(['O', 'H'])
    assert pot.dtype == torch.float32
    assert pot.elements == ['H', 'O']
    assert pot.cutoff == 5.0
    assert pot.committee_size == 1
    out = pot.evaluate(AtomsBatch.from_atoms(_cluster()))
    assert out['forces'].dtype == torch.float32
    assert torch.all(out['energy_std'] == 0)
    assert torch.all(out['max_force_deviation'] == 0)
    with pytest.raises(ValueError, match='not in this model'):
        pot.evaluate(AtomsBatch.from_atoms(Atoms('C', positions=[[0, 0, 0]])))


def test_rotation_translation_permutation(pot):
    atoms = _cluster(1)
    e0, f0 = _energy(pot, atoms), _forces(pot, atoms)
    rng = np.random.default_rng(7)
    for _ in range(3):
        rot = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rot.T + rng.normal(size=3) * 5.0
        assert abs(_energy(pot, moved) - e0) < 1e-10
        assert np.allclose(_forces(pot, moved), f0 @ rot.T, atol=1e-10)
    # permute like atoms: swap the two oxygens and shuffle hydrogens
    perm = np.array([3, 2, 1, 0, 5, 4, 6, 7])
    assert (atoms.numbers[perm] == atoms.numbers).all()
    permuted = atoms[perm]
    assert abs(_energy(pot, permuted) - e0) < 1e-10
    assert np.allclose(_forces(pot, permuted), f0[perm], atol=1e-10)


def test_forces_are_finite_difference_of_energy(pot):
    atoms = _cluster(2)
    forces = _forces(pot, atoms)
    h = 1e-5
    fd = np.zeros_like(forces)
    for a in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, c] += h
            minus.positions[a, c] -= h
            fd[a, c] = -(_energy(pot, plus) - _energy(pot, minus)) / (2 * h)
    assert np.abs(forces).max() > 1e-3
    assert np.linalg.norm(forces - fd) / np.linalg.norm(fd) < 1e-6


def test_mirror_image_same_energy(pot):
    atoms = _cluster(3)
    mirror = atoms.copy()
    mirror.positions[:, 1] *= -1.0
    assert abs(_energy(pot, mirror) - _energy(pot, atoms)) < 1e-10
    f, fm = _forces(pot, atoms), _forces(pot, mirror)
    assert np.allclose(fm, f * np.array([1.0, -1.0, 1.0]), atol=1e-10)


def test_periodic_stress_is_strain_derivative(pot):
    atoms = bulk('Cu', 'fcc', a=3.0, cubic=True)
    atoms.set_chemical_symbols(['O', 'H', 'H', 'O'])
    atoms.rattle(0.1, seed=4)
    atoms.set_cell(atoms.cell + np.array([[0.0, 0.2, 0.1], [0.1, 0.0, -0.2], [0.0, 0.1, 0.0]]), scale_atoms=True)
    out = pot.evaluate(AtomsBatch.from_atoms(atoms), stress=True)
    stress = out['stress'][0].numpy()
    fd = finite_strain_stress(lambda strained: _energy(pot, strained), atoms, h=1e-5)
    assert np.abs(stress).max() > 1e-4
    assert np.allclose(stress, fd, rtol=1e-6, atol=1e-9)


def test_committee_statistics_and_batching(pot):
    frames = [_cluster(4), _cluster(5)[:5]]
    batch = AtomsBatch.from_atoms(frames)
    out = pot.evaluate(batch, neighbors=neighbor_list(batch, pot.cutoff + 1.0))  # a list with extra pairs
    assert out['energies'].shape == (3, 2)
    assert out['member_forces'].shape == (3, 13, 3)
    assert torch.allclose(out['energy_std'], out['energies'].std(0, unbiased=False))
    assert torch.allclose(out['forces'], out['member_forces'].mean(0))
    dev = ((out['member_forces'] - out['forces']) ** 2).sum(-1).mean(0).sqrt()
    assert torch.allclose(out['max_force_deviation'], torch.stack([dev[:8].max(), dev[8:].max()]))
    assert torch.all(out['energy_std'] > 0)
    for s, frame in enumerate(frames):
        single = pot.evaluate(AtomsBatch.from_atoms(frame))
        assert torch.allclose(single['energies'][:, 0], out['energies'][:, s], atol=1e-12)


def test_float32_matches_float64(pot):
    atoms = _cluster(6)
    single = Potential.build(['H', 'O'], cutoff=4.0, committee=3, seed=1, angular_cutoff=3.0)
    single.load_state_dict({k: v.float() for k, v in pot.state_dict().items()})
    e32 = float(single.evaluate(AtomsBatch.from_atoms(atoms), forces=False)['energy'][0])
    assert abs(e32 - _energy(pot, atoms)) < 1e-4


@pytest.mark.parametrize('options', [{}, {'zetas': (1, 2, 4), 'angular_cutoff': 4.0}, {'chiral': False}])
def test_analytic_forces_match_autograd(options):
    """Forces and stress of the analytic descriptor backward (half pair lists) equal those of full autograd."""
    pot = Potential.build(['H', 'O'], cutoff=4.0, committee=3, seed=2, dtype='float64', **options)
    rng = np.random.default_rng(3)
    small = Atoms('OH2', positions=rng.uniform(0.0, 2.5, (3, 3)), cell=[[2.7, 0.1, 0.0], [0.2, 2.9, 0.0], [0, 0, 3.1]])
    small.pbc = True  # atoms see their own periodic images
    slab = Atoms('OH2', positions=rng.uniform(0.0, 2.5, (3, 3)), cell=[3.0, 3.2, 9.0], pbc=[True, True, False])
    batch = AtomsBatch.from_atoms([small, _cluster(7), slab])
    for neighbors in (None, neighbor_list(batch, pot.cutoff + 1.0)):
        fast = pot.evaluate(batch, neighbors, stress=True)
        reference = pot.evaluate(batch, neighbors, stress=True, create_graph=True)
        for key in ('energies', 'member_forces', 'max_force_deviation'):
            assert torch.allclose(fast[key], reference[key].detach(), rtol=0, atol=1e-12), key
        periodic = torch.isfinite(reference['stress'])
        assert torch.allclose(fast['stress'][periodic], reference['stress'].detach()[periodic], rtol=0, atol=1e-12)
