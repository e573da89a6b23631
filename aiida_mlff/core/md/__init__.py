"""Batched molecular dynamics: state, integrators, Verlet lists, reporters and the ``simulate`` runner.

Many replicas (umbrella windows x temperatures x systems) advance together as one flattened batch, one potential
evaluation per step. Example, 32 umbrella windows on the H-O-O-H dihedral of H2O2::

    import numpy as np
    from ase.build import molecule
    from aiida_mlff.core.colvars import Dihedral, HarmonicBias
    from aiida_mlff.core.md import simulate
    from aiida_mlff.core.wham import wham

    centers = np.linspace(-np.pi, np.pi, 32, endpoint=False)
    bias = HarmonicBias(Dihedral(2, 0, 1, 3), centers, kappa=0.5)  # eV/rad^2
    result = simulate(potential, [molecule('H2O2')] * 32, ensemble='langevin', timestep=0.5, steps=20_000,
                      temperature=300.0, friction=0.01, biases=[bias], stride=10)
    pmf = wham(list(result.colvars[100:, :, 0].T), centers, 0.5, 300.0, bins=72, period=2 * np.pi, bootstrap=50)

Units: Å, fs, K, eV, amu, radians. Frames of stopped replicas are NaN; ``result.final_state`` continues a run.
"""

from __future__ import annotations

from .integrators import baoab_step, kinetic_energy, maxwell_boltzmann, velocity_verlet_step
from .neighbors import VerletList
from .reporters import MDResult
from .runner import simulate
from .state import MDState

__all__ = [
    'MDResult',
    'MDState',
    'VerletList',
    'baoab_step',
    'kinetic_energy',
    'maxwell_boltzmann',
    'simulate',
    'velocity_verlet_step',
]
