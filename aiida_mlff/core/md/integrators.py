"""Batched integrators as small functions.

Maxwell-Boltzmann initial velocities, velocity Verlet (NVE) and Langevin BAOAB (NVT, exact Ornstein-Uhlenbeck
O-step).

Units: Å, fs, amu, eV, K. With masses in amu, forces in eV/Å and velocities in Å/fs, an acceleration is
``F / m * ACCELERATION`` Å/fs^2 and a kinetic energy ``0.5 m v^2 * KINETIC`` eV (``ase.units``: 1 amu Å^2/fs^2 is
about 103.6 eV).

Every function takes ``moving`` (N, 1) bool: atoms of stopped replicas keep their positions and velocities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ase import units
from torch import Tensor

__all__ = [
    'ACCELERATION',
    'KB',
    'KINETIC',
    'baoab_step',
    'kinetic_energy',
    'maxwell_boltzmann',
    'remove_com_velocity',
    'velocity_verlet_step',
]

ACCELERATION = units.fs**2  # (eV/Å/amu) -> Å/fs^2
KINETIC = 1.0 / units.fs**2  # amu Å^2/fs^2 -> eV
KB = units.kB  # eV/K

#: ``forces_fn(positions) -> forces (N, 3) eV/Å`` (the runner keeps energies and diagnostics on the side)
ForcesFn = Callable[[Tensor], Tensor]


def _per_system_sum(values: Tensor, batch: Tensor, n_systems: int) -> Tensor:
    out = values.new_zeros((n_systems, *values.shape[1:]))
    return out.index_add_(0, batch, values)


def remove_com_velocity(velocities: Tensor, masses: Tensor, batch: Tensor, n_systems: int) -> Tensor:
    """Velocities with zero centre-of-mass momentum in every system, (N, 3) Å/fs."""
    momentum = _per_system_sum(masses.unsqueeze(-1) * velocities, batch, n_systems)
    total_mass = _per_system_sum(masses, batch, n_systems)
    return velocities - (momentum / total_mass.unsqueeze(-1))[batch]


def maxwell_boltzmann(
    masses: Tensor,
    temperature: Tensor,
    batch: Tensor,
    n_systems: int,
    generator: torch.Generator,
    remove_com: bool = True,
) -> Tensor:
    """Random velocities from the Maxwell-Boltzmann distribution, (N, 3) Å/fs.

    Parameters
    ----------
    masses
        (N,) amu.
    temperature
        (B,) K, one per system.
    batch
        (N,) system index of each atom.
    n_systems
        B.
    generator
        Torch random generator.
    remove_com
        Subtract the centre-of-mass velocity of each system (zero total momentum).
    """
    sigma = torch.sqrt(KB * temperature[batch] / masses / KINETIC).unsqueeze(-1)
    v = sigma * torch.randn(masses.shape[0], 3, generator=generator, dtype=masses.dtype, device=masses.device)
    if remove_com:
        v = remove_com_velocity(v, masses, batch, n_systems)
    return v


def kinetic_energy(velocities: Tensor, masses: Tensor, batch: Tensor, n_systems: int) -> Tensor:
    """Kinetic energy of every system, (B,) eV."""
    per_atom = 0.5 * KINETIC * masses * (velocities * velocities).sum(-1)
    return _per_system_sum(per_atom, batch, n_systems)


def velocity_verlet_step(
    positions: Tensor,
    velocities: Tensor,
    forces: Tensor,
    masses: Tensor,
    dt: float,
    forces_fn: ForcesFn,
    moving: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One velocity Verlet step (NVE).

    Parameters
    ----------
    positions, velocities, forces
        (N, 3) Å, Å/fs, eV/Å at time t.
    masses
        (N,) amu.
    dt
        fs.
    forces_fn
        Forces at new positions.
    moving
        (N, 1) bool.

    Returns
    -------
    tuple
        Positions, velocities and forces at t + dt.
    """
    inv_m = (ACCELERATION / masses).unsqueeze(-1)
    v_half = velocities + 0.5 * dt * forces * inv_m
    new_positions = torch.where(moving, positions + dt * v_half, positions)
    new_forces = forces_fn(new_positions)
    new_velocities = torch.where(moving, v_half + 0.5 * dt * new_forces * inv_m, velocities)
    return new_positions, new_velocities, new_forces


def baoab_step(
    positions: Tensor,
    velocities: Tensor,
    forces: Tensor,
    masses: Tensor,
    dt: float,
    forces_fn: ForcesFn,
    moving: Tensor,
    temperature: Tensor,
    friction: Tensor,
    generator: torch.Generator,
    rescale: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Langevin BAOAB step (Leimkuhler and Matthews, Appl. Math. Res. Express 2013, 34).

    B: half kick, A: half drift, O: exact Ornstein-Uhlenbeck update ``v = c v + sqrt(1 - c^2) sigma xi`` with
    ``c = exp(-friction dt)``, A: half drift, new forces, B: half kick.

    Parameters
    ----------
    positions, velocities, forces
        (N, 3) Å, Å/fs, eV/Å at time t.
    masses
        (N,) amu.
    dt
        fs.
    forces_fn
        Forces at new positions.
    moving
        (N, 1) bool.
    temperature
        (N,) K, per atom (from its replica).
    friction
        (N,) 1/fs, per atom.
    generator
        Torch random generator.
    rescale
        Optional barostat move ``(positions, velocities) -> (positions, velocities)`` applied right after the first
        half kick (B C A O A B): it sees the positions at which ``forces`` (and their stress) were evaluated.

    Returns
    -------
    tuple
        Positions, velocities and forces at t + dt, and the mid-step velocities right after the O step (Å/fs).
        For harmonic modes BAOAB samples the mid-step velocities exactly, while the full-step ones are narrower by
        ``(omega dt)^2 / 4``: measure kinetic temperatures on the mid-step velocities.
    """
    inv_m = (ACCELERATION / masses).unsqueeze(-1)
    v = velocities + 0.5 * dt * forces * inv_m
    if rescale is not None:
        positions, v = rescale(positions, v)
    x = positions + 0.5 * dt * v
    c = torch.exp(-friction * dt).unsqueeze(-1)
    sigma = torch.sqrt(KB * temperature / masses / KINETIC).unsqueeze(-1)
    noise = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
    v = c * v + torch.sqrt(1.0 - c * c) * sigma * noise
    v_mid = torch.where(moving, v, velocities)
    x = torch.where(moving, x + 0.5 * dt * v, positions)
    new_forces = forces_fn(x)
    v = torch.where(moving, v + 0.5 * dt * new_forces * inv_m, velocities)
    return x, v, new_forces, v_mid
