"""Analytic torch potentials with the ``Potential.evaluate`` interface of ``CONTRACT.md``, for tests and benchmarks.

- :class:`FlexibleWater`: harmonic O-H bonds and H-O-H angle with the SPC/Fw force constants (Wu, Tepper and Voth,
  J. Chem. Phys. 124, 024503 (2006)), and a Lennard-Jones O-O interaction between molecules, smoothly switched off
  between ``r_on`` and ``cutoff``. No charges: a dense, stable, fully flexible molecular fluid, not real water.
- :class:`LennardJones`: all pairs, the same switching.
- :class:`HarmonicBonds`: harmonic bonds and angles by atom index, the same in every replica (forces by autograd).
- :class:`SumPotential`: the sum of potentials (e.g. a random-weight ML model kept in shape by bonds, for benchmarks).

Forces are written out analytically (no autograd), so a step costs a handful of tensor operations. Both accept a
batch of any number of systems (open or periodic) and any float dtype or device. Units: Å, eV, eV/Å, amu.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase import Atoms
from torch import Tensor

from .atoms import AtomsBatch, Neighbors, neighbor_list, pair_vectors

__all__ = ['FlexibleWater', 'HarmonicBonds', 'LennardJones', 'SumPotential', 'water_box']

KCAL_MOL = 0.0433641043  # eV per kcal/mol


def _switch(r: Tensor, r_on: float, r_off: float) -> tuple[Tensor, Tensor]:
    """C2 switching function S(r) (1 below r_on, 0 above r_off) and dS/dr."""
    x = ((r - r_on) / (r_off - r_on)).clamp(0.0, 1.0)
    s = 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x**2)
    ds = -30.0 * x**2 * (1.0 - x) ** 2 / (r_off - r_on)
    return s, ds


def _lj_pairs(r: Tensor, epsilon: float, sigma: float, r_on: float, r_off: float) -> tuple[Tensor, Tensor]:
    """Switched LJ pair energy [eV] and dE/dr [eV/Å] at distances r."""
    sr6 = (sigma / r) ** 6
    e = 4.0 * epsilon * (sr6 * sr6 - sr6)
    de = 4.0 * epsilon * (-12.0 * sr6 * sr6 + 6.0 * sr6) / r
    s, ds = _switch(r, r_on, r_off)
    return e * s, de * s + e * ds


def _outputs(batch: AtomsBatch, energy: Tensor, forces: Tensor) -> dict[str, Tensor]:
    zeros = torch.zeros_like(energy)
    return {
        'energy': energy,
        'forces': forces,
        'energies': energy.unsqueeze(0),
        'energy_std': zeros,
        'max_force_deviation': zeros.clone(),
    }


class _PairCache:
    """Remembers the selected pairs of the last neighbour list (MD reuses one list for many steps)."""

    def __init__(self) -> None:
        self._key = None
        self._value = None

    def get(self, nbrs: Neighbors, make):
        if nbrs is not self._key:  # holds a reference, so a new list can never look like the cached one
            self._key, self._value = nbrs, make(nbrs)
        return self._value


def _pair_geometry(batch: AtomsBatch, nbrs: Neighbors) -> tuple[Tensor, Tensor, Tensor]:
    """(i, j, shift vectors [Å]) of a pair list, so that r_ij = r_j - r_i + shift (the cell is fixed during MD)."""
    shift = pair_vectors(batch, nbrs) - (batch.positions[nbrs.j] - batch.positions[nbrs.i])
    return nbrs.i, nbrs.j, shift.detach()


def _lj_energy_forces(
    batch: AtomsBatch, pairs: tuple[Tensor, Tensor, Tensor], epsilon: float, sigma: float, r_on: float, r_off: float
) -> tuple[Tensor, Tensor]:
    """Switched LJ over a full pair list (i, j, shift): energy per system (B,) and forces (N, 3)."""
    i, j, shift = pairs
    vec = batch.positions[j] - batch.positions[i] + shift
    r = vec.norm(dim=-1)
    inside = r < r_off
    e, de = _lj_pairs(r.clamp(min=0.5), epsilon, sigma, r_on, r_off)
    e = torch.where(inside, e, torch.zeros_like(e))
    de = torch.where(inside, de, torch.zeros_like(de))
    energy = torch.zeros(batch.n_systems, dtype=vec.dtype, device=vec.device)
    energy.index_add_(0, batch.batch[i], 0.5 * e)
    forces = torch.zeros_like(batch.positions)
    # full list: pair (i, j) contributes F_i = (dE/dr) r_ij / r; (j, i) gives the partner's force
    forces.index_add_(0, i, (de / r.clamp(min=1e-12)).unsqueeze(-1) * vec)
    return energy, forces


class LennardJones:
    """Lennard-Jones between all atoms, switched off smoothly (C2) between ``r_on`` and ``cutoff``.

    Parameters
    ----------
    epsilon
        Well depth [eV].
    sigma
        Å.
    cutoff, r_on
        Å; the energy and forces go smoothly to zero between them.
    """

    def __init__(self, epsilon: float = 0.0104, sigma: float = 3.40, cutoff: float = 8.5, r_on: float = 7.5):
        self.epsilon, self.sigma, self.cutoff, self.r_on = float(epsilon), float(sigma), float(cutoff), float(r_on)
        self.committee_size = 1
        self.elements: list[str] = []
        self._pairs = _PairCache()

    def evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors | None = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Energy (B,) [eV] and forces (N, 3) [eV/Å] (``CONTRACT.md``); stress is not implemented."""
        if stress:
            raise NotImplementedError('LennardJones has no stress')
        nbrs = neighbor_list(batch, self.cutoff) if neighbors is None else neighbors
        pairs = self._pairs.get(nbrs, lambda nb: _pair_geometry(batch, nb.select(nb.i != nb.j)))
        energy, f = _lj_energy_forces(batch, pairs, self.epsilon, self.sigma, self.r_on, self.cutoff)
        return _outputs(batch, energy, f)


class FlexibleWater:
    """Flexible, charge-free water: SPC/Fw bonds and angle, Lennard-Jones O-O between molecules.

    Atoms must come as O, H, H per molecule (as ``ase.build.molecule('H2O')`` and :func:`water_box` give them),
    molecules whole or wrapped across a periodic boundary (intramolecular vectors use the minimum image).

    Parameters
    ----------
    k_bond
        O-H force constant [eV/Å^2], energy ``0.5 k (r - r0)^2`` (SPC/Fw: 1059.162 kcal/mol/Å^2).
    r0
        O-H bond length [Å].
    k_angle
        H-O-H force constant [eV/rad^2] (SPC/Fw: 75.90 kcal/mol/rad^2).
    theta0
        H-O-H angle [degrees].
    epsilon, sigma
        O-O Lennard-Jones [eV], [Å] (SPC/Fw: 0.1554 kcal/mol, 3.165492 Å).
    cutoff, r_on
        O-O switching range [Å].
    """

    def __init__(
        self,
        k_bond: float = 1059.162 * KCAL_MOL,
        r0: float = 1.012,
        k_angle: float = 75.90 * KCAL_MOL,
        theta0: float = 113.24,
        epsilon: float = 0.1554 * KCAL_MOL,
        sigma: float = 3.165492,
        cutoff: float = 6.0,
        r_on: float = 5.0,
    ) -> None:
        self.k_bond, self.r0 = float(k_bond), float(r0)
        self.k_angle, self.theta0 = float(k_angle), math.radians(theta0)
        self.epsilon, self.sigma, self.cutoff, self.r_on = float(epsilon), float(sigma), float(cutoff), float(r_on)
        self.committee_size = 1
        self.elements = ['H', 'O']
        self._oo = _PairCache()
        self._topology_key = None
        self._topology = None

    def _check(self, batch: AtomsBatch):
        """Validate the O, H, H order once per batch and cache the per-molecule cells (the cell is fixed in MD)."""
        key = (batch.numbers, batch.cell, batch.pbc)
        if self._topology_key is not None and all(a is b for a, b in zip(key, self._topology_key, strict=True)):
            return self._topology
        numbers = batch.numbers
        n = numbers.shape[0]
        if n % 3 or not bool((numbers[0::3] == 8).all() and (numbers[1::3] == 1).all() and (numbers[2::3] == 1).all()):
            raise ValueError('FlexibleWater needs atoms ordered O, H, H per molecule')
        topology = None
        if bool(batch.pbc.any()):
            sys = batch.batch[0::3]
            eye = torch.eye(3, dtype=batch.cell.dtype, device=batch.cell.device)
            cell = torch.where(batch.pbc.unsqueeze(-1), batch.cell, eye)
            topology = (batch.pbc[sys], torch.linalg.inv(cell)[sys].clone(), cell[sys].clone())
        self._topology_key, self._topology = key, topology
        return topology

    def _intramolecular(self, batch: AtomsBatch) -> tuple[Tensor, Tensor]:
        pos = batch.positions
        n = pos.shape[0]
        topology = self._check(batch)
        o, h1, h2 = pos[0::3], pos[1::3], pos[2::3]
        d1, d2 = h1 - o, h2 - o
        if topology is not None:
            pbc, inv, cell = topology

            def mic(d: Tensor) -> Tensor:
                frac = torch.bmm(d.unsqueeze(1), inv).squeeze(1)
                frac = frac - torch.where(pbc, torch.round(frac), torch.zeros_like(frac))
                return torch.bmm(frac.unsqueeze(1), cell).squeeze(1)

            d1, d2 = mic(d1), mic(d2)
        r1 = d1.norm(dim=-1, keepdim=True)
        r2 = d2.norm(dim=-1, keepdim=True)
        u1, u2 = d1 / r1, d2 / r2
        e_bond = 0.5 * self.k_bond * ((r1 - self.r0) ** 2 + (r2 - self.r0) ** 2).squeeze(-1)
        f_h1 = -self.k_bond * (r1 - self.r0) * u1
        f_h2 = -self.k_bond * (r2 - self.r0) * u2
        c = (u1 * u2).sum(-1, keepdim=True).clamp(-1.0, 1.0)
        s = (1.0 - c * c).clamp(min=1e-12).sqrt()
        theta = torch.atan2(s, c)
        dtheta = theta - self.theta0
        e_angle = 0.5 * self.k_angle * dtheta.squeeze(-1) ** 2
        # d theta / d d1 = -(u2 - c u1) / (r1 sin theta)
        g1 = -(u2 - c * u1) / (r1 * s)
        g2 = -(u1 - c * u2) / (r2 * s)
        f_h1 = f_h1 - self.k_angle * dtheta * g1
        f_h2 = f_h2 - self.k_angle * dtheta * g2
        forces = torch.stack([-(f_h1 + f_h2), f_h1, f_h2], dim=1).reshape(n, 3)
        energy = torch.zeros(batch.n_systems, dtype=pos.dtype, device=pos.device)
        energy.index_add_(0, batch.batch[0::3], e_bond + e_angle)
        return energy, forces

    def _select_oo(self, nbrs: Neighbors, numbers: Tensor) -> Neighbors:
        both_o = (numbers[nbrs.i] == 8) & (numbers[nbrs.j] == 8) & (nbrs.i != nbrs.j)
        return nbrs.select(both_o)

    def evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors | None = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Energy (B,) [eV] and forces (N, 3) [eV/Å] (``CONTRACT.md``); stress is not implemented."""
        if stress:
            raise NotImplementedError('FlexibleWater has no stress')
        nbrs = neighbor_list(batch, self.cutoff) if neighbors is None else neighbors
        oo = self._oo.get(nbrs, lambda nb: _pair_geometry(batch, self._select_oo(nb, batch.numbers)))
        e_intra, f_intra = self._intramolecular(batch)
        e_lj, f_lj = _lj_energy_forces(batch, oo, self.epsilon, self.sigma, self.r_on, self.cutoff)
        return _outputs(batch, e_intra + e_lj, f_intra + f_lj)


class HarmonicBonds:
    """Harmonic bonds ``0.5 k (r - r0)^2`` and angles ``0.5 k (theta - theta0)^2``, the same in every replica.

    Atom indices count inside each replica (replicas may differ in size as long as the indices exist).

    Parameters
    ----------
    bonds
        ``(i, j, k [eV/Å^2], r0 [Å])`` tuples.
    angles
        ``(i, j, k, k_theta [eV/rad^2], theta0 [degrees])`` tuples, vertex j.
    """

    def __init__(self, bonds=(), angles=()) -> None:
        self.bonds = [(int(i), int(j), float(k), float(r0)) for i, j, k, r0 in bonds]
        self.angles = [(int(i), int(j), int(k), float(kt), math.radians(t0)) for i, j, k, kt, t0 in angles]
        self.cutoff = 0.0
        self.committee_size = 1
        self.elements: list[str] = []

    def evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors | None = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Energy (B,) [eV] and forces (N, 3) [eV/Å]; neighbours are not needed."""
        from .colvars import angle, batch_offsets, distance

        if stress:
            raise NotImplementedError('HarmonicBonds has no stress')
        offsets = batch_offsets(batch)
        with torch.enable_grad():
            pos = batch.positions.detach().requires_grad_(True)
            energy = pos.new_zeros(batch.n_systems)
            for i, j, k, r0 in self.bonds:
                r = distance(pos, i, j, batch.cell, batch.pbc, offsets)
                energy = energy + 0.5 * k * (r - r0) ** 2
            for i, j, m, kt, t0 in self.angles:
                t = angle(pos, i, j, m, batch.cell, batch.pbc, offsets)
                energy = energy + 0.5 * kt * (t - t0) ** 2
            (grad,) = torch.autograd.grad(energy.sum(), pos, allow_unused=True)
        grad = torch.zeros_like(pos) if grad is None else grad
        return _outputs(batch, energy.detach(), -grad)


class SumPotential:
    """Sum of potentials; committee statistics come from the members that have them.

    Parameters
    ----------
    potentials
        Objects with the ``CONTRACT.md`` ``evaluate``; the first one with a ``dtype`` sets :attr:`dtype`.
    """

    def __init__(self, *potentials) -> None:
        self.potentials = list(potentials)
        self.cutoff = max(float(p.cutoff) for p in self.potentials)
        self.committee_size = max(int(getattr(p, 'committee_size', 1)) for p in self.potentials)
        self.elements = sorted({e for p in self.potentials for e in getattr(p, 'elements', [])})
        self.dtype = next((p.dtype for p in self.potentials if hasattr(p, 'dtype')), torch.float64)

    def evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors | None = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Return the summed energy (B,) [eV] and forces (N, 3) [eV/Å]; deviations are the largest of the parts."""
        nbrs = neighbor_list(batch, self.cutoff) if neighbors is None else neighbors
        outs = [p.evaluate(batch, nbrs, forces=True) for p in self.potentials]
        dtype = batch.positions.dtype
        energy = sum(o['energy'].detach().to(dtype) for o in outs)
        result = _outputs(batch, energy, sum(o['forces'].detach().to(dtype) for o in outs))
        for key in ('max_force_deviation', 'energy_std'):
            result[key] = torch.stack([o[key].detach().to(dtype) for o in outs]).amax(0)
        return result


def water_box(
    n_molecules: int, density: float = 1.0, seed: int = 0, r0: float = 1.012, theta0: float = 113.24
) -> Atoms:
    """Build a periodic cubic box of randomly oriented water molecules (O, H, H order) on lattice sites.

    Sites are face-centred cubic when ``n_molecules = 4 k^3`` (32, 108, 256, ...), simple cubic otherwise.

    Parameters
    ----------
    n_molecules
        Number of molecules.
    density
        g/cm^3.
    seed
        Seed of the orientations.
    r0, theta0
        O-H length [Å] and H-O-H angle [degrees].
    """
    rng = np.random.default_rng(seed)
    mass = 15.999 + 2 * 1.008  # amu
    volume = n_molecules * mass / (density * 0.602214076)  # Å^3
    length = volume ** (1 / 3)
    k = round((n_molecules / 4) ** (1 / 3))
    if 4 * k**3 == n_molecules:
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        grid = np.array([[a, b, c] for a in range(k) for b in range(k) for c in range(k)])
        sites = (grid[:, None, :] + basis[None]).reshape(-1, 3) / k
    else:
        k = math.ceil(n_molecules ** (1 / 3))
        sites = np.array([[a, b, c] for a in range(k) for b in range(k) for c in range(k)])[:n_molecules] / k
    sites = (sites + 0.25 / k) * length
    t = math.radians(theta0) / 2
    local = np.array([[0, 0, 0], [r0 * math.sin(t), 0, r0 * math.cos(t)], [-r0 * math.sin(t), 0, r0 * math.cos(t)]])
    positions = []
    for site in sites:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # random rotation (up to reflection, fine for water)
        positions.append(site + local @ q.T)
    return Atoms('OH2' * n_molecules, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)
