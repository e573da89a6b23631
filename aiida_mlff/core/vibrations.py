"""Harmonic vibrational frequencies from the potential's autograd Hessian."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms, units

from .atoms import AtomsBatch, neighbor_list
from .contract import PotentialLike

__all__ = ['frequencies', 'frequencies_from_hessian', 'hessian']

#: sqrt(eV / (Å^2 amu)) -> eV (hbar omega)
_HBAR_OMEGA = units._hbar * 1e10 / np.sqrt(units._e * units._amu)


def hessian(pot: PotentialLike, atoms: Atoms) -> np.ndarray:
    """(3N, 3N) Hessian d^2E/dR^2 [eV/Å^2] of the committee-mean energy, by double autograd in float64."""
    batch = AtomsBatch.from_atoms(atoms, dtype=torch.float64, device=pot.device)
    original = pot.dtype
    pot = pot.to(torch.float64) if original != torch.float64 else pot
    try:
        nbrs = neighbor_list(batch, pot.cutoff)
        positions = batch.positions.clone().requires_grad_(True)
        batch.positions = positions
        energy = pot.energy(batch, nbrs).mean(0).sum()
        grad = torch.autograd.grad(energy, positions, create_graph=True)[0].reshape(-1)
        rows = [torch.autograd.grad(grad[k], positions, retain_graph=True)[0].reshape(-1) for k in range(grad.numel())]
        result = torch.stack(rows).detach().cpu().numpy()
    finally:
        if original != torch.float64:
            pot.to(original)
    return 0.5 * (result + result.T)


def _rigid_body_basis(atoms: Atoms) -> np.ndarray:
    """Orthonormal mass-weighted translations and rotations (3N, 6 or 5 for linear molecules)."""
    masses = atoms.get_masses()
    pos = atoms.positions - atoms.get_center_of_mass()
    sqm = np.sqrt(masses)[:, None]
    vectors = []
    for c in range(3):
        t = np.zeros_like(pos)
        t[:, c] = 1.0
        vectors.append((t * sqm).ravel())
    for c in range(3):
        vectors.append((np.cross(np.eye(3)[c], pos) * sqm).ravel())
    u, s, _ = np.linalg.svd(np.array(vectors).T, full_matrices=False)
    return u[:, s > 1e-6 * s.max()]


def frequencies_from_hessian(hess: np.ndarray, atoms: Atoms, project: bool = True) -> np.ndarray:
    """Harmonic frequencies [cm^-1] from a Cartesian Hessian [eV/Å^2].

    Parameters
    ----------
    hess
        (3N, 3N) Hessian.
    atoms
        Structure (masses and geometry).
    project
        For open boundaries: project out translations and rotations and return the 3N-6 (3N-5 for linear
        molecules) non-trivial frequencies. For periodic systems or ``project=False``: all 3N.

    Returns
    -------
    np.ndarray
        Ascending frequencies [cm^-1]; imaginary modes are returned as negative numbers.
    """
    masses = np.repeat(atoms.get_masses(), 3)
    mw = hess / np.sqrt(np.outer(masses, masses))
    if project and not atoms.pbc.any():
        basis = _rigid_body_basis(atoms)
        proj = np.eye(len(masses)) - basis @ basis.T
        eig = np.linalg.eigvalsh(proj @ mw @ proj)
        # drop the eigenvalues of the rigid-body subspace: those closest to zero
        order = np.argsort(np.abs(eig))
        eig = np.sort(eig[order[basis.shape[1] :]])
    else:
        eig = np.linalg.eigvalsh(mw)
    return np.sign(eig) * _HBAR_OMEGA * np.sqrt(np.abs(eig)) / units.invcm


def frequencies(pot: PotentialLike, atoms: Atoms, project: bool = True) -> np.ndarray:
    """Harmonic frequencies [cm^-1] of ``atoms`` from the potential's autograd Hessian (no relaxation is done).

    For molecules (no periodic direction) the 3N-6 (3N-5 if linear) non-trivial frequencies are returned, with
    translations and rotations projected out; for periodic systems, or ``project=False``, all 3N. Imaginary
    frequencies are negative. Evaluate at a minimum of the potential for meaningful harmonic frequencies.
    """
    return frequencies_from_hessian(hessian(pot, atoms), atoms, project=project)
