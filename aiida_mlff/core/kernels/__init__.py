"""Compiled CPU kernels, built on first use with the C++ compiler torch uses (``torch.utils.cpp_extension``).

``bp_pairs.cpp`` fuses the pair work of the Behler-Parrinello descriptor (``descriptors.py``): the per-atom sums of
:meth:`Descriptor.accumulate` and the chain rule of :meth:`Descriptor.pair_gradients` in one pass each over a full
neighbour list sorted by centre atom, threaded with torch's pool. The torch code stays the reference (and the path on
other devices, or where no compiler is found); ``tests/core/test_fused.py`` checks both agree to round-off.

The build takes about a minute once per machine and torch version (cached in ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``; ``scripts/setup`` builds it, ``python -m aiida_mlff.core.kernels`` does it by hand).
``AIIDA_MLFF_KERNELS=0`` turns the compiled path off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sysconfig
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..atoms import positive_shift

__all__ = ['PairLayout', 'bp_pairs', 'kernels_enabled', 'pair_layout']

_MODULES: dict[str, object] = {}
_FAILED: dict[str, str] = {}


def kernels_enabled() -> bool:
    """False when the environment variable ``AIIDA_MLFF_KERNELS`` is ``0``, ``false`` or ``no``."""
    return os.environ.get('AIIDA_MLFF_KERNELS', '1').strip().lower() not in {'0', 'false', 'no', 'off'}


def bp_pairs():
    """The compiled descriptor pair kernels, or None (disabled, or the build failed: a warning says why, once)."""
    if not kernels_enabled():
        return None
    if 'bp_pairs' in _MODULES:
        return _MODULES['bp_pairs']
    if 'bp_pairs' in _FAILED:
        return None
    try:
        from torch.utils.cpp_extension import load

        source = Path(__file__).with_name('bp_pairs.cpp')
        suffix, flags = _vector_flags()
        # one build folder per checkout: torch's ninja file names the source by its path, so two checkouts sharing
        # a folder would rebuild each other's module on every first use
        tag = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
        name = f'aiida_mlff_bp_pairs{suffix}_{tag}'
        _prepare_build(name)
        module = load(
            name=name,
            sources=[str(source)],
            extra_cflags=['-O3', '-ffast-math', '-fopenmp', *flags],
            extra_ldflags=['-fopenmp'],
            verbose=False,
        )
    except Exception as error:  # no compiler or ninja: the torch path answers instead
        _FAILED['bp_pairs'] = str(error)
        warnings.warn(f'compiled descriptor kernels unavailable, using the torch path: {error}', stacklevel=2)
        return None
    _MODULES['bp_pairs'] = module
    return module


def _prepare_build(name: str, stale_after: float = 900.0) -> None:
    """Put the ``ninja`` of this environment on the PATH, and remove a build lock left by a killed process.

    torch waits without end for the lock of a build another process started; a lock older than ``stale_after``
    seconds [s] (a build takes about a minute) belongs to a process that died.
    """
    scripts = sysconfig.get_path('scripts')
    if shutil.which('ninja') is None and scripts and Path(scripts, 'ninja').exists():
        os.environ['PATH'] = scripts + os.pathsep + os.environ.get('PATH', '')
    with contextlib.suppress(ImportError, OSError):  # a private helper of torch: skip the clean-up without it
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory(name, verbose=False)) / 'lock'
        if time.time() - lock.stat().st_mtime > stale_after:
            lock.unlink()


def _vector_flags() -> tuple[str, list[str]]:
    """Build name suffix and compiler flags for the widest vector instructions this CPU has (as torch detects them).

    Each instruction set gets its own build, so a home directory shared by login and compute nodes of different
    processors never hands a node code it cannot run.
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if capability in {'AVX2', 'AVX512'}:
        return '_avx2', ['-mavx2', '-mfma']
    return '', []


@dataclass
class PairLayout:
    """A full neighbour list sorted by centre atom, as the compiled kernels read it.

    Attributes
    ----------
    i, j : Tensor
        (P,) centre and neighbour atoms, sorted by ``i``.
    rowptr : Tensor
        (N + 1,) pairs of atom a are ``rowptr[a]:rowptr[a + 1]``.
    shifts : Tensor
        (P, 3) integer cell shifts of the sorted pairs (positions' dtype).
    keep : Tensor
        (P,) bool: the one pair of every i -> j, j -> i couple that the kernels evaluate (for both atoms); for an atom
        and its own periodic image, the one with the lexicographically positive shift.
    """

    i: Tensor
    j: Tensor
    rowptr: Tensor
    shifts: Tensor
    keep: Tensor
    _shift_vectors: Tensor | None = None
    _cell: Tensor | None = None

    def shift_vectors(self, cell: Tensor, system: Tensor) -> Tensor:
        """(P, 3) Cartesian shifts [Å] ``shifts @ cell[system[i]]``, recomputed only when the cell changes."""
        if self._cell is None or self._cell.shape != cell.shape or not torch.equal(self._cell, cell):
            if cell.shape[0] == 1:
                vectors = self.shifts @ cell[0]
            else:
                vectors = torch.bmm(self.shifts.unsqueeze(1), cell.index_select(0, system[self.i])).squeeze(1)
            self._shift_vectors = vectors.contiguous()
            self._cell = cell.detach().clone()
        return self._shift_vectors


def pair_layout(neighbors, n_atoms: int) -> PairLayout | None:
    """The sorted layout of a full list, or None for a list that is not one (the kernels need every pair twice).

    Kept on the list object: an MD run reuses it until its Verlet list is rebuilt. Needs the compiled kernels.
    """
    cached = getattr(neighbors, '_pair_layout', False)
    if cached is not False and (cached is None or cached.rowptr.shape[0] == n_atoms + 1):
        return cached
    layout = None
    i = neighbors.i
    if int((i < neighbors.j).sum()) == int((i > neighbors.j).sum()):  # as many i -> j as j -> i
        order, rowptr = bp_pairs().sort_pairs(i.contiguous(), n_atoms)
        i, j, shifts = (
            i.index_select(0, order),
            neighbors.j.index_select(0, order),
            neighbors.shifts.index_select(0, order),
        )
        # of i -> j and j -> i keep the one where (i < j) agrees with (i + j even): every atom keeps about half of
        # its pairs (so threads get even shares), where i < j alone would leave the last atoms none
        keep = torch.where(i == j, positive_shift(shifts), (i < j) == ((i + j) % 2 == 0)).contiguous()
        layout = PairLayout(i=i, j=j, rowptr=rowptr, shifts=shifts, keep=keep)
    neighbors._pair_layout = layout
    return layout
