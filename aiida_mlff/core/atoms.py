"""Batches of structures as flat tensors, and neighbour lists from ``vesin``.

A batch holds B systems of varying size flattened into N atoms, with ``batch[a]`` the system of atom ``a``
(sorted ascending). Units: positions and cells in Å. The interface is fixed by ``CONTRACT.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from vesin import NeighborList

__all__ = ['AtomsBatch', 'Neighbors', 'neighbor_list', 'pair_vectors']


@dataclass
class AtomsBatch:
    """B structures flattened into N atoms.

    Attributes
    ----------
    positions : Tensor
        (N, 3) Cartesian positions [Å].
    numbers : Tensor
        (N,) int64 atomic numbers.
    cell : Tensor
        (B, 3, 3) cells [Å], rows are lattice vectors; zeros are allowed for open boundaries.
    pbc : Tensor
        (B, 3) bool periodic directions.
    batch : Tensor
        (N,) int64 system index of each atom, sorted ascending.
    """

    positions: Tensor
    numbers: Tensor
    cell: Tensor
    pbc: Tensor
    batch: Tensor

    @property
    def n_systems(self) -> int:
        """Number of systems B."""
        return int(self.cell.shape[0])

    @property
    def counts(self) -> Tensor:
        """(B,) int64 number of atoms in each system."""
        return torch.bincount(self.batch, minlength=self.n_systems)

    @property
    def dtype(self) -> torch.dtype:
        """Floating point type of the positions."""
        return self.positions.dtype

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.positions.device

    @classmethod
    def from_atoms(
        cls, atoms: Atoms | Sequence[Atoms], dtype: torch.dtype = torch.float64, device: str | torch.device = 'cpu'
    ) -> AtomsBatch:
        """Build a batch from one ``ase.Atoms`` or a sequence of them.

        Parameters
        ----------
        atoms
            The structures; cells of non-periodic directions are kept as they are (zeros allowed).
        dtype
            Floating point type of positions and cells.
        device
            Torch device.
        """
        frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
        if not frames:
            raise ValueError('AtomsBatch.from_atoms needs at least one structure')
        positions = np.concatenate([f.get_positions() for f in frames]).reshape(-1, 3)
        numbers = np.concatenate([f.get_atomic_numbers() for f in frames])
        cell = np.stack([np.asarray(f.get_cell()[:], dtype=float) for f in frames])
        pbc = np.stack([np.asarray(f.get_pbc(), dtype=bool) for f in frames])
        batch = np.repeat(np.arange(len(frames)), [len(f) for f in frames])
        return cls(
            positions=torch.as_tensor(positions, dtype=dtype, device=device),
            numbers=torch.as_tensor(numbers, dtype=torch.int64, device=device),
            cell=torch.as_tensor(cell, dtype=dtype, device=device),
            pbc=torch.as_tensor(pbc, dtype=torch.bool, device=device),
            batch=torch.as_tensor(batch, dtype=torch.int64, device=device),
        )

    def to_atoms(self) -> list[Atoms]:
        """Return the systems as a list of ``ase.Atoms`` (positions and cells in Å)."""
        positions = self.positions.detach().cpu().double().numpy()
        numbers = self.numbers.cpu().numpy()
        cell = self.cell.detach().cpu().double().numpy()
        pbc = self.pbc.cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(self.counts.cpu().numpy())])
        return [
            Atoms(numbers=numbers[a:b], positions=positions[a:b], cell=cell[s], pbc=pbc[s])
            for s, (a, b) in enumerate(itertools.pairwise(offsets))
        ]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> AtomsBatch:
        """Return a copy on ``device`` with floating point tensors cast to ``dtype`` (None keeps the current)."""
        return AtomsBatch(
            positions=self.positions.to(device=device, dtype=dtype),
            numbers=self.numbers.to(device=device),
            cell=self.cell.to(device=device, dtype=dtype),
            pbc=self.pbc.to(device=device),
            batch=self.batch.to(device=device),
        )


@dataclass
class Neighbors:
    """A full pair list (both i->j and j->i) over a batch.

    Attributes
    ----------
    i : Tensor
        (P,) int64 centre atom, global index into the batch.
    j : Tensor
        (P,) int64 neighbour atom, global index into the batch.
    shifts : Tensor
        (P, 3) integer cell shifts, stored in the positions' dtype: r_ij = r_j - r_i + shifts @ cell.
    """

    i: Tensor
    j: Tensor
    shifts: Tensor

    @property
    def n_pairs(self) -> int:
        """Number of pairs P."""
        return int(self.i.shape[0])

    def select(self, mask: Tensor) -> Neighbors:
        """Return the pairs where ``mask`` (P,) is true."""
        return Neighbors(i=self.i[mask], j=self.j[mask], shifts=self.shifts[mask])


def _open_box(positions: np.ndarray, cutoff: float) -> np.ndarray:
    """A diagonal box enclosing ``positions`` (used by vesin only as a bounding box for open boundaries)."""
    if len(positions) == 0:
        return np.eye(3)
    extent = positions.max(axis=0) - positions.min(axis=0)
    return np.diag(extent + 2.0 * cutoff + 1.0)


def neighbor_list(batch: AtomsBatch, cutoff: float, full_list: bool = True) -> Neighbors:
    """Full neighbour list of every system in the batch within ``cutoff`` [Å], computed by vesin per system.

    Parameters
    ----------
    batch
        The structures.
    cutoff
        Pair cutoff [Å].
    full_list
        False for a half list (each pair once, in either direction): only for code that asks for one explicitly.

    Returns
    -------
    Neighbors
        Pairs (i, j, shifts) with global atom indices; positions are not needed beyond this call.
    """
    positions = batch.positions.detach().cpu().double().numpy()
    cells = batch.cell.detach().cpu().double().numpy()
    pbcs = batch.pbc.cpu().numpy()
    offsets = np.concatenate([[0], np.cumsum(batch.counts.cpu().numpy())])
    calculator = NeighborList(cutoff=float(cutoff), full_list=bool(full_list))
    all_i, all_j, all_s = [], [], []
    for s in range(batch.n_systems):
        start, stop = int(offsets[s]), int(offsets[s + 1])
        points = positions[start:stop]
        pbc = pbcs[s]
        if pbc.any():
            if not pbc.all():
                box = cells[s].copy()
                # vesin needs a full-rank box: give open directions a vector long enough to never wrap
                for d in np.flatnonzero(~pbc):
                    if np.linalg.norm(box[d]) < 1e-12:
                        box[d] = 0.0
                        box[d, d] = 1.0
                    box[d] *= (np.ptp(points, axis=0).max() + 2.0 * cutoff + 1.0) / np.linalg.norm(box[d])
            else:
                box = cells[s]
            i, j, shifts = calculator.compute(points=points, box=box, periodic=pbc.tolist(), quantities='ijS')
        else:
            i, j, shifts = calculator.compute(
                points=points, box=_open_box(points, cutoff), periodic=False, quantities='ijS'
            )
        # no copies beyond vesin's own: a full list of 10^5 water atoms has ~9e6 pairs, 28 bytes each once stored
        all_i.append(_global_indices(i, start))
        all_j.append(_global_indices(j, start))
        all_s.append(torch.from_numpy(np.ascontiguousarray(shifts).reshape(-1, 3)).to(batch.dtype))
    device = batch.device
    return Neighbors(i=_joined(all_i).to(device), j=_joined(all_j).to(device), shifts=_joined(all_s).to(device))


def _global_indices(local: np.ndarray, start: int) -> Tensor:
    """The (P,) atom indices from vesin (unsigned) as int64 + ``start``, converted in place where possible."""
    local = np.ascontiguousarray(local)
    if local.base is not None:  # a view of memory vesin may reuse: take a copy of our own
        local = local.copy()
    index = local.view(np.int64) if local.dtype == np.uint64 else local.astype(np.int64)
    if start:
        index += start
    return torch.from_numpy(index)


def _joined(parts: list[Tensor]) -> Tensor:
    """The per-system parts end to end (the one part itself for a single system: no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def positive_shift(shifts: Tensor) -> Tensor:
    """(P,) bool: the integer cell shift (P, 3) is lexicographically positive.

    Of an atom's two pairs with its own periodic image (shifts s and -s), exactly one has a positive shift.
    """
    x, y, z = shifts[:, 0], shifts[:, 1], shifts[:, 2]
    return (x > 0) | ((x == 0) & ((y > 0) | ((y == 0) & (z > 0))))


def pair_vectors(batch: AtomsBatch, nbrs: Neighbors) -> Tensor:
    """Pair vectors r_j - r_i + shifts @ cell[batch[i]] [Å], shape (P, 3); differentiable in positions and cell.

    The shifts of open systems are zero, so they are added whatever ``pbc`` says: no host read (a GPU need not wait).
    """
    vectors = batch.positions.index_select(0, nbrs.j) - batch.positions.index_select(0, nbrs.i)
    if nbrs.n_pairs:
        if batch.n_systems == 1:
            vectors = vectors + nbrs.shifts @ batch.cell[0]
        else:
            cell = batch.cell[batch.batch[nbrs.i]]
            vectors = vectors + torch.bmm(nbrs.shifts.unsqueeze(1), cell).squeeze(1)
    return vectors
