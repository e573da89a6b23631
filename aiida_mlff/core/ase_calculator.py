"""The potential as an ASE calculator."""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .atoms import AtomsBatch
from .contract import PotentialLike

__all__ = ['MLFFCalculator']


class MLFFCalculator(Calculator):
    """ASE calculator for a ``Potential`` (or anything with the same ``evaluate``).

    Results: ``energy``, ``free_energy`` [eV], ``forces`` [eV/Å], ``energies`` [eV] of the committee members,
    ``energy_std`` [eV] and ``max_force_deviation`` [eV/Å] (both zero for a single model) and ``stress``
    [eV/Å^3, Voigt order] for periodic cells.
    """

    implemented_properties: tuple[str, ...] = (
        'energy',
        'free_energy',
        'forces',
        'stress',
        'energy_std',
        'max_force_deviation',
    )

    def __init__(self, potential: PotentialLike, **kwargs) -> None:
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes) -> None:
        """Evaluate the potential for ``atoms``."""
        super().calculate(atoms, properties, system_changes)
        batch = AtomsBatch.from_atoms(self.atoms, dtype=self.potential.dtype, device=self.potential.device)
        want_stress = 'stress' in properties and bool(self.atoms.pbc.all())
        out = self.potential.evaluate(batch, forces=True, stress=want_stress)
        energy = float(out['energy'][0])
        self.results = {
            'energy': energy,
            'free_energy': energy,
            'forces': out['forces'].detach().cpu().double().numpy(),
            'energies': out['energies'][:, 0].detach().cpu().double().numpy(),
            'energy_std': float(out['energy_std'][0]),
            'max_force_deviation': float(out['max_force_deviation'][0]),
        }
        if want_stress:
            s = out['stress'][0].detach().cpu().double().numpy()
            self.results['stress'] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
