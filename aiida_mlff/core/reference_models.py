"""Analytic reference potentials that save and load like trained ones, for tests with a known answer.

``torsion-analytic``: a four-atom chain a-b-c-d (e.g. H-O-O-H) with harmonic bonds and angles and a cosine series
in the dihedral. Its potential of mean force along the dihedral is the torsion term itself (the Jacobian of the
dihedral does not depend on it), so umbrella sampling + WHAM must recover ``V(phi)``. A committee scales the
torsion term of member ``m`` by ``1 + spread * (m - (M - 1) / 2)``. With ``broken=(lo, hi)`` the energy is NaN for
dihedrals in [lo, hi] radians: MD there blows up, as with a model that fails in a region (tests of recovery).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .atoms import AtomsBatch
from .colvars import dihedral

__all__ = ['SurfaceModel', 'TorsionModel', 'torsion_energy']


def torsion_energy(phi: Tensor, coefficients: Sequence[float]) -> Tensor:
    """``sum_n c_n (1 + cos(n phi))`` in eV for n = 1, 2, ...; ``phi`` in radians."""
    return sum(c * (1 + torch.cos((n + 1) * phi)) for n, c in enumerate(coefficients))


class TorsionModel(nn.Module):
    """Harmonic bonds (eV/Å^2) and angles (eV/rad^2) plus a cosine torsion (eV) for batches of 4-atom chains."""

    architecture = 'torsion-analytic'

    def __init__(
        self,
        elements: Sequence[str],
        cutoff: float = 2.0,
        committee: int = 1,
        seed: int = 0,
        bonds: Sequence[float] = (0.97, 1.45, 0.97),
        angles: Sequence[float] = (1.75, 1.75),
        k_bond: float = 30.0,
        k_angle: float = 5.0,
        torsion: Sequence[float] = (0.02, 0.03, 0.0),
        spread: float = 0.0,
        broken: Sequence[float] | None = None,
        dtype: torch.dtype | str = torch.float64,
        device: str | torch.device = 'cpu',
        **_,
    ) -> None:
        super().__init__()
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self._elements = list(elements)
        self._cutoff = float(cutoff)
        self.spec = {
            'bonds': [float(b) for b in bonds],
            'angles': [float(a) for a in angles],
            'k_bond': float(k_bond),
            'k_angle': float(k_angle),
            'torsion': [float(c) for c in torsion],
            'spread': float(spread),
            'broken': [float(b) for b in broken] if broken else None,
            'seed': int(seed),
            'committee': int(committee),
        }
        scale = 1 + spread * (torch.arange(committee, dtype=torch.float64) - (committee - 1) / 2)
        self.register_buffer('member_scale', scale.to(dtype=dtype, device=device))
        self.metadata: dict = {}

    # the attributes MD, the file format and PotentialData read
    @property
    def cutoff(self) -> float:  # noqa: D102
        return self._cutoff

    @property
    def committee_size(self) -> int:  # noqa: D102
        return int(self.member_scale.shape[0])

    @property
    def elements(self) -> list[str]:  # noqa: D102
        return self._elements

    @property
    def dtype(self) -> torch.dtype:  # noqa: D102
        return self.member_scale.dtype

    @property
    def device(self) -> torch.device:  # noqa: D102
        return self.member_scale.device

    def hyperparameters(self) -> dict:
        """Everything needed to rebuild this model."""
        return {'architecture': self.architecture, 'elements': self._elements, 'cutoff': self._cutoff, **self.spec}

    def save(self, path):
        """Write the model file (see :mod:`aiida_mlff.core.potential_io`)."""
        from .potential_io import save_potential

        return save_potential(self, path)

    def member_energies(self, positions: Tensor) -> Tensor:
        """(M, B) energies in eV of (B, 4, 3) positions in Å."""
        s = self.spec
        r = [torch.linalg.norm(positions[:, i + 1] - positions[:, i], dim=-1) for i in range(3)]
        e = sum(0.5 * s['k_bond'] * (r[i] - s['bonds'][i]) ** 2 for i in range(3))
        for i in range(2):
            u = positions[:, i] - positions[:, i + 1]
            v = positions[:, i + 2] - positions[:, i + 1]
            cos = (u * v).sum(-1) / (torch.linalg.norm(u, dim=-1) * torch.linalg.norm(v, dim=-1))
            theta = torch.acos(cos.clamp(-1 + 1e-12, 1 - 1e-12))
            e = e + 0.5 * s['k_angle'] * (theta - s['angles'][i]) ** 2
        flat = positions.reshape(-1, 3)
        offsets = torch.arange(positions.shape[0], device=positions.device) * 4
        phi = dihedral(flat, 0, 1, 2, 3, offsets=offsets)
        torsion = torsion_energy(phi, s['torsion'])
        if s.get('broken'):  # a model that fails (NaN energy) for dihedrals in [lo, hi] radians: a test of recovery
            lo, hi = s['broken']
            torsion = torch.where((phi >= lo) & (phi <= hi), torch.full_like(torsion, float('nan')), torsion)
        return e.unsqueeze(0) + self.member_scale.unsqueeze(1) * torsion.unsqueeze(0)

    def evaluate(self, batch: AtomsBatch, neighbors=None, forces: bool = True, stress: bool = False, **_) -> dict:
        """The MD contract of ``CONTRACT.md``: energies, forces and committee statistics."""
        batch = batch.to(device=self.device, dtype=self.dtype)
        if not bool((batch.counts == 4).all()):
            raise ValueError('torsion-analytic handles 4-atom chains only')
        with torch.enable_grad():
            positions = batch.positions.detach().requires_grad_(forces)
            energies = self.member_energies(positions.reshape(-1, 4, 3))
            out = {'energies': energies.detach(), 'energy': energies.mean(0).detach()}
            m = energies.shape[0]
            out['energy_std'] = energies.std(0, unbiased=False).detach() if m > 1 else torch.zeros_like(out['energy'])
            if forces:
                grads = [torch.autograd.grad(energies[k].sum(), positions, retain_graph=k < m - 1)[0] for k in range(m)]
                member_forces = -torch.stack(grads)
                out['forces'] = member_forces.mean(0)
                deviation = ((member_forces - out['forces']) ** 2).sum(-1).mean(0).sqrt()  # (N,)
                out['max_force_deviation'] = torch.zeros_like(out['energy']).scatter_reduce(
                    0, batch.batch, deviation, 'amax', include_self=False
                )
                if m > 1:
                    out['member_forces'] = member_forces
        return out


def build_torsion(elements, cutoff=2.0, committee=1, seed=0, **options) -> TorsionModel:
    """Builder of the analytic torsion model (see :class:`TorsionModel`)."""
    return TorsionModel(elements, cutoff=cutoff, committee=committee, seed=seed, **options)


class SurfaceModel(nn.Module):
    """A model surface of :mod:`aiida_mlff.core.surfaces` as a potential file: each atom moves on it independently.

    ``surface``: ``'muller-brown'`` (options ``scale`` eV per Müller-Brown unit, ``k_z`` eV/Å^2) or ``'double-well'``
    (``height`` eV, ``a`` Å, ``k`` eV/Å^2). Every committee member is the same surface (no spread). Through
    ``mlff-run`` and the work chains it gives enhanced-sampling methods an exact free energy to meet.
    """

    architecture = 'surface-analytic'

    def __init__(
        self,
        elements: Sequence[str],
        surface: str = 'muller-brown',
        cutoff: float = 1.0,
        committee: int = 1,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float64,
        device: str | torch.device = 'cpu',
        **options,
    ) -> None:
        super().__init__()
        from .surfaces import DoubleWell, MullerBrown

        kinds = {'muller-brown': MullerBrown, 'double-well': DoubleWell}
        if surface not in kinds:
            raise ValueError(f'surface must be one of {sorted(kinds)}, got {surface!r}')
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self._elements, self._cutoff = list(elements), float(cutoff)
        self.spec = {'surface': surface, 'committee': int(committee), 'seed': int(seed), **options}
        self.surface = kinds[surface](**options)
        self.register_buffer('member_scale', torch.ones(int(committee), dtype=dtype, device=device))
        self.metadata: dict = {}

    cutoff = TorsionModel.cutoff
    committee_size = TorsionModel.committee_size
    elements = TorsionModel.elements
    dtype = TorsionModel.dtype
    device = TorsionModel.device
    save = TorsionModel.save

    def hyperparameters(self) -> dict:
        """Everything needed to rebuild this model."""
        return {'architecture': self.architecture, 'elements': self._elements, 'cutoff': self._cutoff, **self.spec}

    def evaluate(self, batch: AtomsBatch, neighbors=None, forces: bool = True, stress: bool = False, **_) -> dict:
        """Energies (B,) [eV], forces (N, 3) [eV/Å] and zero committee spread."""
        batch = batch.to(device=self.device, dtype=self.dtype)
        out = self.surface.evaluate(batch, forces=True)
        m = self.committee_size
        out['energies'] = out['energy'].unsqueeze(0).expand(m, -1)
        if not forces:
            out.pop('forces')
        return out


def build_surface(elements, cutoff=1.0, committee=1, seed=0, **options) -> SurfaceModel:
    """Builder of the analytic surface model (see :class:`SurfaceModel`)."""
    return SurfaceModel(elements, cutoff=cutoff, committee=committee, seed=seed, **options)
