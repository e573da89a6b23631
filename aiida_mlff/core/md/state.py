"""The state of a batch of MD replicas: positions, velocities, forces, RNG and per-replica status.

Units: positions Å, velocities Å/fs, masses amu, forces eV/Å, energies eV, time fs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atoms import AtomsBatch

__all__ = ['STATUS_BLOWN_UP', 'STATUS_DEVIATION', 'STATUS_OK', 'MDState']

STATUS_OK = 'ok'
STATUS_DEVIATION = 'deviation_exceeded'
STATUS_BLOWN_UP = 'blown_up'


@dataclass
class MDState:
    """Everything needed to continue a batched MD run exactly.

    Attributes
    ----------
    batch
        The replicas as one :class:`~aiida_mlff.core.atoms.AtomsBatch`; ``batch.positions`` (N, 3) Å are the current
        positions (unwrapped: atoms are never wrapped back into the cell); ``batch.cell`` (B, 3, 3) Å the current
        cells (an NPT run changes them).
    velocities
        (N, 3) Å/fs.
    masses
        (N,) amu.
    generator
        The torch random generator of the thermostat (its state travels in :meth:`state_dict`).
    step
        Number of steps done so far.
    active
        (B,) bool, replicas still advancing; stopped ones are frozen.
    status, diagnostic, stop_step
        Per replica: ``'ok'``, ``'deviation_exceeded'`` or ``'blown_up'``; a message; the step it stopped at
        (-1 while running).
    forces, energy, bias_energy
        (N, 3) eV/Å total force (potential + biases) and (B,) eV potential and bias energies at the current positions;
        None until computed.
    stress
        (B, 3, 3) eV/Å^3, the potential's stress at the current positions (NPT runs only; else None), so that a
        continued run's barostat starts from the same pressure.
    walker
        (B,) int64: which starting replica's configuration each replica holds (replica exchange moves them).
    bias_states, exchange_state
        The saved state of each bias (e.g. metadynamics hills; ``{}`` for stateless biases) and of the replica
        exchange (counts), so that a continued run goes on exactly.
    """

    batch: AtomsBatch
    velocities: Tensor
    masses: Tensor
    generator: torch.Generator
    step: int = 0
    active: Tensor | None = None
    status: list[str] = field(default_factory=list)
    diagnostic: list[str] = field(default_factory=list)
    stop_step: list[int] = field(default_factory=list)
    forces: Tensor | None = None
    energy: Tensor | None = None
    bias_energy: Tensor | None = None
    stress: Tensor | None = None
    walker: Tensor | None = None
    bias_states: list[dict[str, np.ndarray]] = field(default_factory=list)
    exchange_state: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.batch.n_systems
        if self.active is None:
            self.active = torch.ones(n, dtype=torch.bool, device=self.batch.device)
        if self.walker is None:
            self.walker = torch.arange(n, device=self.batch.device)
        if not self.status:
            self.status = [STATUS_OK] * n
            self.diagnostic = [''] * n
            self.stop_step = [-1] * n

    @property
    def positions(self) -> Tensor:
        """(N, 3) Å."""
        return self.batch.positions

    @property
    def n_replicas(self) -> int:
        """Number of replicas B."""
        return self.batch.n_systems

    def stop(self, replica: int, status: str, message: str) -> None:
        """Freeze ``replica`` with a status and a diagnostic message."""
        self.active[replica] = False
        self.status[replica] = status
        self.diagnostic[replica] = message
        self.stop_step[replica] = self.step

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything as numpy arrays (positions, velocities, masses, cell, pbc, numbers, batch, RNG state, status)."""
        b = self.batch
        return {
            'positions': b.positions.detach().cpu().numpy().copy(),
            'numbers': b.numbers.cpu().numpy().copy(),
            'cell': b.cell.detach().cpu().numpy().copy(),
            'pbc': b.pbc.cpu().numpy().copy(),
            'batch': b.batch.cpu().numpy().copy(),
            'velocities': self.velocities.detach().cpu().numpy().copy(),
            'masses': self.masses.detach().cpu().numpy().copy(),
            'rng_state': self.generator.get_state().cpu().numpy().copy(),
            'step': np.array(self.step),
            'active': self.active.cpu().numpy().copy(),
            'status': np.array(self.status),
            'diagnostic': np.array(self.diagnostic),
            'stop_step': np.array(self.stop_step, dtype=np.int64),
            'walker': self.walker.cpu().numpy().copy(),
            **{
                key: getattr(self, key).detach().cpu().numpy().copy()
                for key in ('forces', 'energy', 'bias_energy', 'stress')
                if getattr(self, key) is not None
            },
            'n_bias_states': np.array(len(self.bias_states)),
            **{f'bias{i}__{k}': np.asarray(v) for i, saved in enumerate(self.bias_states) for k, v in saved.items()},
            **{f'exchange__{k}': np.asarray(v) for k, v in self.exchange_state.items()},
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, np.ndarray], device: str | torch.device = 'cpu', dtype: torch.dtype | None = None
    ) -> MDState:
        """Rebuild a state saved by :meth:`state_dict` (dtype: that of the saved positions unless given)."""
        dtype = dtype or torch.from_numpy(np.asarray(state['positions'])).dtype

        def t(key: str, dt=dtype) -> Tensor:
            return torch.as_tensor(np.asarray(state[key]), dtype=dt, device=device)

        batch = AtomsBatch(
            positions=t('positions'),
            numbers=t('numbers', torch.int64),
            cell=t('cell'),
            pbc=t('pbc', torch.bool),
            batch=t('batch', torch.int64),
        )
        generator = torch.Generator(device=device)
        generator.set_state(torch.as_tensor(np.asarray(state['rng_state']), dtype=torch.uint8))
        return cls(
            batch=batch,
            velocities=t('velocities'),
            masses=t('masses'),
            generator=generator,
            step=int(state['step']),
            active=t('active', torch.bool),
            status=[str(s) for s in state['status']],
            diagnostic=[str(s) for s in state['diagnostic']],
            stop_step=[int(s) for s in state['stop_step']],
            walker=t('walker', torch.int64) if 'walker' in state else None,
            forces=t('forces') if 'forces' in state else None,
            energy=t('energy') if 'energy' in state else None,
            bias_energy=t('bias_energy') if 'bias_energy' in state else None,
            stress=t('stress') if 'stress' in state else None,
            bias_states=[_prefixed(state, f'bias{i}__') for i in range(int(state.get('n_bias_states', 0)))],
            exchange_state=_prefixed(state, 'exchange__'),
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` to an ``.npz`` file (no pickle) and return its path."""
        path = Path(path)
        np.savez(path, **self.state_dict())
        return path if path.suffix == '.npz' else path.with_name(path.name + '.npz')

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = 'cpu', dtype: torch.dtype | None = None) -> MDState:
        """Read a state written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls.from_state_dict({k: data[k] for k in data.files}, device=device, dtype=dtype)


def _prefixed(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of ``state`` whose key starts with ``prefix``, without it."""
    return {k[len(prefix) :]: np.asarray(v) for k, v in state.items() if k.startswith(prefix)}
