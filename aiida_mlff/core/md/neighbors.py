"""Verlet neighbour lists with a skin, rebuilt only when some atom has moved more than half the skin."""

from __future__ import annotations

import torch

from ..atoms import AtomsBatch, Neighbors, neighbor_list

__all__ = ['VerletList']


class VerletList:
    """A neighbour list of ``cutoff + skin`` that stays valid until an atom moves more than ``skin / 2``.

    Positions are never wrapped, so the integer cell shifts of a list stay valid while it is reused. The cell is
    assumed fixed (NVE and NVT).

    Parameters
    ----------
    cutoff
        Cutoff of the potential [Å].
    skin
        Extra margin [Å].

    Attributes
    ----------
    n_builds
        How many times the list was built.
    """

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_builds = 0
        self._reference: torch.Tensor | None = None
        self._neighbors: Neighbors | None = None

    def moved_too_far(self, positions: torch.Tensor) -> torch.Tensor | None:
        """Whether some atom moved more than half the skin since the last build, as a 0-d bool tensor on the device.

        No host read: the caller reads it when it suits (e.g. together with other flags, one synchronisation).
        None when a build is due regardless (no list yet, or other atoms).
        """
        if self._neighbors is None or self._reference is None or self._reference.shape != positions.shape:
            return None
        displacement2 = ((positions - self._reference) ** 2).sum(-1).max()  # Å^2
        return displacement2 > (0.5 * self.skin) ** 2

    def needs_rebuild(self, positions: torch.Tensor) -> bool:
        """Return True when no list exists or some atom moved more than half the skin since the last build."""
        moved = self.moved_too_far(positions)
        return True if moved is None else bool(moved)  # one host read

    def update(self, batch: AtomsBatch, rebuild: bool | None = None) -> Neighbors:
        """Return a valid list for the batch's current positions, rebuilding it only when needed.

        ``rebuild`` is the decision when the caller has already read :meth:`moved_too_far` (True also when that
        was None); None decides here (one host read).
        """
        if rebuild is None:
            rebuild = self.needs_rebuild(batch.positions)
        if rebuild:
            self._neighbors = neighbor_list(batch, self.cutoff + self.skin)
            self._reference = batch.positions.detach().clone()
            self.n_builds += 1
        return self._neighbors

    @property
    def neighbors(self) -> Neighbors | None:
        """The current list (None before the first build)."""
        return self._neighbors
