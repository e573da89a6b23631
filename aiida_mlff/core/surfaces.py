"""Model surfaces with exact free energies, as potentials of the ``CONTRACT.md`` ``evaluate`` interface.

Each atom of a replica moves on the same external surface of its own Cartesian coordinates (atoms do not interact),
so a replica of one atom is a particle on the surface and the exact free energy along the surface's own coordinates
is known by quadrature: the referees of the enhanced-sampling methods.

- :class:`MullerBrown`: the Müller-Brown surface (Müller and Brown, Theor. Chim. Acta 53, 75 (1979)) in (x, y),
  scaled to eV, plus a harmonic restraint on z. Three minima, two saddles.
- :class:`DoubleWell`: ``height ((x / a)^2 - 1)^2`` plus harmonic restraints on y and z.

:func:`exact_free_energy` integrates ``exp(-U / kT)`` of a surface over bins of its coordinates. Units: Å, eV, K.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .analytic import _outputs
from .atoms import AtomsBatch, Neighbors

__all__ = ['MULLER_BROWN', 'DoubleWell', 'MullerBrown', 'exact_free_energy']

KB_EV = 8.617333262e-5  # eV/K

#: the four Gaussian-like terms of the Müller-Brown surface: A, a, b, c, x0, y0 (energy in its own units)
MULLER_BROWN = np.array(
    [
        [-200.0, -1.0, 0.0, -10.0, 1.0, 0.0],
        [-100.0, -1.0, 0.0, -10.0, 0.0, 0.5],
        [-170.0, -6.5, 11.0, -6.5, -0.5, 1.5],
        [15.0, 0.7, 0.6, 0.7, -1.0, 1.0],
    ]
)


class _Surface:
    """An external field on every atom's (x, y, z); subclasses give ``energy_xy`` of torch or numpy arrays."""

    cutoff = 0.0
    committee_size = 1
    dtype = torch.float64

    def __init__(self, k_z: float) -> None:
        self.k_z = float(k_z)
        self.elements: list[str] = []

    def energy_xy(self, x, y):
        """Energy of the surface part [eV] at coordinates x, y [Å] (torch or numpy, any shape)."""
        raise NotImplementedError

    def evaluate(
        self, batch: AtomsBatch, neighbors: Neighbors | None = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Energy (B,) [eV] and forces (N, 3) [eV/Å]; no neighbours needed."""
        if stress:
            raise NotImplementedError('model surfaces have no stress')
        with torch.enable_grad():
            pos = batch.positions.detach().requires_grad_(True)
            per_atom = self.energy_xy(pos[:, 0], pos[:, 1]) + 0.5 * self.k_z * pos[:, 2] ** 2
            energy = pos.new_zeros(batch.n_systems).index_add(0, batch.batch, per_atom)
            (grad,) = torch.autograd.grad(energy.sum(), pos)
        return _outputs(batch, energy.detach(), -grad.detach())


class MullerBrown(_Surface):
    """The Müller-Brown surface in (x, y) [Å], ``scale`` eV per Müller-Brown unit, plus ``0.5 k_z z^2``.

    Minima near (-0.558, 1.442), (0.623, 0.028), (-0.050, 0.467) at -146.7, -108.2, -80.8 units; saddles near
    (-0.822, 0.624) at -40.7 and (0.212, 0.293) at -72.2 units.

    Parameters
    ----------
    scale
        eV per Müller-Brown energy unit (e.g. ``kT / 10``: the highest saddle 10.6 kT above the global minimum).
    k_z
        eV/Å^2, harmonic restraint on z.
    """

    def __init__(self, scale: float, k_z: float = 1.0) -> None:
        super().__init__(k_z)
        self.scale = float(scale)

    def energy_xy(self, x, y):  # noqa: D102
        exp = torch.exp if isinstance(x, Tensor) else np.exp
        total = 0.0
        for a_, a, b, c, x0, y0 in MULLER_BROWN:
            dx, dy = x - x0, y - y0
            total = total + a_ * exp(a * dx * dx + b * dx * dy + c * dy * dy)
        return self.scale * total


class DoubleWell(_Surface):
    """``height ((x / a)^2 - 1)^2`` [eV] with minima at x = -a, a [Å], plus ``0.5 k (y^2 + z^2)``.

    Parameters
    ----------
    height
        Barrier at x = 0, eV.
    a
        Position of the minima, Å.
    k
        eV/Å^2, harmonic restraints on y and z.
    """

    def __init__(self, height: float, a: float = 1.0, k: float = 1.0) -> None:
        super().__init__(k)
        self.height, self.a = float(height), float(a)

    def energy_xy(self, x, y):  # noqa: D102
        return self.height * ((x / self.a) ** 2 - 1.0) ** 2 + 0.5 * self.k_z * y * y


def exact_free_energy(surface: _Surface, edges: list[np.ndarray], temperature: float, refine: int = 20) -> np.ndarray:
    """Exact free energy [eV] of bins of x (1-D) or of (x, y) (2-D), minimum zero.

    ``F(bin) = -kT ln integral_bin exp(-U / kT)`` by the midpoint rule on ``refine`` sub-points per bin and
    coordinate. z is a separable Gaussian (the same constant in every bin); a 1-D profile along x needs a surface
    whose y-part separates too (:class:`DoubleWell`).

    Parameters
    ----------
    surface
        A :class:`MullerBrown` or :class:`DoubleWell`.
    edges
        One array of bin edges per coordinate [Å]: ``[x_edges]`` or ``[x_edges, y_edges]``.
    temperature
        K.
    refine
        Sub-points per bin and coordinate.
    """
    kt = KB_EV * float(temperature)

    def sub_points(e: np.ndarray) -> np.ndarray:
        e = np.asarray(e, dtype=float)
        t = (np.arange(refine) + 0.5) / refine
        return e[:-1, None] + np.diff(e)[:, None] * t[None, :]  # (bins, refine)

    if len(edges) == 1:
        if not isinstance(surface, DoubleWell):
            raise ValueError('a 1-D exact profile needs a surface whose y-part separates (DoubleWell)')
        log_w = -surface.energy_xy(sub_points(edges[0]), 0.0) / kt  # (bins, refine)
    else:
        xs, ys = sub_points(edges[0]), sub_points(edges[1])
        log_w = -surface.energy_xy(xs[:, None, :, None], ys[None, :, None, :]) / kt  # (bx, by, rx, ry)
        log_w = log_w.reshape(*log_w.shape[:2], -1)
    shift = log_w.max()
    with np.errstate(divide='ignore'):  # bins far up the walls underflow to F = inf
        f = -kt * (np.log(np.exp(log_w - shift).sum(axis=-1)) + shift)
    return f - f.min()
