"""Force-matching training of a ``Potential`` (all committee members at once).

Loss per mini-batch of B structures::

    w_E * mean_s ((E_pred_s - E_ref_s) / n_atoms_s)^2  +  w_F * mean_atoms |F_pred - F_ref|^2
      +  w_S * (1/B) sum_{s with stress} (1/9) sum_ab (V_s (sigma_pred_s - sigma_ref_s)_ab / n_atoms_s)^2

in eV^2/atom^2, eV^2/Å^2 and eV^2/atom^2 (the last is the error of the virial per atom, V sigma / n_atoms [eV/atom],
comparable with the per-atom energy error), summed over committee members (members have independent weights).
Structures without a stress label (molecules, NaN stress) add nothing to the stress term; with ``stress_weight`` 0
or no stress in the data the stress is not even computed, and training is that of energies and forces alone.

The per-element reference energies start from a least-squares fit of the energies on composition; feature
normalisation and the energy scale come from training-set statistics. AdamW, ReduceLROnPlateau on the validation
loss, early stopping with best-weights restore, seeded shuffling, and a checkpoint that an interrupted run resumes
from to the same result.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from ase.units import GPa
from torch import Tensor

from .atoms import AtomsBatch, Neighbors, neighbor_list

__all__ = ['CALL_DEFAULTS', 'JOB_ONLY', 'evaluate_metrics', 'split_indices', 'train']

#: arguments of :func:`train` that are not options of a training task (:data:`~aiida_mlff.core.options.TRAIN`)
CALL_DEFAULTS: dict = {
    'checkpoint': None,  # path; resumed from when it exists
    'stop_after': None,  # stop this call after this many epochs (as if interrupted), leaving a checkpoint
    'precompute': True,  # store descriptor Jacobians of the fixed training geometries (exact, faster); a number:
    # the largest total size (floats) to store instead of JACOBIAN_BUDGET
    'verbose': False,
    'replay': None,  # labelled frames of the parent's data: errors before and after, rehearsal (replay_fraction)
}
#: options of the training task that belong to the job (model, device, dtype), not to :func:`train`
JOB_ONLY = ('model', 'device', 'dtype')
#: (rows, columns) of the Voigt components xx, yy, zz, yz, xz, xy (ASE's order) of a 3 x 3 tensor
VOIGT = ((0, 1, 2, 1, 0, 0), (0, 1, 2, 2, 2, 1))


@dataclass
class _Frame:
    positions: Tensor
    numbers: Tensor
    cell: Tensor
    pbc: Tensor
    nbrs: Neighbors
    energy: float
    forces: Tensor
    features: Tensor | None = None  # (n, F) raw descriptor
    jacobian: Tensor | None = None  # (P, F, 3) d features[i_p] / d vector_p
    stress: Tensor | None = None  # (3, 3) eV/Å^3 reference stress (ASE sign), None when the frame has none
    # False for rehearsed frames of a parent's data: their energies may be on another reference, so only their
    # forces (and stress) enter the loss
    energy_in_loss: bool = True


#: largest total size (floats) of precomputed descriptor Jacobians; beyond it training differentiates the descriptor
JACOBIAN_BUDGET = 50_000_000


def _precompute(pot, items: Sequence[_Frame], chunk: int = 64, budget: float = JACOBIAN_BUDGET) -> None:
    """Store raw features and their per-pair Jacobians in ``items`` (fixed geometries: exact, and much faster).

    A feature of atom i depends only on the pair vectors centred on i, so ``dE/dvector_p = sum_f dE/dG_{i_p f}
    J_pf`` reproduces the forces of the full autograd path exactly. Nothing is stored when the Jacobians would hold
    more than ``budget`` floats.
    """
    from .atoms import pair_vectors

    n_feat = pot.descriptor.n_features
    if sum(f.nbrs.n_pairs for f in items) * n_feat * 3 > budget:
        return
    for start in range(0, len(items), chunk):
        group = items[start : start + chunk]
        batch, nbrs, _, _ = _collate(group)
        species = pot.descriptor.element_index(batch.numbers)
        vectors = pair_vectors(batch, nbrs).detach().requires_grad_(True)
        with torch.enable_grad():
            raw = pot.descriptor(vectors, nbrs.i, nbrs.j, species)
            columns = [
                torch.autograd.grad(raw[:, f].sum(), vectors, retain_graph=f < n_feat - 1)[0] for f in range(n_feat)
            ]
        jac = torch.stack(columns, dim=1).detach()  # (P, F, 3)
        raw = raw.detach()
        a0 = p0 = 0
        for item in group:
            n, p = len(item.numbers), item.nbrs.n_pairs
            item.features, item.jacobian = raw[a0 : a0 + n], jac[p0 : p0 + p]
            a0, p0 = a0 + n, p0 + p


def _reference_stress(atoms: Atoms) -> np.ndarray | None:
    """(3, 3) stress label [eV/Å^3] of a frame, or None: no calculator stress, a NaN stress or a non-periodic cell.

    Accepts ASE's Voigt order (xx, yy, zz, yz, xz, xy) or a full 3 x 3 tensor in ``atoms.calc.results['stress']``.
    """
    results = getattr(atoms.calc, 'results', None) or {}
    stress = results.get('stress')
    if stress is None:
        return None
    stress = np.asarray(stress, dtype=float)
    stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    if not np.isfinite(stress).all() or not all(atoms.pbc) or abs(atoms.cell.volume) <= 0:
        return None
    return stress


def _prepare(frames: Sequence[Atoms], cutoff: float, dtype: torch.dtype, device: torch.device) -> list[_Frame]:
    items = []
    for index, atoms in enumerate(frames):
        try:
            energy = float(atoms.get_potential_energy())
            forces = np.asarray(atoms.get_forces(), dtype=float)
        except Exception as error:
            raise ValueError(f'frame {index} carries no energy and forces: {error}') from error
        batch = AtomsBatch.from_atoms(atoms, dtype=dtype, device=device)
        stress = _reference_stress(atoms)
        items.append(
            _Frame(
                positions=batch.positions,
                numbers=batch.numbers,
                cell=batch.cell[0],
                pbc=batch.pbc[0],
                nbrs=neighbor_list(batch, cutoff),
                energy=energy,
                forces=torch.as_tensor(forces, dtype=dtype, device=device),
                stress=None if stress is None else torch.as_tensor(stress, dtype=dtype, device=device),
            )
        )
    return items


def _collate(items: Sequence[_Frame]) -> tuple[AtomsBatch, Neighbors, Tensor, Tensor]:
    """Concatenate frames into a batch, its neighbour list, reference energies (B,) [eV] and forces (N, 3)."""
    counts = [len(f.numbers) for f in items]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    device = items[0].positions.device
    batch = AtomsBatch(
        positions=torch.cat([f.positions for f in items]),
        numbers=torch.cat([f.numbers for f in items]),
        cell=torch.stack([f.cell for f in items]),
        pbc=torch.stack([f.pbc for f in items]),
        batch=torch.repeat_interleave(torch.arange(len(items), device=device), torch.tensor(counts, device=device)),
    )
    nbrs = Neighbors(
        i=torch.cat([f.nbrs.i + int(o) for f, o in zip(items, offsets, strict=False)]),
        j=torch.cat([f.nbrs.j + int(o) for f, o in zip(items, offsets, strict=False)]),
        shifts=torch.cat([f.nbrs.shifts for f in items]),
    )
    energies = torch.tensor([f.energy for f in items], dtype=batch.dtype, device=device)
    return batch, nbrs, energies, torch.cat([f.forces for f in items])


def split_indices(n_frames: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n_frames)`` into (train, validation) index arrays."""
    order = np.random.default_rng(seed).permutation(n_frames)
    n_val = round(validation_fraction * n_frames) if validation_fraction > 0 else 0
    if n_frames > 1:
        n_val = min(max(n_val, 1 if validation_fraction > 0 else 0), n_frames - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def composition_matrix(elements: Sequence[str], numbers, system, n_systems: int) -> np.ndarray:
    """(n_systems, n_elements) atom counts: ``numbers`` (N,) atomic numbers, ``system`` (N,) their system index."""
    from ase.data import atomic_numbers

    index = {atomic_numbers[s]: e for e, s in enumerate(elements)}
    columns = [index[int(z)] for z in np.asarray(numbers).tolist()]
    composition = np.zeros((n_systems, len(elements)))
    np.add.at(composition, (np.asarray(system), columns), 1.0)
    return composition


def _composition_fit(elements: Sequence[str], items: Sequence[_Frame]) -> tuple[np.ndarray, float]:
    """Per-element reference energies [eV] by least squares on composition, and an energy scale [eV].

    The scale is the larger of the spread of the per-atom residual energies and half the force RMS x 1 Å.
    """
    numbers = np.concatenate([item.numbers.cpu().numpy() for item in items])
    system = np.repeat(np.arange(len(items)), [len(item.numbers) for item in items])
    composition = composition_matrix(elements, numbers, system, len(items))
    energies = np.array([f.energy for f in items])
    offsets, *_ = np.linalg.lstsq(composition, energies, rcond=None)
    residual = (energies - composition @ offsets) / composition.sum(1)
    force_rms = float(torch.cat([f.forces for f in items]).double().pow(2).mean().sqrt())
    return offsets, max(float(residual.std()), 0.5 * force_rms, 1e-2)


@torch.no_grad()
def initialise_statistics(pot, items: Sequence[_Frame]) -> None:
    """Least-squares reference energies on composition, per-element feature normalisation and energy scale.

    Architectures without our descriptor (e.g. MACE) get the reference energies and, through their
    ``set_energy_scale(scale)`` when they have one, the energy scale [eV].
    """
    offsets, scale = _composition_fit(pot.elements, items)
    if not hasattr(pot, 'descriptor'):
        pot.reference_energies.copy_(torch.as_tensor(offsets, dtype=pot.dtype).expand_as(pot.reference_energies))
        if hasattr(pot, 'set_energy_scale'):
            pot.set_energy_scale(scale)
        return
    from .atoms import pair_vectors

    n_el = len(pot.elements)
    feats = [[] for _ in range(n_el)]
    for start in range(0, len(items), 64):  # the descriptor of 64 frames at a time
        batch, nbrs, _, _ = _collate(items[start : start + 64])
        species = pot.descriptor.element_index(batch.numbers)
        raw = pot.descriptor(pair_vectors(batch, nbrs), nbrs.i, nbrs.j, species)
        x = pot.transform(raw, species).double()
        for e in range(n_el):
            feats[e].append(x[species == e])
    mean = torch.zeros(n_el, pot.descriptor.n_features, dtype=torch.float64)
    std = torch.ones_like(mean)
    for e in range(n_el):
        if feats[e]:
            x = torch.cat(feats[e])
            if x.shape[0] > 0:
                mean[e] = x.mean(0)
            if x.shape[0] > 1:
                s = x.std(0)
                std[e] = torch.where(s > 1e-8 * (1.0 + mean[e].abs()), s, torch.ones_like(s))
    pot.feature_mean.copy_(mean.to(pot.dtype))
    pot.feature_std.copy_(std.to(pot.dtype))
    pot.energy_scale.fill_(scale)
    pot.reference_energies.copy_(torch.as_tensor(offsets, dtype=pot.dtype).expand_as(pot.reference_energies))


def _start(pot, items: Sequence[_Frame], statistics: str) -> str:
    """Fit the statistics of a new potential, or keep those of a trained one and shift its energy offsets.

    ``statistics``: ``'refit'``, ``'keep'`` or ``'auto'`` (keep for a potential that holds training metrics).
    Returns what was done (``'refit'`` or ``'keep'``).
    """
    from .finetune import is_trained, shift_reference_energies

    mode = statistics if statistics != 'auto' else ('keep' if is_trained(pot) else 'refit')
    if mode == 'refit':
        initialise_statistics(pot, items)
    else:
        chunks = [items[k : k + 64] for k in range(0, len(items), 64)]
        batches = [_collate(chunk)[:3] for chunk in chunks]
        shift_reference_energies(pot, batches, pot.elements)
    return mode


def _pair_virial(vectors: Tensor, pair: Tensor, system: Tensor, n_systems: int) -> Tensor:
    """(B, 3, 3) symmetrised virial ``sum_p vector_p (x) dE/dvector_p`` [eV] of pairs (P, 3) [Å] and (P, 3) [eV/Å]."""
    virial = pair.new_zeros(n_systems, 3, 3).index_add(0, system, vectors.unsqueeze(2) * pair.unsqueeze(1))
    return 0.5 * (virial + virial.transpose(1, 2))


def _precomputed_energies_forces(
    pot, chunk: Sequence[_Frame], batch: AtomsBatch, nbrs: Neighbors, virial: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(M, B) energies, (M, N, 3) forces and, with ``virial``, (M, B, 3, 3) virials [eV] (else None).

    From stored features and Jacobians; everything is differentiable in the weights. The virial is
    ``dE/d(strain)``, symmetrised: the model stress times the cell volume.
    """
    from .atoms import pair_vectors

    vectors = pair_vectors(batch, nbrs).detach() if virial else None
    raw = torch.cat([f.features for f in chunk]).requires_grad_(True)
    jac = torch.cat([f.jacobian for f in chunk])
    species = pot.descriptor.element_index(batch.numbers)
    atomic = pot.atomic_energies(pot.normalise(pot.transform(raw, species), species), species)
    energies = atomic.new_zeros(atomic.shape[0], batch.n_systems).index_add(1, batch.batch, atomic)
    totals = energies.sum(1)
    forces, virials = [], []
    for m in range(energies.shape[0]):
        grad = torch.autograd.grad(totals[m], raw, create_graph=True)[0]  # (N, F)
        pair = torch.einsum('pf,pfc->pc', grad.index_select(0, nbrs.i), jac)  # dE/d vector_p
        f = pair.new_zeros(len(species), 3).index_add(0, nbrs.i, pair).index_add(0, nbrs.j, -pair)
        forces.append(f)
        if virial:
            virials.append(_pair_virial(vectors, pair, batch.batch.index_select(0, nbrs.i), batch.n_systems))
    return energies, torch.stack(forces), torch.stack(virials) if virial else None


def _autograd_energies_forces(
    pot, batch: AtomsBatch, nbrs: Neighbors, virial: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """As :func:`_precomputed_energies_forces`, through ``pot.evaluate(..., create_graph=True)``.

    The virial is the derivative of every member's energy with respect to a homogeneous strain ``eps`` (B, 3, 3)
    applied at zero to positions and cell (``r -> r (1 + eps)``), symmetrised.
    """
    strain = None
    if virial:
        strain = batch.positions.new_zeros(batch.n_systems, 3, 3, requires_grad=True)
        deform = strain.index_select(0, batch.batch)
        positions = batch.positions + torch.einsum('na,nab->nb', batch.positions, deform)
        batch = dataclasses.replace(batch, positions=positions, cell=batch.cell + batch.cell @ strain)
    out = pot.evaluate(batch, nbrs, forces=True, create_graph=True)
    energies = out['energies']
    forces = out['member_forces'] if 'member_forces' in out else out['forces'].unsqueeze(0)
    if not virial:
        return energies, forces, None
    grads = [torch.autograd.grad(energies[m].sum(), strain, create_graph=True)[0] for m in range(energies.shape[0])]
    virials = torch.stack(grads)
    return energies, forces, 0.5 * (virials + virials.transpose(2, 3))


def _volumes(batch: AtomsBatch) -> Tensor:
    """(B,) cell volumes [Å^3], 1 where a system has no cell (its stress is never used)."""
    volume = torch.linalg.det(batch.cell).abs()
    return torch.where(volume > 0, volume, torch.ones_like(volume))


def _predict(
    pot, chunk: Sequence[_Frame], batch: AtomsBatch, nbrs: Neighbors, stress: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(M, B) energies [eV], (M, N, 3) forces [eV/Å] and, with ``stress``, (M, B, 3, 3) stresses [eV/Å^3].

    Every member's prediction, differentiable in the weights (the stress as ``pot.evaluate(..., stress=True)``
    gives it, ASE's sign: ``(1/V) dE/d(strain)``); stored descriptor Jacobians are used when the frames have them.
    """
    if all(item.features is not None for item in chunk):
        energies, forces, virials = _precomputed_energies_forces(pot, chunk, batch, nbrs, virial=stress)
    else:
        energies, forces, virials = _autograd_energies_forces(pot, batch, nbrs, virial=stress)
    if virials is None:
        return energies, forces, None
    return energies, forces, virials / _volumes(batch).view(1, -1, 1, 1)


def _polish(
    pot, train_items, monitor, w_e: float, w_f: float, opts: dict, state: dict, start_time: float, w_s: float = 0.0
):
    """Full-batch L-BFGS from the best AdamW weights; keeps the weights with the lowest validation loss.

    Returns those weights and whether ``max_time`` (a walltime) cut the polishing short.
    """
    optimizer = torch.optim.LBFGS(pot.parameters(), lr=1.0, max_iter=20, history_size=50, line_search_fn='strong_wolfe')

    def full_loss(items) -> Tensor:
        return sum(
            _loss(pot, items[b : b + 256], w_e, w_f, w_s) * len(items[b : b + 256]) for b in range(0, len(items), 256)
        ) / len(items)

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = full_loss(train_items)
        loss.backward()
        return loss

    best_loss, best = float(full_loss(monitor).detach()), copy.deepcopy(pot.state_dict())
    interrupted = False
    for step in range(opts['polish_steps']):
        elapsed = time.perf_counter() - start_time
        if opts['max_time'] is not None and elapsed > opts['max_time']:
            interrupted = True
            break
        if opts['time_budget'] is not None and elapsed > opts['time_budget']:
            break
        train_loss = float(optimizer.step(closure).detach())
        val_loss = float(full_loss(monitor).detach())
        if not math.isfinite(val_loss):
            break
        if val_loss < best_loss:
            best_loss, best = val_loss, copy.deepcopy(pot.state_dict())
        state['history'].append(
            {
                'epoch': state['epoch'],
                'polish_step': step + 1,
                'train_loss': train_loss,
                'validation_loss': val_loss,
                'learning_rate': 0.0,
                'time_s': time.perf_counter() - start_time,
            }
        )
    pot.load_state_dict(best)
    return best, interrupted


def _loss(pot, chunk: Sequence[_Frame], w_e: float, w_f: float, w_s: float = 0.0) -> Tensor:
    """The loss of a mini-batch (see the module docstring), summed over committee members."""
    batch, nbrs, e_ref, f_ref = _collate(chunk)
    labelled = [k for k, f in enumerate(chunk) if f.stress is not None] if w_s > 0 else []
    energies, forces, stress = _predict(pot, chunk, batch, nbrs, stress=bool(labelled))
    n_atoms = batch.counts.to(batch.dtype)
    e_err = ((energies - e_ref) / n_atoms) ** 2  # (M, B)
    if not all(item.energy_in_loss for item in chunk):
        e_err = e_err * torch.tensor([item.energy_in_loss for item in chunk], dtype=e_err.dtype, device=e_err.device)
    f_err = ((forces - f_ref) ** 2).sum(-1)  # (M, N)
    loss = (w_e * e_err.mean(1) + w_f * f_err.mean(1)).sum()
    if labelled:
        loss = loss + w_s * _virial_error(stress, chunk, labelled, batch).sum()
    return loss


def _virial_error(stress: Tensor, chunk: Sequence[_Frame], labelled: list[int], batch: AtomsBatch) -> Tensor:
    """(M,) squared error of the virial per atom [eV^2/atom^2] of the frames with a stress label.

    Mean over the nine components, summed over the labelled frames and divided by all frames of the chunk (so that a
    full-batch loss does not depend on the chunking).
    """
    index = torch.tensor(labelled, device=stress.device)
    ref = torch.stack([chunk[k].stress for k in labelled])  # (S, 3, 3) eV/Å^3
    per_atom = (_volumes(batch) / batch.counts.to(batch.dtype)).index_select(0, index)  # Å^3/atom
    err = ((stress.index_select(1, index) - ref) * per_atom.view(1, -1, 1, 1)) ** 2  # (M, S, 3, 3)
    return err.mean((2, 3)).sum(1) / len(chunk)


def evaluate_metrics(pot, frames: Sequence[Atoms] | Sequence[_Frame], batch_size: int = 64) -> dict:
    """Committee-mean errors on labelled frames.

    Returns
    -------
    dict
        ``energy_rmse_meV_per_atom``, ``energy_mae_meV_per_atom``, ``force_mae_meV_per_A``,
        ``force_rmse_meV_per_A`` (over force components), ``per_element`` force MAE/RMSE and ``n_structures``.
        When some frames carry a stress label, also ``stress_mae_eV_per_A3``, ``stress_rmse_eV_per_A3``,
        ``stress_mae_GPa``, ``stress_rmse_GPa`` (over the six Voigt components of those frames only) and
        ``n_structures_with_stress``; without stress labels these keys are absent.
    """
    items = frames if frames and isinstance(frames[0], _Frame) else _prepare(frames, pot.cutoff, pot.dtype, pot.device)
    e_err, f_err, s_err, numbers = [], [], [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch, nbrs, e_ref, f_ref = _collate(chunk)
        labelled = [k for k, f in enumerate(chunk) if f.stress is not None]
        out = pot.evaluate(batch, nbrs, stress=bool(labelled))
        e_err.append(((out['energy'] - e_ref) / batch.counts).double().cpu())
        f_err.append((out['forces'] - f_ref).double().cpu())
        numbers.append(batch.numbers.cpu())
        if labelled:
            ref = torch.stack([chunk[k].stress for k in labelled])
            s_err.append((out['stress'][labelled] - ref)[:, VOIGT[0], VOIGT[1]].double().cpu())
    e_err, f_err, numbers = torch.cat(e_err), torch.cat(f_err), torch.cat(numbers)
    metrics = {
        'n_structures': len(items),
        'energy_rmse_meV_per_atom': 1000 * float(e_err.pow(2).mean().sqrt()),
        'energy_mae_meV_per_atom': 1000 * float(e_err.abs().mean()),
        'force_mae_meV_per_A': 1000 * float(f_err.abs().mean()),
        'force_rmse_meV_per_A': 1000 * float(f_err.pow(2).mean().sqrt()),
        'per_element': {},
    }
    from ase.data import chemical_symbols

    for z in sorted(set(numbers.tolist())):
        sel = f_err[numbers == z]
        metrics['per_element'][chemical_symbols[z]] = {
            'force_mae_meV_per_A': 1000 * float(sel.abs().mean()),
            'force_rmse_meV_per_A': 1000 * float(sel.pow(2).mean().sqrt()),
        }
    if s_err:
        metrics.update(_stress_metrics(torch.cat(s_err)))
    return metrics


def _stress_metrics(errors: Tensor) -> dict:
    """MAE and RMSE [eV/Å^3 and GPa] of (S, 6) Voigt stress errors [eV/Å^3], and S."""
    mae, rmse = float(errors.abs().mean()), float(errors.pow(2).mean().sqrt())
    return {
        'n_structures_with_stress': int(errors.shape[0]),
        'stress_mae_eV_per_A3': mae,
        'stress_rmse_eV_per_A3': rmse,
        'stress_mae_GPa': mae / GPa,
        'stress_rmse_GPa': rmse / GPa,
    }


def train(pot, frames: Sequence[Atoms], **options) -> dict:
    """Train ``pot`` in place on labelled frames and return a report.

    Parameters
    ----------
    pot
        A ``Potential`` (every committee member is trained, from its own initial weights).
    frames
        ``ase.Atoms`` with energy [eV] and forces [eV/Å] (e.g. a ``SinglePointCalculator``), and optionally a
        stress [eV/Å^3, ASE's sign and Voigt order] in the calculator results: periodic frames with a finite one
        enter the stress term of the loss (``stress_weight``) and the stress metrics.
    **options
        The options of :data:`aiida_mlff.core.options.TRAIN` (defaults there) except ``model``, ``device`` and
        ``dtype``: ``epochs``, ``batch_size``, ``learning_rate``, ``weight_decay``, ``energy_weight``,
        ``forces_weight``, ``stress_weight``, ``validation_fraction``, ``patience``, ``lr_patience``, ``lr_factor``,
        ``min_learning_rate``, ``max_time`` [s, a walltime: the run stops unfinished with a checkpoint],
        ``time_budget`` [s, the whole training; a finished run], ``seed``, ``checkpoint`` (path, resumed from if
        present), ``checkpoint_every``, ``stop_after``, ``polish_steps``, ``precision`` (``'float64'``: optimise in
        float64 and return the model in its own dtype; ``'model'``: the model's dtype), ``uncertainty``
        (``'committee'``, ``'last_layer'`` or ``'both'``, see :func:`aiida_mlff.core.uncertainty.fit_uncertainty`),
        ``precompute`` (True: store the descriptor Jacobians when they fit in ``JACOBIAN_BUDGET`` floats; a number:
        that budget instead; False: never), ``verbose``.

    Returns
    -------
    dict
        ``train`` and ``validation`` metrics (see :func:`evaluate_metrics`), ``learning_curve`` (per epoch:
        ``epoch``, ``train_loss``, ``validation_loss``, ``learning_rate``, ``time_s``), ``best_epoch``,
        ``epochs_run``, ``finished`` (False when stopped by ``max_time``/``stop_after``), ``stopped_early``,
        ``options``, ``calibration`` (the uncertainty calibrations on the validation split). The metrics are also
        stored in ``pot.metadata``, with the uncertainty entries (``calibration``, and for a last-layer uncertainty
        ``last_layer`` and ``calibration_last_layer``).
    """
    from .options import TRAIN

    if hasattr(pot, 'baseline') and hasattr(pot, 'correction'):
        return _train_delta(pot, frames, options)
    known = (set(TRAIN.keys()) - set(JOB_ONLY)) | set(CALL_DEFAULTS)
    unknown = set(options) - known
    if unknown:
        raise TypeError(f'unknown training options {sorted(unknown)}; known: {sorted(known)}')
    given = {k: v for k, v in options.items() if k not in CALL_DEFAULTS}
    checked = TRAIN.validate(given, 'training')
    opts = {**{k: v for k, v in checked.items() if k not in JOB_ONLY}, **CALL_DEFAULTS, **options}
    model_dtype = pot.dtype
    # L-BFGS and the late small AdamW steps stall in float32 (loss differences drown in rounding): optimise in float64
    # and hand back a model of the caller's dtype (metrics are those of the model handed back)
    replay = list(opts['replay'] or [])
    before = evaluate_metrics(pot, replay) if replay else None
    if opts['precision'] == 'float64':
        pot.double()
    try:
        report = _train(pot, frames, opts, time.perf_counter(), model_dtype)
    finally:
        pot.to(model_dtype)
    if replay:
        report['replay'] = {
            'before': before,
            'after': evaluate_metrics(pot, replay),
            'fraction': opts['replay_fraction'],
            'per_epoch': report['replay_per_epoch'],
        }
        pot.metadata['replay'] = report['replay']
    return report


def _train_delta(pot, frames: Sequence[Atoms], options: dict) -> dict:
    """Train the correction of a ``baseline + correction`` potential on ``label - baseline``.

    The errors of the correction on the differences are those of the whole potential on the labels (the baseline
    is exact on its own part), so the report and the metrics need no translation.
    """
    from .baselines import subtract_baseline

    options = dict(options)
    if options.get('replay'):
        options['replay'] = subtract_baseline(options['replay'], pot.baseline)
    return train(pot.correction, subtract_baseline(frames, pot.baseline), **options)


def _train(pot, frames: Sequence[Atoms], opts: dict, start_time: float, model_dtype: torch.dtype) -> dict:
    """The body of :func:`train` (``pot`` already in the optimisation precision)."""
    if opts['uncertainty'] != 'committee' and not hasattr(pot, 'last_hidden'):
        raise ValueError(
            f'uncertainty {opts["uncertainty"]!r} needs a network with a last layer, not {type(pot).__name__}'
        )
    torch.manual_seed(opts['seed'])
    items = _prepare(frames, pot.cutoff, pot.dtype, pot.device)
    train_idx, val_idx = split_indices(len(items), opts['validation_fraction'], opts['seed'])
    train_items = [items[k] for k in train_idx]
    val_items = [items[k] for k in val_idx]
    if not train_items:
        raise ValueError('no training frames')

    optimizer = torch.optim.AdamW(pot.parameters(), lr=opts['learning_rate'], weight_decay=opts['weight_decay'])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=opts['lr_factor'], patience=opts['lr_patience'], min_lr=opts['min_learning_rate']
    )
    generator = torch.Generator().manual_seed(opts['seed'])
    state = {'epoch': 0, 'best_loss': math.inf, 'best_epoch': 0, 'bad_epochs': 0, 'history': [], 'elapsed': 0.0}
    best_weights = None
    checkpoint = Path(opts['checkpoint']) if opts['checkpoint'] else None
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=pot.device, weights_only=True)
        pot.load_state_dict(saved['model'])
        optimizer.load_state_dict(saved['optimizer'])
        scheduler.load_state_dict(saved['scheduler'])
        generator.set_state(saved['generator'])
        best_weights = saved['best_weights']
        state = saved['state']
    else:
        state['statistics'] = _start(pot, train_items, opts['statistics'])
    replay_items, n_replay = _rehearsal(pot, opts, len(train_items))
    if opts['precompute'] and hasattr(pot, 'descriptor'):  # stored descriptor Jacobians: our BP networks only
        budget = JACOBIAN_BUDGET if opts['precompute'] is True else float(opts['precompute'])
        _precompute(pot, train_items + replay_items, budget=budget)  # one set: they share mini-batches
        _precompute(pot, val_items, budget=budget)

    def save_checkpoint() -> None:
        if checkpoint is None:
            return
        payload = {
            'model': pot.state_dict(),
            'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(),
            'generator': generator.get_state(),
            'best_weights': best_weights,
            'state': state,
        }
        tmp = checkpoint.with_name(checkpoint.name + '.tmp')
        torch.save(payload, tmp)
        tmp.replace(checkpoint)

    monitor = val_items or train_items
    w_e, w_f, w_s = opts['energy_weight'], opts['forces_weight'], opts['stress_weight']
    finished, stopped_early, epochs_this_call = True, False, 0
    budget = opts['time_budget']
    adam_time = budget * (0.6 if opts['polish_steps'] else 1.0) if budget is not None else None
    while state['epoch'] < opts['epochs']:
        if state['bad_epochs'] >= opts['patience']:
            stopped_early = True
            break
        if opts['max_time'] is not None and time.perf_counter() - start_time > opts['max_time']:
            finished = False  # a walltime: resume from the checkpoint
            break
        if adam_time is not None and time.perf_counter() - start_time > adam_time:
            break  # the budget of AdamW is spent: go on to polishing (if any), a finished run
        if opts['stop_after'] is not None and epochs_this_call >= opts['stop_after']:
            finished = False
            break
        epoch_start = time.perf_counter()
        pot.train()
        epoch_items = train_items + _draw(replay_items, n_replay, generator)
        order = torch.randperm(len(epoch_items), generator=generator).tolist()
        total = 0.0
        for begin in range(0, len(order), opts['batch_size']):
            chunk = [epoch_items[k] for k in order[begin : begin + opts['batch_size']]]
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(pot, chunk, w_e, w_f, w_s)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chunk)
            if adam_time is not None and time.perf_counter() - start_time > adam_time:
                break  # checked after every mini-batch: an epoch of a large model can outlast the budget
        pot.eval()
        val_loss = sum(
            float(_loss(pot, monitor[b : b + 64], w_e, w_f, w_s).detach()) * len(monitor[b : b + 64])
            for b in range(0, len(monitor), 64)
        ) / len(monitor)
        scheduler.step(val_loss)
        state['epoch'] += 1
        epochs_this_call += 1
        state['elapsed'] += time.perf_counter() - epoch_start
        if val_loss < state['best_loss']:
            state.update(best_loss=val_loss, best_epoch=state['epoch'], bad_epochs=0)
            best_weights = copy.deepcopy(pot.state_dict())
        else:
            state['bad_epochs'] += 1
        state['history'].append(
            {
                'epoch': state['epoch'],
                'train_loss': total / len(epoch_items),
                'validation_loss': val_loss,
                'learning_rate': optimizer.param_groups[0]['lr'],
                'time_s': state['elapsed'],
            }
        )
        if opts['verbose'] and state['epoch'] % 10 == 0:
            print(
                f'epoch {state["epoch"]:5d} train {total / len(epoch_items):.3e} val {val_loss:.3e} '
                f'lr {optimizer.param_groups[0]["lr"]:.1e} {state["elapsed"]:.0f} s',
                flush=True,
            )
        if state['epoch'] % opts['checkpoint_every'] == 0:
            save_checkpoint()
    save_checkpoint()  # holds the current weights: a resumed run continues from here
    if best_weights is not None:
        pot.load_state_dict(best_weights)
    if finished and opts['polish_steps'] and not state.get('polished'):
        polish_items = train_items + _draw(replay_items, n_replay, torch.Generator().manual_seed(opts['seed'] + 1))
        best_weights, interrupted = _polish(pot, polish_items, monitor, w_e, w_f, opts, state, start_time, w_s)
        if interrupted:  # a walltime during polishing: the resumed run polishes again from the best weights
            finished = False
        else:
            state['polished'] = True
        save_checkpoint()
    pot.to(model_dtype)

    report = {
        'train': evaluate_metrics(pot, train_items),
        'validation': evaluate_metrics(pot, val_items) if val_items else None,
        'learning_curve': state['history'],
        'best_epoch': state['best_epoch'],
        'epochs_run': state['epoch'],
        'finished': finished,
        'stopped_early': stopped_early,
        'training_time_s': state['elapsed'],
        'options': {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items() if k != 'replay'},
        'statistics': state.get('statistics', 'refit'),
        'replay_per_epoch': n_replay,
    }
    pot.metadata['metrics'] = {'train': report['train'], 'validation': report['validation']}
    pot.metadata['training'] = {
        'options': report['options'],
        'n_train': len(train_items),
        'n_validation': len(val_items),
        'best_epoch': state['best_epoch'],
        'epochs_run': state['epoch'],
    }
    report['calibration'] = _fit_uncertainty(pot, frames, train_idx, val_idx, opts['uncertainty'])
    return report


def _rehearsal(pot, opts: dict, n_train: int) -> tuple[list[_Frame], int]:
    """The prepared replay frames and how many of them join every epoch (``replay_fraction`` x ``n_train``).

    Rehearsed frames bring their forces (and stress) into the loss, not their energies: the parent's labels may come
    from another energy reference, which the fine-tuning has just moved the per-element offsets away from.
    """
    fraction = opts['replay_fraction']
    if not fraction:
        return [], 0
    if not opts['replay']:
        raise ValueError("replay_fraction > 0 needs replay frames (the parent's data): none were given")
    items = _prepare(opts['replay'], pot.cutoff, pot.dtype, pot.device)
    for item in items:  # the parent's energies may be on another reference (code, pseudopotentials, cutoff)
        item.energy_in_loss = False
    return items, min(len(items), max(1, round(fraction * n_train)))


def _draw(items: list[_Frame], count: int, generator: torch.Generator) -> list[_Frame]:
    """``count`` of ``items`` without repetition (none when ``count`` is 0: the generator is left untouched)."""
    if not count:
        return []
    return [items[k] for k in torch.randperm(len(items), generator=generator)[:count].tolist()]


def _fit_uncertainty(pot, frames: Sequence[Atoms], train_idx, val_idx, method: str) -> dict:
    """Put fresh uncertainty entries in ``pot.metadata`` (a parent's are dropped); return the calibrations."""
    from .uncertainty import METADATA_KEYS, fit_uncertainty

    for key in METADATA_KEYS:
        pot.metadata.pop(key, None)
    entries = fit_uncertainty(pot, [frames[k] for k in train_idx], [frames[k] for k in val_idx], method)
    pot.metadata.update(entries)
    return {key: value for key, value in entries.items() if key.startswith('calibration')}
