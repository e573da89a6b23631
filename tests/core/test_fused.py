"""The compiled pair kernels (``core/kernels``) agree with autograd and with the torch chain rule (float64)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.geometry import get_distances

import aiida_mlff.core.kernels as kernels
from aiida_mlff.core import models
from aiida_mlff.core.atoms import AtomsBatch, Neighbors, neighbor_list, pair_vectors
from aiida_mlff.core.models import Potential

from .probes import randomise

pytestmark = pytest.mark.usefixtures('one_thread')

CUTOFF, ANGULAR = 4.0, 3.0
TOL = 1e-10  # relative to the largest magnitude of the quantity; the paths agree to ~1e-15


@pytest.fixture(scope='module', autouse=True)
def compiled():
    """The compiled kernels, or a skip of the whole module when they cannot be built here."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        module = kernels.bp_pairs()
    if module is None:
        reason = '; '.join(str(w.message) for w in caught) or 'disabled by AIIDA_MLFF_KERNELS'
        pytest.skip(f'compiled descriptor kernels unavailable: {reason}')
    return module


def _random_atoms(symbols: str, cell, pbc, seed: int, min_distance: float = 1.0) -> Atoms:
    """Atoms at random positions in ``cell``, no two closer than ``min_distance`` [Å] (periodic images included)."""
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, dtype=float)
    positions: list[np.ndarray] = []
    while len(positions) < len(Atoms(symbols)):
        trial = rng.uniform(0.0, 1.0, 3) @ cell
        if positions:
            _, d = get_distances(trial[None], np.array(positions), cell=cell, pbc=pbc)
            if d.min() < min_distance:
                continue
        positions.append(trial)
    return Atoms(symbols, positions=positions, cell=cell, pbc=pbc)


def _triclinic() -> Atoms:
    """24 C/H/O atoms in a skewed cell with a 3.7 Å vector (< cutoff): atoms see their own images."""
    cell = [[6.5, 0.0, 0.0], [2.0, 6.0, 0.0], [1.0, 1.5, 3.2]]
    return _random_atoms('CH4OH2' * 2 + 'CHOH' * 2, cell, True, seed=11)


def _systems() -> dict[str, tuple[AtomsBatch, Neighbors | None]]:
    triclinic = AtomsBatch.from_atoms(_triclinic())
    box = _random_atoms('CO2H4' * 2, [[5.5, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.2]], True, seed=5)
    mixed = AtomsBatch.from_atoms([molecule('CH3CH2OH'), box, molecule('H2O2')])
    # an isolated C, two O between the angular and radial cutoffs, and H2 (one angular neighbour each)
    sparse = AtomsBatch.from_atoms(
        [
            Atoms('C', positions=[[0.0, 0.0, 0.0]]),
            Atoms('O2', positions=[[0.0, 0.0, 0.0], [0.0, 0.5 * (CUTOFF + ANGULAR), 0.0]]),
            Atoms('H2', positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]),
        ]
    )
    isolated = AtomsBatch.from_atoms(Atoms('O', positions=[[1.0, 2.0, 3.0]]))
    return {
        'triclinic': (triclinic, None),
        'mixed': (mixed, neighbor_list(mixed, CUTOFF)),
        'skin': (triclinic, neighbor_list(triclinic, CUTOFF + 1.0)),
        'mixed-skin': (mixed, neighbor_list(mixed, CUTOFF + 1.0)),
        'sparse': (sparse, neighbor_list(sparse, CUTOFF)),
        'isolated': (isolated, neighbor_list(isolated, CUTOFF)),
    }


SYSTEMS = _systems()


def _build(chiral=True, zetas=(1, 2), activation='tanh', committee=3, seed=0) -> Potential:
    """A float64 potential with random weights, biases, reference energies and feature statistics."""
    pot = Potential.build(
        ['H', 'C', 'O'],
        cutoff=CUTOFF,
        angular_cutoff=ANGULAR,
        n_radial=5,
        n_angular=3,
        zetas=zetas,
        chiral=chiral,
        hidden=(12, 8),
        activation=activation,
        committee=committee,
        seed=seed,
        dtype='float64',
    )
    return randomise(pot, seed=seed + 100, energy_scale=0.7)


OPTIONS = list(itertools.product([True, False], [(1, 2), (1, 2, 4)], ['tanh', 'silu'], [1, 3]))


@pytest.fixture(
    scope='module',
    params=OPTIONS,
    ids=[f'{"chiral" if c else "achiral"}-z{"".join(map(str, z))}-{a}-M{m}' for c, z, a, m in OPTIONS],
)
def pot(request):
    chiral, zetas, activation, committee = request.param
    return _build(chiral, zetas, activation, committee, seed=len(zetas) + committee)


@pytest.fixture
def compiled_calls(monkeypatch):
    """Counts the calls of ``Potential._evaluate_compiled``."""
    calls = []
    original = Potential._evaluate_compiled

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Potential, '_evaluate_compiled', spy)
    return calls


def _assert_close(out: dict, ref: dict, label: str) -> None:
    """Same keys; every entry within TOL of the reference, relative to the largest magnitude of its kind."""
    assert out.keys() == ref.keys(), label
    scale_of = {'energy_std': 'energies', 'energy': 'energies', 'max_force_deviation': 'forces'}
    for key, value in ref.items():
        value, other = value.detach(), out[key].detach()
        assert other.shape == value.shape, (label, key)
        finite = torch.isfinite(value)
        assert torch.equal(finite, torch.isfinite(other)), (label, key)
        basis = ref[scale_of.get(key, key)].detach()
        basis = basis[torch.isfinite(basis)]
        scale = max(1.0, float(basis.abs().max())) if basis.numel() else 1.0
        error = float((other[finite] - value[finite]).abs().max()) if bool(finite.any()) else 0.0
        assert error <= TOL * scale, f'{label} {key}: max abs difference {error:.3e} (scale {scale:.3e})'


@pytest.mark.parametrize('system', list(SYSTEMS))
def test_paths_agree(pot, system, compiled_calls, monkeypatch):
    """Compiled kernels == autograd reference == torch chain rule: energies, forces, committee statistics, stress."""
    batch, neighbors = SYSTEMS[system]
    reference = pot.evaluate(batch, neighbors, stress=True, create_graph=True)
    assert not compiled_calls
    fused = pot.evaluate(batch, neighbors, stress=True)
    assert len(compiled_calls) == 1  # the compiled path was taken
    energy_only = pot.evaluate(batch, neighbors, forces=False)
    monkeypatch.setattr(pot, 'kernel', 'torch', raising=False)
    chain_rule = pot.evaluate(batch, neighbors, stress=True)
    assert len(compiled_calls) == 2  # the torch path did not call the kernels
    assert ('member_forces' in reference) == (pot.committee_size > 1)
    _assert_close(fused, reference, f'compiled vs autograd [{system}]')
    _assert_close(chain_rule, reference, f'torch vs autograd [{system}]')
    _assert_close(fused, chain_rule, f'compiled vs torch [{system}]')
    _assert_close(energy_only, {k: reference[k] for k in energy_only}, f'compiled energies only [{system}]')


def test_systems_cover_the_edge_cases():
    """Self-image pairs in the triclinic cell, pairs beyond the cutoff in the skin lists, no pairs at all."""
    batch, _ = SYSTEMS['skin']
    full = neighbor_list(batch, CUTOFF)
    self_images = (full.i == full.j) & (full.shifts.abs().sum(1) > 0)
    assert bool(self_images.any())
    assert SYSTEMS['skin'][1].n_pairs > full.n_pairs
    assert kernels.pair_layout(full, batch.positions.shape[0]) is not None
    assert SYSTEMS['isolated'][1].n_pairs == 0


def test_skin_does_not_change_results():
    pot = _build(committee=3)
    for plain, skin in (('triclinic', 'skin'), ('mixed', 'mixed-skin')):
        a = pot.evaluate(*SYSTEMS[plain], stress=True)
        b = pot.evaluate(*SYSTEMS[skin], stress=True)
        _assert_close(b, a, f'{skin} vs {plain}')


def test_threads_agree():
    """The kernels' threaded loops over centre atoms give the single-threaded numbers."""
    pot = _build(zetas=(1, 2, 4), committee=3)
    batch, neighbors = SYSTEMS['mixed-skin']
    one = pot.evaluate(batch, neighbors, stress=True)
    torch.set_num_threads(2)  # the one_thread fixture restores the count
    _assert_close(pot.evaluate(batch, neighbors, stress=True), one, 'two threads vs one')


def test_compiled_kernels_used_on_cpu():
    pot = _build(committee=1)
    assert pot._compiled_kernels() is not None
    pot.kernel = 'torch'
    assert pot._compiled_kernels() is None
    pot.kernel = 'compiled'
    assert pot._compiled_kernels() is not None


def test_models_beyond_the_kernels_take_the_torch_path(monkeypatch):
    """More elements than the kernels hold: no compiled path, and the same numbers from the torch path."""
    pot = _build(committee=1)
    batch, nbrs = SYSTEMS['mixed']
    expected = pot.evaluate(batch, nbrs, stress=True, create_graph=True)
    monkeypatch.setattr(models, 'KERNEL_MAX_ELEMENTS', pot.descriptor.n_elements - 1)
    assert pot._compiled_kernels() is None
    out = pot.evaluate(batch, nbrs, stress=True)
    assert float((out['forces'] - expected['forces'].detach()).abs().max()) < 1e-12
    assert float((out['energy'] - expected['energy'].detach()).abs().max()) < 1e-10


def test_non_symmetric_lists_fall_back(compiled_calls):
    """A half list, or a full list missing reverse pairs beyond the cutoff, has no layout: the torch path answers."""
    pot = _build(zetas=(1, 2, 4), activation='silu', committee=3)
    batch, full = SYSTEMS['mixed']
    n_atoms = batch.positions.shape[0]
    half = neighbor_list(batch, CUTOFF, full_list=False)
    assert kernels.pair_layout(half, n_atoms) is None
    fused = pot.evaluate(batch, half, stress=True)
    assert not compiled_calls
    _assert_close(fused, pot.evaluate(batch, half, stress=True, create_graph=True), 'half list vs autograd')

    skin = neighbor_list(batch, CUTOFF + 1.0)
    beyond = torch.nonzero(pair_vectors(batch, skin).norm(dim=1) >= CUTOFF).squeeze(1)
    assert beyond.numel() > 0
    keep = torch.ones(skin.n_pairs, dtype=torch.bool)
    keep[beyond[::2]] = False  # some pairs lose their reverse
    lopsided = skin.select(keep)
    assert kernels.pair_layout(lopsided, n_atoms) is None
    out = pot.evaluate(batch, lopsided, stress=True)
    assert not compiled_calls
    _assert_close(out, pot.evaluate(batch, full, stress=True, create_graph=True), 'lopsided list vs full list')


def test_kernel_setting_and_environment(monkeypatch, compiled_calls):
    pot = _build(committee=3)
    batch, neighbors = SYSTEMS['mixed']
    reference = pot.evaluate(batch, neighbors, stress=True)
    assert len(compiled_calls) == 1
    monkeypatch.setenv('AIIDA_MLFF_KERNELS', '0')
    assert not kernels.kernels_enabled()
    assert kernels.bp_pairs() is None
    fallback = pot.evaluate(batch, neighbors, stress=True)  # kernel='auto': silently the torch path
    assert len(compiled_calls) == 1
    _assert_close(fallback, reference, 'AIIDA_MLFF_KERNELS=0 fallback')
    pot.kernel = 'compiled'
    with pytest.raises(RuntimeError, match='compiled'):
        pot.evaluate(batch, neighbors)
    monkeypatch.delenv('AIIDA_MLFF_KERNELS')
    assert kernels.bp_pairs() is not None
    _assert_close(pot.evaluate(batch, neighbors, stress=True), reference, 'kernel="compiled"')


def test_compiled_forces_are_finite_differences(compiled_calls):
    """Central differences (1e-5 Å) of the compiled energy give the compiled forces, in the triclinic cell."""
    pot = _build(zetas=(1, 2, 4), activation='silu', committee=3)
    atoms = _triclinic()
    forces = pot.evaluate(AtomsBatch.from_atoms(atoms))['forces'].numpy()
    h = 1e-5
    for a in (0, 5, 12, 19):
        for c in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, c] += sign * h
                energies.append(float(pot.evaluate(AtomsBatch.from_atoms(moved), forces=False)['energy'][0]))
            fd = -(energies[0] - energies[1]) / (2 * h)
            assert abs(fd - forces[a, c]) < 1e-6, (a, c, fd, forces[a, c])
    assert len(compiled_calls) == 1 + 4 * 3 * 2
    assert np.abs(forces).max() > 1e-2
