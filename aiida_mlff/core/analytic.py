"""Analytic torch potentials with the ``Potential.evaluate`` interface of ``CONTRACT.md``, for tests and benchmarks.

- :class:`FlexibleWater`: harmonic O-H bonds and H-O-H angle with the SPC/Fw force constants (Wu, Tepper and Voth,
  J. Chem. Phys. 124, 024503 (2006)), and a Lennard-Jones O-O interaction between molecules, smoothly switched off
  between ``r_on`` and ``cutoff``. No charges: a dense, stable, fully flexible molecular fluid, not real water.
- :class:`ChargedFlexibleWater`: SPC/Fw itself (the same bonds, angle and O-O Lennard-Jones, plus the SPC/Fw point
  charges) with the intermolecular Coulomb energy as the damped shifted force (DSF) sum of Fennell and Gezelter
  (J. Chem. Phys. 124, 234104 (2006)); energy, forces and stress, a liquid at 1 bar: the referee for NPT.
- :class:`LennardJones`: all pairs, the same switching.
- :class:`HarmonicBonds`: harmonic bonds and angles by atom index, the same in every replica (forces by autograd).
- :class:`SumPotential`: the sum of potentials (e.g. a random-weight ML model kept in shape by bonds, for benchmarks).

Forces (and the stress of :class:`ChargedFlexibleWater`) are written out analytically (no autograd), so a step costs
a handful of tensor operations. They accept a batch of any number of systems (open or periodic) and any float dtype or
device. Units: Å, eV, eV/Å, eV/Å^3, amu.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase import Atoms, units
from torch import Tensor

from .atoms import AtomsBatch, Neighbors, neighbor_list, pair_vectors

__all__ = ['ChargedFlexibleWater', 'FlexibleWater', 'HarmonicBonds', 'LennardJones', 'SumPotential', 'water_box']

KCAL_MOL = 0.0433641043  # eV per kcal/mol
COULOMB = units.Hartree * units.Bohr  # eV Å per e^2, 1 / (4 pi epsilon_0) = 14.3996 eV Å


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


#: SPC/Fw's bonded and O-O Lennard-Jones parameters (Wu, Tepper and Voth 2006): eV/Å^2, Å, eV/rad^2, degrees, eV, Å
SPCFW = {
    'k_bond': 1059.162 * KCAL_MOL,
    'r0': 1.012,
    'k_angle': 75.90 * KCAL_MOL,
    'theta0': 113.24,
    'epsilon': 0.1554 * KCAL_MOL,
    'sigma': 3.165492,
}


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
        k_bond: float = SPCFW['k_bond'],
        r0: float = SPCFW['r0'],
        k_angle: float = SPCFW['k_angle'],
        theta0: float = SPCFW['theta0'],
        epsilon: float = SPCFW['epsilon'],
        sigma: float = SPCFW['sigma'],
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

    def oh_vectors(self, batch: AtomsBatch) -> tuple[Tensor, Tensor]:
        """(n_mol, 3) O->H1 and O->H2 vectors [Å], minimum image within the molecule's cell when periodic."""
        topology = self._check(batch)
        pos = batch.positions
        d1, d2 = pos[1::3] - pos[0::3], pos[2::3] - pos[0::3]
        if topology is None:
            return d1, d2
        pbc, inv, cell = topology

        def mic(d: Tensor) -> Tensor:
            frac = torch.bmm(d.unsqueeze(1), inv).squeeze(1)
            frac = frac - torch.where(pbc, torch.round(frac), torch.zeros_like(frac))
            return torch.bmm(frac.unsqueeze(1), cell).squeeze(1)

        return mic(d1), mic(d2)

    def _intramolecular(self, batch: AtomsBatch) -> tuple[Tensor, Tensor]:
        pos = batch.positions
        n = pos.shape[0]
        d1, d2 = self.oh_vectors(batch)
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


def _dsf_pairs(r: Tensor, alpha: float, cutoff: float) -> tuple[Tensor, Tensor]:
    """Damped shifted force Coulomb kernel per unit charge product: energy [eV/e^2] and its r-derivative [eV/Å/e^2].

    ``v(r) = k (erfc(a r) / r - erfc(a R) / R + (erfc(a R) / R^2 + 2 a / sqrt(pi) exp(-a^2 R^2) / R) (r - R))``
    for ``r < R`` (Fennell and Gezelter 2006, eq. 19 without the constant self term): the energy and the force go to
    zero at the cutoff ``R``. The caller zeroes pairs at or beyond it.
    """
    two_over_sqrt_pi = 2.0 / math.sqrt(math.pi)
    erfc_c = math.erfc(alpha * cutoff)
    force_c = erfc_c / cutoff**2 + two_over_sqrt_pi * alpha * math.exp(-((alpha * cutoff) ** 2)) / cutoff
    erfc_r = torch.erfc(alpha * r)
    energy = erfc_r / r - erfc_c / cutoff + force_c * (r - cutoff)
    derivative = -erfc_r / r**2 - two_over_sqrt_pi * alpha * torch.exp(-((alpha * r) ** 2)) / r + force_c
    return COULOMB * energy, COULOMB * derivative


class ChargedFlexibleWater:
    """SPC/Fw water (Wu, Tepper and Voth 2006) with damped shifted force (DSF) electrostatics: energy, forces, stress.

    Bonds, angle and the O-O Lennard-Jones take the SPC/Fw parameters (the defaults of :class:`FlexibleWater`), the
    charges are SPC/Fw's (``q_O = -0.82 e``, ``q_H = +0.41 e``). Between molecules, every atom pair closer than
    ``cutoff`` (periodic images included) interacts by the DSF Coulomb sum of Fennell and Gezelter (J. Chem. Phys.
    124, 234104 (2006)): ``erfc``-damped, with energy and force shifted to zero at the cutoff, so MD conserves energy
    without an Ewald sum. Defaults ``alpha = 0.2 / Å``, ``cutoff = 9 Å``: the combination Fennell and Gezelter found
    to reproduce Ewald forces and energies of liquid water closely (their recommended alpha is 0.2-0.25 / Å at
    9-12 Å); the constant self term of their eq. 19 is left out (it moves no atom and no cell). The O-O
    Lennard-Jones is switched off (C2) between ``r_on`` and ``cutoff`` (its tail there is below 1e-4 eV).

    Exclusions: the three atoms of one molecule do not see each other's charges or Lennard-Jones (their bonded terms
    replace them). A pair counts as intramolecular when both atoms belong to the same molecule (atoms come O, H, H per
    molecule, so the molecule is the global index // 3) and are closer than ``exclusion`` (3 Å; O-H and H-H are 1-1.7
    Å, while the periodic images of a molecule in a box wider than about 5 Å are farther): those images are ordinary
    intermolecular partners, as in an Ewald sum.

    The stress is ``(1/V) dE/d(strain)`` (ASE's sign): ``(1/V) sum_pairs phi'(r) r (x) r / r`` over the pairs and
    ``-(1/V) sum_H F_H (x) d_OH`` for the bonded terms (minimum-image O-H vectors).

    Parameters
    ----------
    charge_o
        Oxygen charge [e]; each H carries ``-charge_o / 2``.
    alpha
        DSF damping [1/Å].
    cutoff
        DSF and Lennard-Jones cutoff [Å].
    r_on
        Start of the Lennard-Jones switch [Å].
    exclusion
        Intramolecular exclusion distance [Å] (see above).
    k_bond, r0, k_angle, theta0, epsilon, sigma
        As in :class:`FlexibleWater` (eV/Å^2, Å, eV/rad^2, degrees, eV, Å); defaults SPC/Fw.
    """

    committee_size = 1

    def __init__(
        self,
        charge_o: float = -0.82,
        alpha: float = 0.2,
        cutoff: float = 9.0,
        r_on: float = 8.0,
        exclusion: float = 3.0,
        k_bond: float = SPCFW['k_bond'],
        r0: float = SPCFW['r0'],
        k_angle: float = SPCFW['k_angle'],
        theta0: float = SPCFW['theta0'],
        epsilon: float = SPCFW['epsilon'],
        sigma: float = SPCFW['sigma'],
    ) -> None:
        self.charge_o, self.alpha, self.cutoff = float(charge_o), float(alpha), float(cutoff)
        self.r_on, self.exclusion = float(r_on), float(exclusion)
        self.epsilon, self.sigma = float(epsilon), float(sigma)
        # the bonded terms (and the O, H, H order check) are FlexibleWater's; its Lennard-Jones is not used
        self._bonded = FlexibleWater(k_bond, r0, k_angle, theta0, epsilon, sigma, cutoff=cutoff, r_on=r_on)
        self.elements = ['H', 'O']
        self._half = _PairCache()

    def charges(self, numbers: Tensor, dtype: torch.dtype) -> Tensor:
        """(N,) charges [e] of atoms with atomic numbers ``numbers`` (8 or 1)."""
        q_o = torch.full(numbers.shape, self.charge_o, dtype=dtype, device=numbers.device)
        return torch.where(numbers == 8, q_o, -0.5 * q_o)

    def _half_list(self, batch: AtomsBatch, nbrs: Neighbors) -> tuple[Neighbors, dict]:
        """The pairs of a full list counted once, and per pair: charge product [e^2], same molecule, O-O subset.

        Kept: i < j, and of an atom's pairs with its own images the half whose first nonzero shift is positive.
        """
        shifts = nbrs.shifts
        later = torch.where(shifts[:, 1] != 0, shifts[:, 1], shifts[:, 2])
        first = torch.where(shifts[:, 0] != 0, shifts[:, 0], later)
        half = nbrs.select((nbrs.i < nbrs.j) | ((nbrs.i == nbrs.j) & (first > 0)))
        i, j, numbers = half.i, half.j, batch.numbers
        q = self.charges(numbers, batch.positions.dtype)
        return half, {
            'qq': q[i] * q[j],
            'same_molecule': torch.div(i, 3, rounding_mode='floor') == torch.div(j, 3, rounding_mode='floor'),
            'oo': torch.nonzero((numbers[i] == 8) & (numbers[j] == 8)).squeeze(-1),
        }

    def _pairs(self, batch: AtomsBatch, half: Neighbors, pairs: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pair vectors (P, 3) [Å], distances (P,) [Å], energies phi (P,) [eV] and phi'(r) (P,) [eV/Å] of a half list.

        The vectors are r_j - r_i. Excluded (intramolecular) pairs and pairs at or beyond the cutoff get zero.
        """
        d = pair_vectors(batch, half)
        r = d.norm(dim=-1)
        keep = ~(pairs['same_molecule'] & (r < self.exclusion)) & (r < self.cutoff)
        safe = torch.where(keep, r, torch.full_like(r, self.cutoff))
        e_c, de_c = _dsf_pairs(safe, self.alpha, self.cutoff)
        zero = torch.zeros_like(r)
        phi = torch.where(keep, pairs['qq'] * e_c, zero)
        dphi = torch.where(keep, pairs['qq'] * de_c, zero)
        oo = pairs['oo']
        e_lj, de_lj = _lj_pairs(safe[oo], self.epsilon, self.sigma, self.r_on, self.cutoff)  # zero at the cutoff
        return d, r, phi.index_add(0, oo, e_lj), dphi.index_add(0, oo, de_lj)

    def evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors | None = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Energy (B,) [eV], forces (N, 3) [eV/Å] and, with ``stress``, the stress (B, 3, 3) [eV/Å^3].

        ``neighbors``: a full list (both directions) holding every pair closer than the cutoff (extra pairs are
        fine); None builds one. The stress of a non-periodic system is NaN.
        """
        from .md.barostat import volumes

        nbrs = neighbor_list(batch, self.cutoff) if neighbors is None else neighbors
        half, pairs = self._half.get(nbrs, lambda nb: self._half_list(batch, nb))
        e_intra, f_intra = self._bonded._intramolecular(batch)
        d, r, phi, dphi = self._pairs(batch, half, pairs)
        owner = batch.batch[half.i]  # the system of each pair
        energy = e_intra.index_add(0, owner, phi)
        grad = d * (dphi / r.clamp(min=1e-12)).unsqueeze(-1)  # (P, 3) dE/d(r_j - r_i)
        total_forces = f_intra.index_add(0, half.i, grad).index_add(0, half.j, -grad)
        out = _outputs(batch, energy, total_forces)
        if stress:
            virial = torch.zeros_like(batch.cell).index_add(0, owner, grad.unsqueeze(-1) * d.unsqueeze(-2))
            d1, d2 = self._bonded.oh_vectors(batch)
            f_mol = f_intra.reshape(-1, 3, 3)
            bonded = -(f_mol[:, 1].unsqueeze(-1) * d1.unsqueeze(-2) + f_mol[:, 2].unsqueeze(-1) * d2.unsqueeze(-2))
            virial = virial.index_add(0, batch.batch[0::3], bonded)
            volume = volumes(batch.cell)
            periodic = batch.pbc.all(-1) & (volume.abs() > 0)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            out['stress'] = torch.where(periodic.view(-1, 1, 1), virial / safe.view(-1, 1, 1), torch.nan)
        return out


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
