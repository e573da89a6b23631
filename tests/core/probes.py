"""Helpers shared by core tests: counting host reads, potentials with non-trivial parameters, finite-strain stress."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms
from torch.profiler import ProfilerActivity, profile

from aiida_mlff.core.models import Potential

#: tensor methods that copy to the host without an aten op when the tensor is already on the CPU
HOST_METHODS = ('tolist', 'cpu', 'numpy')


def count_syncs(fn: Callable[[], None], monkeypatch, ops: Sequence[str]) -> Counter:
    """Run ``fn``; return its host reads: the profiler events named in ``ops`` and calls of :data:`HOST_METHODS`."""
    calls: Counter = Counter()
    with monkeypatch.context() as patch:
        for name in HOST_METHODS:
            original = getattr(torch.Tensor, name)

            def wrapped(self, *args, _original=original, _name=name, **kwargs):
                calls[f'Tensor.{_name}'] += 1
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, wrapped)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    calls.update(e.name for e in prof.events() if e.name in ops)
    return calls


def randomise(pot: Potential, seed: int, energy_scale: float | None = None) -> Potential:
    """Give ``pot`` (float64) random biases, reference energies and feature statistics, so that every term counts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bias in pot.biases:
            bias.copy_(0.3 * torch.randn(bias.shape, generator=generator, dtype=torch.float64))
        pot.reference_energies.copy_(torch.randn(pot.reference_energies.shape, generator=generator).double())
        pot.feature_mean.copy_(0.5 * torch.randn(pot.feature_mean.shape, generator=generator).double())
        pot.feature_std.copy_(0.5 + torch.rand(pot.feature_std.shape, generator=generator).double())
        if energy_scale is not None:
            pot.energy_scale.fill_(energy_scale)
    return pot


def finite_strain_stress(energy: Callable[[Atoms], float], atoms: Atoms, h: float = 1e-5) -> np.ndarray:
    """(3, 3) stress [eV/Å^3, ASE's sign] by central differences of ``energy`` [eV] under symmetric strain ``h``.

    Component ab: ``(E(+h) - E(-h)) / (2 h V)`` with the cell strained by ``h/2`` in ab and ba, atoms scaled along.
    """
    volume = atoms.get_volume()
    stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            energies = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[a, b] += sign * h / 2
                strain[b, a] += sign * h / 2
                strained = atoms.copy()
                strained.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
                energies.append(energy(strained))
            stress[a, b] = stress[b, a] = (energies[0] - energies[1]) / (2 * h) / volume
    return stress
