"""Helpers shared by core tests: counting host reads, and potentials with non-trivial parameters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
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
