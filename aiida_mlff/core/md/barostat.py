"""Stochastic cell rescaling (Bernetti and Bussi, J. Chem. Phys. 153, 114107 (2020)) for every replica of a batch.

Each replica's logarithmic volume ``eps = ln V`` follows a first-order (overdamped) stochastic equation driven by the
difference between the target pressure ``P0`` and the instantaneous pressure; positions and cell are scaled by the
same factor and velocities by its inverse. In Itô form, with the velocities scaled along (so the kinetic energy
enters the instantaneous pressure),

    d eps = -(beta_T / tau_p) (P0 - P_int) dt + sqrt(2 kT beta_T / (V tau_p)) dW,

which is the drift of the stationary Fokker-Planck condition for ``rho(eps, s, pi) ~ exp(-(H + P0 V) / kT + eps)``
(``s``, ``pi``: scaled positions and momenta), i.e. the isothermal-isobaric distribution. ``beta_T`` is a guess of
the isothermal compressibility that only sets how fast the volume relaxes (about ``tau_p`` when it is right).

Modes:

- ``'isotropic'``: one ``eps`` per replica; ``P_int = trace(P) / 3``; cell shape kept.
- ``'anisotropic'``: the diagonal variant: one ``eps_a`` per Cartesian axis a (x, y, z) and replica, driven by the
  diagonal component ``P_aa`` of the pressure tensor, ``d eps_a = -(beta_T / (3 tau_p)) (P0 - P_aa) dt +
  sqrt(2 kT beta_T / (3 V tau_p)) dW_a``; Cartesian component a of positions and of every lattice vector is scaled by
  ``exp(d eps_a)``. The sum ``eps_x + eps_y + eps_z = ln V`` then moves as in the isotropic mode. Shear is not
  sampled (no off-diagonal cell changes): meant for orthorhombic cells (a triclinic cell keeps its tilt factors'
  axes but its angles change with the axis ratios).

The pressure tensor is ``P = (1/V) sum_i m_i v_i (x) v_i - stress`` (ASE's stress, ``(1/V) dE/d(strain)``), the
kinetic part from the instantaneous velocities of every atom: under a Langevin thermostat all ``3N`` degrees of
freedom are thermalised (centre-of-mass motion included), so ``<2 K / 3> = N kT`` matches the ``V^N`` of the
ensemble. Units: Å, fs, K, eV, amu; pressures in eV/Å^3 inside (bar at the interface), compressibilities in Å^3/eV
inside (1/bar at the interface).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ase import units
from torch import Tensor

from .integrators import KB, KINETIC

__all__ = [
    'BAR',
    'MODES',
    'CellRescaling',
    'cell_rescaling_step',
    'init_cell_rescaling',
    'inverse_cells',
    'pressure_tensor',
    'volumes',
]

BAR = units.bar  # eV/Å^3 per bar
MODES = ('isotropic', 'anisotropic')


@dataclass
class CellRescaling:
    """Parameters of the stochastic cell-rescaling barostat of every replica, on the device.

    Attributes
    ----------
    pressure
        (B,) target pressure P0 [eV/Å^3].
    compressibility
        (B,) beta_T [Å^3/eV].
    temperature
        (B,) K (that of the thermostat).
    tau
        Relaxation time tau_p [fs].
    mode
        ``'isotropic'`` or ``'anisotropic'`` (diagonal).
    """

    pressure: Tensor
    compressibility: Tensor
    temperature: Tensor
    tau: float
    mode: str = 'isotropic'


def init_cell_rescaling(
    pressure: Tensor,
    compressibility: Tensor,
    tau_p: float,
    temperature: Tensor,
    mode: str = 'isotropic',
) -> CellRescaling:
    """The barostat of B replicas.

    Parameters
    ----------
    pressure
        (B,) target pressure [bar].
    compressibility
        (B,) isothermal compressibility guess [1/bar] (> 0).
    tau_p
        Relaxation time [fs] (> 0).
    temperature
        (B,) K; its dtype and device are those of the barostat.
    mode
        ``'isotropic'`` or ``'anisotropic'``.
    """
    if mode not in MODES:
        raise ValueError(f'barostat_mode must be one of {list(MODES)}, got {mode!r}')
    if not tau_p > 0:
        raise ValueError(f'tau_p must be > 0 fs, got {tau_p!r}')
    if not bool((compressibility > 0).all()):  # once, at set-up
        raise ValueError(f'compressibility must be > 0 (1/bar), got {compressibility.tolist()}')
    return CellRescaling(
        pressure=pressure * BAR,
        compressibility=compressibility / BAR,
        temperature=temperature,
        tau=float(tau_p),
        mode=mode,
    )


def volumes(cell: Tensor) -> Tensor:
    """(B,) cell volumes [Å^3] of (B, 3, 3) cells (rows are lattice vectors), no host read."""
    return torch.linalg.cross(cell[:, 1], cell[:, 2]).mul(cell[:, 0]).sum(-1).abs()


def inverse_cells(cell: Tensor) -> Tensor:
    """(B, 3, 3) inverses [1/Å] of (B, 3, 3) cells by cross products (no LAPACK call, no host read)."""
    a, b, c = cell[:, 0], cell[:, 1], cell[:, 2]
    cofactors = torch.stack([torch.linalg.cross(b, c), torch.linalg.cross(c, a), torch.linalg.cross(a, b)], dim=-1)
    return cofactors / (a * cofactors[..., 0]).sum(-1).view(-1, 1, 1)


def pressure_tensor(stress: Tensor, velocities: Tensor, masses: Tensor, batch: Tensor, cell: Tensor) -> Tensor:
    """Instantaneous pressure tensor (B, 3, 3) [eV/Å^3]: ``(1/V) sum_i m_i v_i (x) v_i - stress``.

    Parameters
    ----------
    stress
        (B, 3, 3) eV/Å^3, ASE's convention.
    velocities
        (N, 3) Å/fs.
    masses
        (N,) amu.
    batch
        (N,) replica of each atom.
    cell
        (B, 3, 3) Å.
    """
    mv = (KINETIC * masses).unsqueeze(-1) * velocities
    outer = mv.unsqueeze(-1) * velocities.unsqueeze(-2)  # (N, 3, 3) eV
    kinetic = stress.new_zeros(stress.shape).index_add_(0, batch, outer)
    return kinetic / volumes(cell).view(-1, 1, 1) - stress


def cell_rescaling_step(
    baro: CellRescaling,
    positions: Tensor,
    velocities: Tensor,
    cell: Tensor,
    batch: Tensor,
    pressure: Tensor,
    dt: float,
    generator: torch.Generator,
    active: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Euler-Maruyama step of the barostat: scaled positions (N, 3) Å, velocities (N, 3) Å/fs and cells (B, 3, 3).

    Parameters
    ----------
    baro
        The barostat.
    positions, velocities
        (N, 3) Å and Å/fs.
    cell
        (B, 3, 3) Å, rows are lattice vectors.
    batch
        (N,) replica of each atom.
    pressure
        (B, 3, 3) eV/Å^3, the instantaneous pressure tensor (:func:`pressure_tensor`) of this state.
    dt
        fs.
    generator
        The run's random generator (one normal draw per replica, three in the anisotropic mode, every step).
    active
        (B,) bool: stopped replicas are not scaled.
    """
    n = cell.shape[0]
    volume = volumes(cell)
    kt = KB * baro.temperature
    rate = baro.compressibility * dt / baro.tau  # Å^3/eV
    if baro.mode == 'isotropic':
        drive = pressure.diagonal(dim1=-2, dim2=-1).mean(-1) - baro.pressure  # P_int - P0, (B,)
        noise = torch.randn(n, generator=generator, dtype=cell.dtype, device=cell.device)
        d_eps = rate * drive + torch.sqrt(2.0 * kt * rate / volume) * noise
        log_scale = (d_eps / 3.0).unsqueeze(-1).expand(n, 3)
    else:
        drive = pressure.diagonal(dim1=-2, dim2=-1) - baro.pressure.unsqueeze(-1)  # (B, 3)
        noise = torch.randn(n, 3, generator=generator, dtype=cell.dtype, device=cell.device)
        log_scale = (rate / 3.0).unsqueeze(-1) * drive + torch.sqrt(2.0 * kt * rate / (3.0 * volume)).unsqueeze(
            -1
        ) * noise
    scale = torch.where(active.unsqueeze(-1), torch.exp(log_scale), 1.0)  # (B, 3) per Cartesian axis
    per_atom = scale[batch]
    return positions * per_atom, velocities / per_atom, cell * scale.unsqueeze(1)
