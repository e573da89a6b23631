"""A truncated-and-shifted Lennard-Jones fluid with energy, forces and stress: an analytic referee for NPT MD.

``phi(r) = 4 epsilon ((sigma/r)^12 - (sigma/r)^6) - phi_LJ(r_c)`` for ``r < r_c``, zero beyond: the energy is
continuous at the cutoff, the force jumps there (by ``phi_LJ'(r_c)``, tiny at ``r_c = 2.5 sigma``). Forces and
stress are written out analytically:

- ``F_i = sum_j phi'(r_ij) r_ij / r_ij`` with ``r_ij = r_j - r_i``,
- ``stress = (1 / V) sum_{i<j} phi'(r_ij) r_ij (x) r_ij / r_ij``: ASE's convention, ``(1/V) dE/d(strain)`` at fixed
  fractional coordinates, so the virial pressure is ``-trace(stress) / 3``.

Defaults are argon-like (epsilon 0.0104 eV, sigma 3.40 Å). Units: Å, eV, eV/Å, eV/Å^3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .atoms import AtomsBatch, Neighbors, neighbor_list, pair_vectors
from .md.barostat import volumes

__all__ = ['ShiftedLennardJones']


class ShiftedLennardJones:
    """Truncated-and-shifted Lennard-Jones pair potential, one element, the ``evaluate`` contract of ``CONTRACT.md``.

    Parameters
    ----------
    epsilon
        Well depth [eV].
    sigma
        Length [Å].
    cutoff
        Truncation radius r_c [Å].
    """

    committee_size = 1

    def __init__(self, epsilon: float = 0.0104, sigma: float = 3.40, cutoff: float = 8.5) -> None:
        self.epsilon = float(epsilon)
        self.sigma = float(sigma)
        self.cutoff = float(cutoff)
        self.shift = self._plain(torch.tensor(self.cutoff, dtype=torch.float64))[0].item()  # eV, phi_LJ(r_c)

    def _plain(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """Unshifted LJ energy [eV] and dE/dr [eV/Å] at distances r [Å]."""
        sr6 = (self.sigma / r) ** 6
        energy = 4.0 * self.epsilon * (sr6 * sr6 - sr6)
        derivative = 4.0 * self.epsilon * (-12.0 * sr6 * sr6 + 6.0 * sr6) / r
        return energy, derivative

    def pair_terms(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """Shifted pair energy phi(r) [eV] and phi'(r) [eV/Å]; zero at and beyond the cutoff."""
        inside = r < self.cutoff
        safe = torch.where(inside, r, torch.full_like(r, self.cutoff))
        energy, derivative = self._plain(safe)
        return torch.where(inside, energy - self.shift, 0.0), torch.where(inside, derivative, 0.0)

    def evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors | None = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Energy (B,) [eV], forces (N, 3) [eV/Å] and, with ``stress``, the stress (B, 3, 3) [eV/Å^3].

        ``neighbors`` is a full list (both directions) that holds every pair closer than the cutoff (extra pairs
        are fine); None builds one.
        """
        if neighbors is None:
            neighbors = neighbor_list(batch, self.cutoff)
        n_sys = batch.n_systems
        d = pair_vectors(batch, neighbors)  # (P, 3) r_j - r_i
        r = d.norm(dim=-1)
        phi, dphi = self.pair_terms(r)
        owner = batch.batch[neighbors.i]
        energy = batch.positions.new_zeros(n_sys).index_add_(0, owner, 0.5 * phi)
        out = {'energy': energy, 'energies': energy.unsqueeze(0)}
        out['energy_std'] = torch.zeros_like(energy)
        out['max_force_deviation'] = torch.zeros_like(energy)
        unit = d * (dphi / r.clamp(min=1e-12)).unsqueeze(-1)  # (P, 3) phi'(r) r_ij / r
        if forces:
            out['forces'] = torch.zeros_like(batch.positions).index_add_(0, neighbors.i, unit)
        if stress:
            virial = 0.5 * unit.unsqueeze(-1) * d.unsqueeze(-2)  # (P, 3, 3), each pair counted twice
            total = batch.positions.new_zeros(n_sys, 3, 3).index_add_(0, owner, virial)
            out['stress'] = total / volumes(batch.cell).view(-1, 1, 1)
        return out
