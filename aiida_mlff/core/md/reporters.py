"""Frame recording with a stride, and the result of a run as numpy arrays shaped (frames, replicas, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .state import MDState

__all__ = ['FrameRecorder', 'MDResult']


@dataclass
class MDResult:
    """Trajectory and thermodynamics of a batched run; stopped replicas are NaN after their stop.

    Replicas of different sizes are padded: ``positions[:, r, :n_atoms[r]]`` holds replica r and ``atom_mask``
    marks the real atoms (all True when every replica has the same size); :meth:`replica_positions` gives one
    replica unpadded.

    Attributes
    ----------
    time
        (F,) fs.
    step
        (F,) int.
    positions
        (F, R, n_max, 3) Å, unwrapped.
    velocities
        (F, R, n_max, 3) Å/fs, only with ``record_velocities`` (else None); for Langevin the mid-step (post-O)
        velocities.
    atom_mask
        (R, n_max) bool.
    numbers
        (R, n_max) int atomic numbers (0 for padding).
    potential_energy, bias_energy, kinetic_energy, total_energy
        (F, R) eV; total = potential + bias + kinetic.
    temperature
        (F, R) K, ``2 E_kin / (n_dof k_B)`` with n_dof = 3n - 3 (NVE, zero momentum) or 3n (Langevin).
    colvars
        (F, R, n_cv) in CV units, the biased CVs first, then the extra ones; ``colvar_names`` names them.
    max_force_deviation, energy_std
        (F, R) eV/Å and eV, committee spread (zeros for a single model).
    flagged
        (F, R) bool, the frame on which a replica exceeded the force-deviation limit (it is kept).
    status, diagnostic, stop_step
        Per replica: ``'ok'`` / ``'deviation_exceeded'`` / ``'blown_up'``, a message, the step it stopped at (-1).
    final_state
        :class:`MDState` to continue from (``simulate(..., state=result.final_state)``) or to save.
    walker
        (F, R) int: which walker (starting replica) replica r held at each frame (replica exchange moves them;
        without it, ``walker[:, r] == r``).
    exchange
        Replica exchange: ``pairs`` (P, 2), ``attempts``, ``accepted`` and ``acceptance`` (P,), ``every``; None
        without exchange.
    n_neighbor_builds
        How often the Verlet list was built.
    wall_time
        s.
    """

    time: np.ndarray
    step: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray | None
    atom_mask: np.ndarray
    numbers: np.ndarray
    potential_energy: np.ndarray
    bias_energy: np.ndarray
    kinetic_energy: np.ndarray
    total_energy: np.ndarray
    temperature: np.ndarray
    colvars: np.ndarray
    colvar_names: list[str]
    max_force_deviation: np.ndarray
    energy_std: np.ndarray
    flagged: np.ndarray
    status: list[str]
    diagnostic: list[str]
    stop_step: np.ndarray
    final_state: MDState | None = None
    walker: np.ndarray | None = None
    exchange: dict | None = None
    n_neighbor_builds: int = 0
    wall_time: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of frames F."""
        return len(self.time)

    @property
    def n_replicas(self) -> int:
        """Number of replicas R."""
        return self.atom_mask.shape[0]

    def replica_positions(self, replica: int) -> np.ndarray:
        """(F, n_atoms, 3) Å positions of one replica without padding."""
        return self.positions[:, replica, self.atom_mask[replica]]


class FrameRecorder:
    """Collects frames on the host as numpy arrays.

    Parameters
    ----------
    counts
        (R,) atoms per replica.
    numbers
        (N,) atomic numbers, flattened.
    n_cv
        Number of collective variables.
    record_velocities
        Also keep velocities.
    """

    def __init__(self, counts: np.ndarray, numbers: np.ndarray, n_cv: int, record_velocities: bool = False) -> None:
        self.counts = np.asarray(counts)
        self.n_replicas = len(self.counts)
        self.n_max = int(self.counts.max())
        self.replica = np.repeat(np.arange(self.n_replicas), self.counts)
        offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.slot = np.arange(len(self.replica)) - offsets[self.replica]
        self.atom_mask = np.zeros((self.n_replicas, self.n_max), dtype=bool)
        self.atom_mask[self.replica, self.slot] = True
        self.numbers = np.zeros((self.n_replicas, self.n_max), dtype=np.int64)
        self.numbers[self.replica, self.slot] = numbers
        self.n_cv = n_cv
        self.record_velocities = record_velocities
        self.frames: dict[str, list[np.ndarray]] = {
            k: []
            for k in (
                'time',
                'step',
                'positions',
                'velocities',
                'potential_energy',
                'bias_energy',
                'kinetic_energy',
                'temperature',
                'colvars',
                'max_force_deviation',
                'energy_std',
                'flagged',
                'valid',
                'walker',
            )
        }

    def record(self, step: int, time: float, valid: torch.Tensor, flagged: torch.Tensor, **values: torch.Tensor):
        """Store one frame; ``values`` are tensors: positions (N, 3), velocities (N, 3) and (R,) or (R, n_cv) ones."""
        f = self.frames
        f['time'].append(np.array(time))
        f['step'].append(np.array(step))
        f['valid'].append(valid.cpu().numpy().copy())
        f['flagged'].append(flagged.cpu().numpy().copy())
        for key, value in values.items():
            if key == 'velocities' and not self.record_velocities:
                continue
            f[key].append(value.detach().cpu().double().numpy().copy())

    def _pad(self, flat: list[np.ndarray]) -> np.ndarray:
        out = np.full((len(flat), self.n_replicas, self.n_max, 3), np.nan)
        if flat:
            out[:, self.replica, self.slot] = np.stack(flat)
        return out

    def result(self, state: MDState, colvar_names: list[str], **extra) -> MDResult:
        """Assemble an :class:`MDResult`; replicas not valid in a frame become NaN there."""
        f = self.frames
        n_frames = len(f['time'])
        r = self.n_replicas
        valid = np.stack(f['valid']) if n_frames else np.zeros((0, r), dtype=bool)

        def stack(key: str, shape: tuple) -> np.ndarray:
            arr = np.stack(f[key]) if n_frames else np.zeros((0, *shape))
            arr = arr.astype(float)
            arr[~valid] = np.nan
            return arr

        positions = self._pad(f['positions'])
        positions[~valid] = np.nan
        velocities = None
        if self.record_velocities:
            velocities = self._pad(f['velocities'])
            velocities[~valid] = np.nan
        pot = stack('potential_energy', (r,))
        bias = stack('bias_energy', (r,))
        kin = stack('kinetic_energy', (r,))
        return MDResult(
            time=np.array(f['time'], dtype=float),
            step=np.array(f['step'], dtype=np.int64),
            positions=positions,
            velocities=velocities,
            atom_mask=self.atom_mask,
            numbers=self.numbers,
            potential_energy=pot,
            bias_energy=bias,
            kinetic_energy=kin,
            total_energy=pot + bias + kin,
            temperature=stack('temperature', (r,)),
            colvars=stack('colvars', (r, self.n_cv)).reshape(n_frames, r, self.n_cv),
            colvar_names=colvar_names,
            max_force_deviation=stack('max_force_deviation', (r,)),
            energy_std=stack('energy_std', (r,)),
            flagged=np.stack(f['flagged']) if n_frames else np.zeros((0, r), dtype=bool),
            status=list(state.status),
            diagnostic=list(state.diagnostic),
            stop_step=np.array(state.stop_step, dtype=np.int64),
            final_state=state,
            walker=np.stack(f['walker']).astype(np.int64) if n_frames else np.zeros((0, r), dtype=np.int64),
            **extra,
        )
