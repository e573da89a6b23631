"""Free-energy surfaces in two collective variables: the data class, 2-D WHAM and MBAR, minima and paths.

SKELETON (to be completed): the data class is the contract between the estimators (umbrella WHAM/MBAR, metadynamics
in :mod:`aiida_mlff.core.metadynamics`), the AiiDA layer and the report.

Units: CV internal units (Å, rad), eV, K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ['FreeEnergySurface']

KB_EV = 8.617333262e-5  # eV/K


@dataclass
class FreeEnergySurface:
    """A free energy on a grid of two CVs.

    Attributes
    ----------
    edges
        ``(x_edges (K0+1,), y_edges (K1+1,))`` bin edges, internal CV units.
    free_energy
        (K0, K1) eV, minimum 0; NaN in bins without samples.
    error
        (K0, K1) eV, standard error (bootstrap or block analysis; NaN where undefined).
    temperature
        K.
    periods
        ``(period_x, period_y)``, each None for a non-periodic CV.
    names, units
        Per CV, e.g. ``('dihedral(2,0,1,3)', 'position(0,x)')`` and ``('rad', 'Å')``.
    estimator
        ``'wham'``, ``'mbar'`` or ``'metadynamics'``.
    warnings
        Messages (low overlap, unconverged, ...).
    """

    edges: tuple[np.ndarray, np.ndarray]
    free_energy: np.ndarray
    error: np.ndarray
    temperature: float
    periods: tuple[float | None, float | None] = (None, None)
    names: tuple[str, str] = ('cv0', 'cv1')
    units: tuple[str, str] = ('', '')
    estimator: str = ''
    warnings: list[str] = field(default_factory=list)

    @property
    def kt(self) -> float:
        """KT in eV."""
        return KB_EV * self.temperature

    @property
    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin centres along each CV."""
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)
