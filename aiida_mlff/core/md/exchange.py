"""Replica exchange inside one batch: Hamiltonian (umbrella windows) and temperature (parallel tempering).

Every ``every`` steps one set of disjoint replica pairs tries to swap configurations with the Metropolis criterion
for the joint ensemble of replicas i and j (inverse temperatures beta, Hamiltonians H = U + biases):

    ln acc = -beta_i [H_i(x_j) - H_i(x_i)] - beta_j [H_j(x_i) - H_j(x_j)]

The potential U is the same for every replica, so its part is ``(beta_i - beta_j) (U_i - U_j)``; the bias part needs
each bias's energy of a configuration's CVs under another replica's parameters (``bias.energy_of``). The sets of
pairs alternate (even and odd neighbours along a line of windows; four sets on a 2-D grid), so any walker can
travel the whole ladder. An accepted swap moves positions and velocities (rescaled by ``sqrt(T_i / T_j)``) from one
replica to the other with one index gather on the device; the decisions are drawn on the device from the run's
generator, so a run is reproducible and continues exactly from its state.

Units: eV, K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ['ReplicaExchange', 'grid_pairs', 'matchings', 'neighbour_pairs_1d']

KB = 8.617333262e-5  # eV/K


def neighbour_pairs_1d(n: int, closed: bool = False) -> list[tuple[int, int]]:
    """Pairs of neighbouring replicas along a line of ``n`` (ordered by their centres), with ``(n-1, 0)`` if closed."""
    pairs = [(i, i + 1) for i in range(n - 1)]
    if closed and n > 2:
        pairs.append((n - 1, 0))
    return pairs


def grid_pairs(shape: tuple[int, int], closed: tuple[bool, bool] = (False, False)) -> list[tuple[int, int]]:
    """Neighbouring replicas of a 2-D grid (replica ``i * shape[1] + j`` at grid point (i, j)), along both axes."""
    n0, n1 = shape
    pairs = []
    for i in range(n0):
        pairs += [(i * n1 + a, i * n1 + b) for a, b in neighbour_pairs_1d(n1, closed[1])]
    for j in range(n1):
        pairs += [(a * n1 + j, b * n1 + j) for a, b in neighbour_pairs_1d(n0, closed[0])]
    return pairs


def matchings(pairs: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Split pairs into sets in which no replica appears twice (greedy edge colouring, in the given order).

    Neighbours along a line come out as the even and the odd pairs; a closed ring of odd length needs a third set.
    """
    sets: list[list[tuple[int, int]]] = []
    used: list[set[int]] = []
    for a, b in pairs:
        if a == b:
            raise ValueError(f'replica pair ({a}, {b}) swaps a replica with itself')
        for members, chosen in zip(used, sets, strict=True):
            if a not in members and b not in members:
                chosen.append((a, b))
                members.update((a, b))
                break
        else:
            sets.append([(a, b)])
            used.append({a, b})
    return sets


class ReplicaExchange:
    """Swap configurations between replicas of one batch every ``every`` steps.

    Parameters
    ----------
    pairs
        The replica pairs that may swap (e.g. :func:`neighbour_pairs_1d` of the windows sorted by centre, or
        :func:`grid_pairs`); they are split into disjoint sets by :func:`matchings`, tried in turn.
    every
        Steps between attempts.

    Attributes
    ----------
    attempts, accepted
        (P,) int64 counts per pair of ``pairs`` (on the run's device while it runs).
    n_attempts
        Number of exchange steps so far (which set comes next).
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], every: int = 100) -> None:
        if int(every) < 1:
            raise ValueError(f'exchange every must be >= 1 step, got {every}')
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        if not self.pairs:
            raise ValueError('replica exchange needs at least one pair of replicas')
        self.every = int(every)
        index = {p: k for k, p in enumerate(self.pairs)}
        self.sets = [[index[p] for p in chosen] for chosen in matchings(self.pairs)]
        self.attempts = torch.zeros(len(self.pairs), dtype=torch.int64)
        self.accepted = torch.zeros(len(self.pairs), dtype=torch.int64)
        self.n_attempts = 0
        self._device_sets: list[tuple[Tensor, Tensor, Tensor]] | None = None

    # --- checks and state
    def check(self, counts: Tensor, numbers: Tensor, offsets: Tensor) -> None:
        """Raise unless every pair joins replicas of the same atoms in the same order."""
        n = len(counts)
        bad = [p for p in self.pairs if max(p) >= n]
        if bad:
            raise ValueError(f'replica exchange pairs {bad[:3]} name replicas beyond the {n} of the batch')
        for a, b in self.pairs:
            na, nb = int(counts[a]), int(counts[b])
            same = na == nb and bool(
                torch.equal(
                    numbers[int(offsets[a]) : int(offsets[a]) + na], numbers[int(offsets[b]) : int(offsets[b]) + nb]
                )
            )
            if not same:
                raise ValueError(f'replicas {a} and {b} hold different atoms and cannot exchange configurations')

    def state_dict(self) -> dict[str, np.ndarray]:
        """Counts and position in the cycle of sets, as numpy arrays."""
        return {
            'pairs': np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2),
            'attempts': self.attempts.cpu().numpy().copy(),
            'accepted': self.accepted.cpu().numpy().copy(),
            'n_attempts': np.array(self.n_attempts),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Continue the counts of a saved run (its pairs must be these pairs)."""
        if [tuple(p) for p in np.asarray(state['pairs']).tolist()] != self.pairs:
            raise ValueError('the saved replica-exchange state has other pairs than this run')
        self.attempts = torch.tensor(np.array(state['attempts']), dtype=torch.int64)  # copies: the run adds in place
        self.accepted = torch.tensor(np.array(state['accepted']), dtype=torch.int64)
        self.n_attempts = int(state['n_attempts'])

    def reset(self) -> None:
        """Zero the counts and start the cycle of pair sets again (a fresh run)."""
        self.attempts = torch.zeros(len(self.pairs), dtype=torch.int64)
        self.accepted = torch.zeros(len(self.pairs), dtype=torch.int64)
        self.n_attempts = 0

    def acceptance(self) -> np.ndarray:
        """(P,) accepted / attempted per pair (NaN where never attempted)."""
        attempts = self.attempts.cpu().numpy()
        with np.errstate(invalid='ignore', divide='ignore'):
            return np.where(attempts > 0, self.accepted.cpu().numpy() / np.maximum(attempts, 1), np.nan)

    # --- the exchange step
    def _sets_on(self, device) -> list[tuple[Tensor, Tensor, Tensor]]:
        if self._device_sets is None or self._device_sets[0][0].device != torch.device(device):
            pairs = torch.as_tensor(self.pairs, dtype=torch.int64, device=device).reshape(-1, 2)
            self._device_sets = []
            for chosen in self.sets:
                k = torch.as_tensor(chosen, dtype=torch.int64, device=device)
                self._device_sets.append((k, pairs[k, 0], pairs[k, 1]))
        self.attempts = self.attempts.to(device)  # no-op once there; loaded counts arrive on the CPU
        self.accepted = self.accepted.to(device)
        return self._device_sets

    def log_acceptance(
        self, i: Tensor, j: Tensor, beta: Tensor, energy: Tensor, biases: Sequence, cv_columns: Sequence[Tensor]
    ) -> Tensor:
        """Ln of the Metropolis acceptance of swapping the configurations of replicas i and j, (P,).

        Parameters
        ----------
        i, j
            (P,) replica indices.
        beta
            (B,) 1/(k_B T) per replica, 1/eV.
        energy
            (B,) potential energy of each replica's configuration, eV.
        biases
            The run's biases; each needs ``energy_of(values, replicas)``: the bias energy [eV] of CV values
            (P, k) under the parameters of ``replicas`` (P,).
        cv_columns
            Per bias, (B, k) CV values of each replica's configuration.
        """
        log_acc = (beta[i] - beta[j]) * (energy[i] - energy[j])
        for bias, values in zip(biases, cv_columns, strict=True):
            u_ii = bias.energy_of(values[i], i)
            u_jj = bias.energy_of(values[j], j)
            u_ij = bias.energy_of(values[j], i)  # replica i's bias on j's configuration
            u_ji = bias.energy_of(values[i], j)
            log_acc = log_acc - beta[i] * (u_ij - u_ii) - beta[j] * (u_ji - u_jj)
        return log_acc

    def propose(
        self,
        active: Tensor,
        beta: Tensor,
        energy: Tensor,
        biases: Sequence,
        cv_columns: Sequence[Tensor],
        generator: torch.Generator,
    ) -> Tensor:
        """Try the next set of pairs; return the permutation (B,): replica r takes the configuration of ``perm[r]``.

        Pairs with a stopped replica are not tried (and not counted).
        """
        k, i, j = self._sets_on(active.device)[self.n_attempts % len(self.sets)]
        self.n_attempts += 1
        log_acc = self.log_acceptance(i, j, beta, energy, biases, cv_columns)
        both = active[i] & active[j]
        u = torch.rand(len(i), generator=generator, device=active.device, dtype=energy.dtype)
        accept = both & (torch.log(u) < log_acc)
        self.attempts.index_add_(0, k, both.to(torch.int64))
        self.accepted.index_add_(0, k, accept.to(torch.int64))
        perm = torch.arange(len(active), device=active.device)
        perm[i] = torch.where(accept, j, i)
        perm[j] = torch.where(accept, i, j)
        return perm
