"""The torch path of ``Potential.evaluate`` in masked mode: same numbers as compacted mode, no host read per call.

Off the CPU, :meth:`Descriptor.accumulate` masks the pairs beyond the cutoffs instead of compacting them (no
``bool(mask.all())``, no ``torch.nonzero``), so an MD step on a GPU need not wait for the device. Here masked mode is
forced on the CPU with ``descriptors.MASKED_PAIRS`` and checked against compacted mode and the autograd reference, and
its host reads are counted with ``torch.profiler`` (as in ``test_host_sync.py``).

On the CPU one read is left in a batch of a single system: ``energies.std(0)`` of an (M, 1) tensor reduces to one
value, which torch's CPU kernel returns through a scalar (``aten::item`` under ``aten::std``); the CUDA kernel does
not. The sync counts therefore use two systems, where there is none.
"""

from __future__ import annotations

import pytest
import torch
from ase.build import molecule

import aiida_mlff.core.descriptors as descriptors
from aiida_mlff.core.analytic import water_box
from aiida_mlff.core.atoms import AtomsBatch, neighbor_list, pair_vectors
from aiida_mlff.core.models import Potential

from .probes import count_syncs, randomise

pytestmark = pytest.mark.usefixtures('one_thread')

CUTOFF, ANGULAR, SKIN = 4.0, 3.0, 1.0
TOL = 1e-12  # relative to the largest magnitude of each kind of quantity (eV, eV/Å, eV/Å^3)
#: aten ops that read a device value on the host
SYNC_OPS = ('aten::_local_scalar_dense', 'aten::nonzero', 'aten::is_nonzero', 'aten::masked_select')


def _build(committee: int) -> Potential:
    """A float64 chiral potential for H and O with random biases and feature statistics, on the torch path."""
    pot = Potential.build(
        ['H', 'O'],
        cutoff=CUTOFF,
        angular_cutoff=ANGULAR,
        n_radial=5,
        n_angular=3,
        zetas=(1, 2),
        chiral=True,
        hidden=(12, 8),
        committee=committee,
        seed=committee,
        dtype='float64',
    )
    randomise(pot, seed=committee + 100)
    pot.kernel = 'torch'
    return pot


def _batch(open_molecule: bool) -> AtomsBatch:
    """A periodic box of 8 waters; with ``open_molecule``, also a second box and an open H2O2 (mixed boundaries)."""
    frames = [water_box(8, seed=0)]
    if open_molecule:
        frames += [water_box(8, seed=1), molecule('H2O2')]
    return AtomsBatch.from_atoms(frames, dtype=torch.float64)


def _evaluate(pot: Potential, batch: AtomsBatch, masked: bool | None, monkeypatch, **kwargs) -> dict:
    """``pot.evaluate`` on a fresh Verlet-style list (cutoff + skin) with the pair mode ``masked``."""
    monkeypatch.setattr(descriptors, 'MASKED_PAIRS', masked)
    return pot.evaluate(batch, neighbor_list(batch, pot.cutoff + SKIN), stress=True, **kwargs)


def _assert_close(out: dict, ref: dict, label: str) -> None:
    """Same keys; every entry within TOL of the reference, relative to the largest magnitude of its kind."""
    assert out.keys() == ref.keys(), label
    scale_of = {'energy_std': 'energies', 'energy': 'energies', 'max_force_deviation': 'forces'}
    for key, value in ref.items():
        value, other = value.detach(), out[key].detach()
        finite = torch.isfinite(value)
        assert torch.equal(finite, torch.isfinite(other)), (label, key)
        basis = ref[scale_of.get(key, key)].detach()
        scale = max(1.0, float(basis[torch.isfinite(basis)].abs().max()))
        error = float((other[finite] - value[finite]).abs().max())
        assert error <= TOL * scale, f'{label} {key}: max abs difference {error:.3e} (scale {scale:.3e})'


@pytest.mark.parametrize('open_molecule', [False, True], ids=['box', 'mixed'])
@pytest.mark.parametrize('committee', [1, 3])
def test_masked_equals_compacted_and_autograd(committee, open_molecule, monkeypatch):
    """Masked == compacted == autograd (compacted and masked): energies, forces, committee statistics, stress."""
    pot = _build(committee)
    batch = _batch(open_molecule)
    reference = _evaluate(pot, batch, False, monkeypatch, create_graph=True)
    compacted = _evaluate(pot, batch, False, monkeypatch)
    masked = _evaluate(pot, batch, True, monkeypatch)
    masked_autograd = _evaluate(pot, batch, True, monkeypatch, create_graph=True)  # the GPU training path
    assert ('member_forces' in reference) == (committee > 1)
    assert float(reference['forces'].detach().abs().max()) > 0.1  # the check is not vacuous
    _assert_close(compacted, reference, 'compacted vs autograd')
    _assert_close(masked, reference, 'masked vs autograd')
    _assert_close(masked, compacted, 'masked vs compacted')
    _assert_close(masked_autograd, reference, 'autograd masked vs compacted')


def test_skin_pairs_are_masked():
    """The list has pairs beyond both cutoffs, and masked mode gives them exactly zero gradients."""
    pot = _build(1)
    batch = _batch(False)
    nbrs = neighbor_list(batch, pot.cutoff + SKIN)
    half = nbrs.select(nbrs.i < nbrs.j)
    vectors = pair_vectors(batch, half)
    dist = vectors.norm(dim=1)
    assert bool((dist >= CUTOFF).any())
    assert bool(((dist >= ANGULAR) & (dist < CUTOFF)).any())
    species = pot.descriptor.element_index(batch.numbers)
    context: dict = {}
    with torch.no_grad():
        sums = pot.descriptor.accumulate(vectors, half.i, half.j, species, context, half=True, masked=True)
        grads = [torch.randn((2, *s.shape), dtype=torch.float64) for s in sums]
        pair_grads = pot.descriptor.pair_gradients(context, *grads)
    assert torch.isfinite(pair_grads).all()
    assert bool((pair_grads[dist >= CUTOFF] == 0).all())
    assert bool((pair_grads[dist < CUTOFF].abs().sum((1, 2)) > 0).all())


@pytest.mark.parametrize('stress', [False, True])
@pytest.mark.parametrize('committee', [1, 3])
def test_masked_mode_reads_nothing_on_the_host(committee, stress, monkeypatch):
    """Steady state (species and half list cached on the first call): zero host reads per call in masked mode.

    Compacted mode, for comparison, reads at least 3 times (the cutoff checks and the compaction of the pairs).
    """
    pot = _build(committee)
    batch = _batch(True)
    nbrs = neighbor_list(batch, pot.cutoff + SKIN)

    def call() -> None:
        pot.evaluate(batch, nbrs, stress=stress)

    monkeypatch.setattr(descriptors, 'MASKED_PAIRS', False)
    call()
    compacted = count_syncs(call, monkeypatch, SYNC_OPS)
    assert sum(compacted.values()) >= 3, compacted
    monkeypatch.setattr(descriptors, 'MASKED_PAIRS', True)
    call()  # warm-up: nothing to cache beyond the first call
    masked = count_syncs(call, monkeypatch, SYNC_OPS)
    assert sum(masked.values()) == 0, masked


def test_default_mode_follows_the_device(monkeypatch):
    """Compacted on the CPU, masked elsewhere, unless forced by ``MASKED_PAIRS`` or the ``masked`` keyword."""
    monkeypatch.setattr(descriptors, 'MASKED_PAIRS', None)
    assert not descriptors.use_masked_pairs(torch.device('cpu'))
    assert descriptors.use_masked_pairs(torch.device('cuda', 0))
    assert descriptors.use_masked_pairs(torch.device('cpu'), masked=True)
    monkeypatch.setattr(descriptors, 'MASKED_PAIRS', True)
    assert descriptors.use_masked_pairs(torch.device('cpu'))
    assert not descriptors.use_masked_pairs(torch.device('cuda', 0), masked=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('committee', [1, 3])
def test_cuda_call_does_not_synchronise(committee):
    """On a GPU (masked by default) a steady-state call runs under ``torch.cuda.set_sync_debug_mode('error')``."""
    pot = _build(committee).to('cuda')
    batch = _batch(True).to(device='cuda')
    nbrs = neighbor_list(batch, pot.cutoff + SKIN)
    expected = pot.evaluate(batch, nbrs)  # warm-up: caches the species and the half list (these read the host)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        out = pot.evaluate(batch, nbrs)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    _assert_close(out, expected, 'cuda steady state')
