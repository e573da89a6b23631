"""Host-device synchronisations per MD step of ``simulate``, counted on the CPU with ``torch.profiler``.

On a GPU every read of a device value on the host (``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor,
``.tolist()``, ``.cpu()``, ``torch.nonzero``, boolean-mask indexing) waits for the device to finish its queue. On the
CPU they are visible as aten ops: ``aten::_local_scalar_dense`` (under ``item``, ``is_nonzero``) and ``aten::nonzero``
(also under ``x[mask]``); ``.tolist()``, ``.cpu()`` and ``.numpy()`` of a CPU tensor leave no aten op, so they are
counted by wrapping the methods.

The loop's syncs per step are ``(syncs(long run) - syncs(short run)) / extra steps`` minus those of the potential
and the biases themselves (not the loop's business; measured by calling them once). With a stride longer than the
runs and no neighbour-list rebuild in between, one step of the loop reads the host exactly once: the combined
read in the Verlet-list check (is a rebuild needed; did a replica stop in the step before). It cannot go: the list
is built on the host (vesin) and the results must equal a run that rebuilds exactly when an atom has moved half
the skin.

Biases on CVs in periodic boxes read nothing either: ``colvars.minimum_image`` is batched and exact for any cell
without host reads (``tests/core/test_periodic_cvs.py`` counts them).
Outside the steady state the loop reads the host on record steps (frame, minimum distances), exchange steps (the
swap), the last step, a step after one where a replica stopped (messages, the flagged frame) and neighbour-list
rebuilds.

The stops of a step are read one step late except on those steps: :func:`test_late_reads_change_nothing` checks
that a run whose every step is read at once (stride 1) ends exactly like one read late.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from aiida_mlff.core.analytic import FlexibleWater, water_box
from aiida_mlff.core.atoms import AtomsBatch, neighbor_list
from aiida_mlff.core.colvars import Distance, HarmonicBias, batch_offsets
from aiida_mlff.core.md import simulate
from aiida_mlff.core.md.runner import _bias_terms

from . import probes

pytestmark = pytest.mark.usefixtures('one_thread')

#: aten ops that read a device value on the host
SYNC_OPS = ('aten::_local_scalar_dense', 'aten::nonzero', 'aten::masked_select', 'aten::_unique2')
#: host reads per steady-state step that the loop may do: the combined read of the Verlet check
LOOP_READS_PER_STEP = 1

N_REPLICAS = 2
SHORT, LONG = 10, 40


def count_syncs(fn, monkeypatch) -> tuple[int, Counter]:
    """Run ``fn`` and return the number of host reads it did, and which ones."""
    calls = probes.count_syncs(fn, monkeypatch, SYNC_OPS)
    return sum(calls.values()), calls


def make_bias() -> HarmonicBias:
    return HarmonicBias(Distance(0, 3), [2.9, 3.1], 2.0)


def external_syncs(biased: bool, monkeypatch) -> int:
    """Host reads of one steady-state potential evaluation and bias evaluation (the loop does one of each a step)."""
    potential = FlexibleWater()
    batch = AtomsBatch.from_atoms([water_box(8, seed=s) for s in range(N_REPLICAS)])
    nbrs = neighbor_list(batch, potential.cutoff + 2.0)
    offsets = batch_offsets(batch)
    biases = [make_bias()] if biased else []

    def once() -> None:
        potential.evaluate(batch, nbrs, forces=True)
        if biases:
            _bias_terms(biases, batch.positions, batch.cell, batch.pbc, offsets, {})

    once()  # warm the caches (pair selection, topology)
    return count_syncs(once, monkeypatch)[0]


def run_md(steps: int, ensemble: str, biased: bool, max_force_deviation: float | None):
    atoms = [water_box(8, seed=s) for s in range(N_REPLICAS)]
    return simulate(
        FlexibleWater(),
        atoms,
        ensemble=ensemble,
        steps=steps,
        stride=1000,  # no frame but the initial one
        skin=2.0,  # no rebuild in these short runs
        seed=1,
        timestep=0.25,
        temperature=[300.0, 350.0],
        biases=[make_bias()] if biased else None,
        max_force_deviation=max_force_deviation,
    )


@pytest.mark.parametrize('max_force_deviation', [None, 5.0])
@pytest.mark.parametrize('biased', [False, True])
@pytest.mark.parametrize('ensemble', ['nve', 'langevin'])
def test_md_loop_reads_the_host_once_per_step(ensemble, biased, max_force_deviation, monkeypatch):
    results = {}

    def counted(steps: int) -> tuple[int, Counter]:
        def run() -> None:
            results[steps] = run_md(steps, ensemble, biased, max_force_deviation)

        return count_syncs(run, monkeypatch)

    short, short_ops = counted(SHORT)
    long, long_ops = counted(LONG)
    assert results[SHORT].n_neighbor_builds == results[LONG].n_neighbor_builds == 1
    assert results[LONG].status == ['ok'] * N_REPLICAS
    per_step = (long - short) / (LONG - SHORT)
    loop = per_step - external_syncs(biased, monkeypatch)
    assert loop <= LOOP_READS_PER_STEP, f'{loop} host reads per step; short {short_ops}, long {long_ops}'


class Drifting:
    """FlexibleWater that reports as ``max_force_deviation`` how far each replica's first atom moved [Å]."""

    def __init__(self) -> None:
        self.inner = FlexibleWater()
        self.cutoff = self.inner.cutoff
        self.committee_size = 1
        self.start: torch.Tensor | None = None

    def evaluate(self, batch: AtomsBatch, neighbors=None, forces: bool = True, stress: bool = False) -> dict:
        out = dict(self.inner.evaluate(batch, neighbors, forces=forces))
        first = torch.cat([batch.batch.new_zeros(1), torch.cumsum(batch.counts, 0)[:-1]])
        if self.start is None:
            self.start = batch.positions[first].clone()
        out['max_force_deviation'] = (batch.positions[first] - self.start).norm(dim=-1)
        return out


@pytest.mark.parametrize('ensemble', ['nve', 'langevin'])
def test_late_reads_change_nothing(ensemble):
    """Replicas stop at steps between records (read one step late) and at last all stop: same as reading at once."""
    atoms = [water_box(8, seed=s) for s in range(4)]
    masses = np.concatenate([a.get_masses() for a in atoms])
    velocities = np.random.default_rng(0).normal(scale=0.04, size=(len(masses), 3)) / np.sqrt(masses)[:, None]
    velocities[3 * 24 + 5] = [3.0, 0.0, 0.0]  # Å/fs: replica 3 runs away in the first step

    def run(stride: int):
        return simulate(
            Drifting(),
            atoms,
            ensemble=ensemble,
            steps=200,
            stride=stride,
            seed=2,
            temperature=[300.0, 500.0, 700.0, 900.0],
            velocities=velocities,
            max_force_deviation=0.03,
            min_distance=0.1,
            record_velocities=True,
        )

    every, late = run(1), run(7)
    assert late.status == ['deviation_exceeded'] * 3 + ['blown_up']
    assert late.final_state.step < 200  # every replica stopped: the run ended early
    assert late.stop_step.tolist() == every.stop_step.tolist()
    assert any(s % 7 for s in late.stop_step)  # some stopped between records
    assert late.diagnostic == every.diagnostic
    assert late.n_neighbor_builds == every.n_neighbor_builds
    for key, value in late.final_state.state_dict().items():
        np.testing.assert_array_equal(value, every.final_state.state_dict()[key], err_msg=key)
    frames = [int(np.flatnonzero(every.step == s)[0]) for s in late.step]
    for key in ('positions', 'velocities', 'potential_energy', 'max_force_deviation', 'flagged', 'walker'):
        np.testing.assert_array_equal(getattr(late, key), getattr(every, key)[frames], err_msg=key)
    assert late.flagged.sum() == 3
