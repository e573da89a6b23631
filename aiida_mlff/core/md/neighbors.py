"""Verlet neighbour lists with a skin, rebuilt only when some atom has moved more than half the skin."""

from __future__ import annotations

import torch

from ..atoms import AtomsBatch, Neighbors, neighbor_list
from .barostat import inverse_cells

__all__ = ['VerletList']


class VerletList:
    """A neighbour list of ``cutoff + skin`` that stays valid until an atom moves more than ``skin / 2``.

    Positions are never wrapped, so the integer cell shifts of a list stay valid while it is reused. With a fixed
    cell (NVE, NVT) the list is rebuilt when an atom has moved more than ``skin / 2``. With ``variable_cell`` (NPT:
    positions and cell deformed together) displacements are measured after mapping the current positions back into
    the reference cell (``x h^-1 h_ref``), and the allowed one shrinks with the deformation ``F = h_ref^-1 h``: a pair
    out of the list was farther than ``cutoff + skin`` at the build, so now it is at least
    ``sigma_min(F) (cutoff + skin - 2 delta)`` apart, with ``sigma_min(F) >= 1 - |F - I|_Frobenius``; the list stays
    valid while that exceeds ``cutoff``, i.e. while every mapped displacement ``delta`` is below
    ``(cutoff + skin - cutoff / sigma_min) / 2`` (``skin / 2`` for an unchanged cell).

    Parameters
    ----------
    cutoff
        Cutoff of the potential [Å].
    skin
        Extra margin [Å].
    variable_cell
        The cell changes between builds (positions scaled with it).

    Attributes
    ----------
    n_builds
        How many times the list was built.
    """

    def __init__(self, cutoff: float, skin: float = 1.0, variable_cell: bool = False) -> None:
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.variable_cell = bool(variable_cell)
        self.n_builds = 0
        self._reference: torch.Tensor | None = None
        self._reference_cell: torch.Tensor | None = None
        self._batch_index: torch.Tensor | None = None
        self._neighbors: Neighbors | None = None

    def moved_too_far(self, positions: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor | None:
        """Whether some atom moved more than allowed since the last build, as a 0-d bool tensor on the device.

        No host read: the caller reads it when it suits (e.g. together with other flags, one synchronisation).
        None when a build is due regardless (no list yet, or other atoms). ``cell`` (B, 3, 3) Å, the current cells,
        is needed with ``variable_cell``.
        """
        if self._neighbors is None or self._reference is None or self._reference.shape != positions.shape:
            return None
        if self.variable_cell:
            return self._strained_too_far(positions, cell)
        displacement2 = ((positions - self._reference) ** 2).sum(-1).max()  # Å^2
        return displacement2 > (0.5 * self.skin) ** 2

    def _strained_too_far(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """The rebuild criterion of a deformed cell (class docstring), 0-d bool on the device."""
        back = inverse_cells(cell) @ self._reference_cell  # (B, 3, 3): current Cartesian rows -> reference cell
        mapped = torch.bmm(positions.unsqueeze(1), back[self._batch_index]).squeeze(1)
        displacement2 = ((mapped - self._reference) ** 2).sum(-1)  # (N,) Å^2
        strain = inverse_cells(self._reference_cell) @ cell - torch.eye(3, dtype=cell.dtype, device=cell.device)
        sigma_min = 1.0 - strain.flatten(1).norm(dim=-1)  # (B,) lower bound of the smallest singular value of F
        allowed = 0.5 * (self.cutoff + self.skin - self.cutoff / sigma_min.clamp(min=1e-6))  # (B,) Å
        too_far = displacement2 > allowed.clamp(min=0.0)[self._batch_index] ** 2
        return too_far.any() | (allowed <= 0.0).any()

    def needs_rebuild(self, positions: torch.Tensor, cell: torch.Tensor | None = None) -> bool:
        """Return True when no list exists or some atom moved more than allowed since the last build."""
        moved = self.moved_too_far(positions, cell)
        return True if moved is None else bool(moved)  # one host read

    def update(self, batch: AtomsBatch, rebuild: bool | None = None) -> Neighbors:
        """Return a valid list for the batch's current positions, rebuilding it only when needed.

        ``rebuild`` is the decision when the caller has already read :meth:`moved_too_far` (True also when that
        was None); None decides here (one host read).
        """
        if rebuild is None:
            rebuild = self.needs_rebuild(batch.positions, batch.cell)
        if rebuild:
            self._release()
            self._neighbors = neighbor_list(batch, self.cutoff + self.skin)
            self._reference = batch.positions.detach().clone()
            if self.variable_cell:
                self._reference_cell = batch.cell.detach().clone()
                self._batch_index = batch.batch
            self.n_builds += 1
        return self._neighbors

    def _release(self) -> None:
        """Let go of the list about to be replaced, and of what evaluators cached on it, before the new one is built.

        The sorted layout of the compiled kernels and the half list of the torch path are pair-sized (~50 bytes per
        pair); kept until the new list exists, they raised the peak memory of a rebuild by about half. A caller that
        still holds the old list keeps its pairs; the caches are rebuilt on demand if it is evaluated again.
        """
        old, self._neighbors = self._neighbors, None
        if old is not None:
            for name in ('_pair_layout', '_half_list'):
                old.__dict__.pop(name, None)

    @property
    def neighbors(self) -> Neighbors | None:
        """The current list (None before the first build)."""
        return self._neighbors
