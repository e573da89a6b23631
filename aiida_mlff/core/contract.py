"""The potential contract as code: what MD, training, vibrations, the ASE calculator and the AiiDA layer may call.

``CONTRACT.md`` describes the same interface in prose. Two levels:

- :class:`PotentialLike` is what drives MD, vibrations and the ASE calculator: ``evaluate`` with the keys below,
  ``cutoff`` and ``committee_size``. Analytic referees keep it too.
- :class:`StoredPotential` adds what a potential file and ``PotentialData`` need: elements, dtype and device, the
  hyperparameters its builder takes back (:mod:`aiida_mlff.core.architectures`), metadata and ``save``;
  :func:`aiida_mlff.core.potential_io.load_potential` reads the file back through the architecture registry.

``evaluate(batch, neighbors=None, forces=True, stress=False)`` returns, for B systems, N atoms and M members:

=======================  ==============  ===================================================================
key                      shape           meaning
=======================  ==============  ===================================================================
``energy``               (B,)            eV, committee mean
``forces``               (N, 3)          eV/Å, committee mean, = -dE/dR (when ``forces``)
``energies``             (M, B)          eV, every member
``member_forces``        (M, N, 3)       eV/Å (when ``forces`` and M > 1)
``energy_std``           (B,)            eV, committee spread (zeros when M == 1)
``max_force_deviation``  (B,)            eV/Å, max over atoms of the members' force spread (zeros when M == 1)
``stress``               (B, 3, 3)       eV/Å^3, (1/V) dE/d(strain), ASE's sign (when ``stress``, periodic)
=======================  ==============  ===================================================================

Both protocols are ``runtime_checkable``: ``isinstance(obj, PotentialLike)`` checks that the members exist (not
their signatures; the shared physics tests in ``tests/core/test_contract.py`` check the behaviour).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ['EVALUATE_KEYS', 'PotentialLike', 'StoredPotential']

#: the keys ``evaluate`` always returns (``forces``, ``member_forces`` and ``stress`` when asked and applicable)
EVALUATE_KEYS = ('energy', 'energies', 'energy_std', 'max_force_deviation')


@runtime_checkable
class PotentialLike(Protocol):
    """Anything that drives MD: energies, forces, stress and committee statistics of a batch of systems."""

    @property
    def cutoff(self) -> float:
        """Largest interaction range the model needs [Å]; MD builds neighbour lists of at least this."""
        ...

    @property
    def committee_size(self) -> int:
        """Number of committee members M (1 for a single model)."""
        ...

    def evaluate(
        self, batch: Any, neighbors: Any = None, forces: bool = True, stress: bool = False
    ) -> dict[str, Tensor]:
        """Energies [eV], forces [eV/Å], stress [eV/Å^3] and committee statistics (the table of the module)."""
        ...


@runtime_checkable
class StoredPotential(PotentialLike, Protocol):
    """A potential that round-trips through a potential file (``core/potential_io.py``) and ``PotentialData``."""

    architecture: str
    metadata: dict

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the potential handles."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Floating point type of the parameters."""
        ...

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        ...

    def hyperparameters(self) -> dict:
        """Plain data that its architecture's builder takes back to build the same model (weights apart)."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """The weights and buffers (tensors only: the file is loaded with ``weights_only=True``)."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write the potential file; return its path."""
        ...
