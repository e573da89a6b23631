"""Calibrated uncertainty: the committee's force deviation, and a last-layer Bayesian variance of one model.

Calibration (any per-atom uncertainty)
    An uncertainty ``sigma_i`` [eV/Å] of atom i is read as the root-mean-square norm of the force error of that atom,
    i.e. an isotropic per-component standard deviation ``sigma_i / sqrt(3)``. A scale ``s`` is fitted by Gaussian
    maximum likelihood on the force components, ``e_ic ~ N(0, (s sigma_i)^2 / 3)``, which gives in closed form
    ``s^2 = (1/N) sum_i |e_i|^2 / sigma_i^2``; ``s sigma_i`` is then the calibrated uncertainty. Reported with it:
    the Spearman rank correlation of ``sigma_i`` and ``|e_i|``, and the fraction of force components inside the 95 %
    interval ``|e_ic| <= 1.96 s sigma_i / sqrt(3)`` (``coverage_95``; ``coverage_95_raw`` with ``s = 1``).

Committee
    ``sigma_i`` is the committee deviation ``d_i = sqrt(1/M sum_m |F_m,i - <F_i>|^2)``
    (:func:`models.atom_force_deviation`, whose maximum over a structure is the MD engine's ``max_force_deviation``),
    ``e_i`` the error of the committee mean.

Last layer of one model (member m)
    The energy is linear in the last layer: ``E = phi . theta`` with, per element e, ``phi_e = [energy_scale *
    sum_{i in e} h_i, n_e]`` (``h_i``: the activations feeding the last layer, :meth:`Potential.last_hidden`; ``n_e``:
    the number of atoms of e) and ``theta_e = [w_e, energy_scale * b_e + E0_e]``. A Laplace approximation at the trained
    weights (the prediction stays that of the network) with the exact Gauss-Newton precision of energies and forces,

        ``A = beta_E Phi^T Phi + beta_F J^T J + diag(alpha for w, alpha_0 for the offsets)``,  ``Sigma = A^-1``,

    where ``J = d phi / d R`` (forces are ``-J theta``). ``alpha`` [1], ``beta_E`` [1/eV^2] and ``beta_F``
    [1/(eV/Å)^2] maximise the evidence (MacKay's fixed point, with the trained weights as the mode):
    ``alpha = gamma_w / |w|^2``, ``beta_E = (N_E - gamma_E) / SSE_E``, ``beta_F = (N_F - gamma_F) / SSE_F`` with the
    effective numbers of parameters ``gamma_E = beta_E tr(Phi^T Phi Sigma)``, ``gamma_F = beta_F tr(J^T J Sigma)``,
    ``gamma_w = n_w - alpha tr(Sigma_ww)``; ``alpha_0`` is fixed (offsets have prior std ``offset_prior_std`` [eV]).
    Predictions: energy variance ``phi Sigma phi^T`` [eV^2], per-atom force variance ``sum_c (J Sigma J^T)_{ic,ic}``
    [eV^2/Å^2]; ``force_sigma = sqrt(force variance + 3 / beta_F)`` adds the label noise. Cost: the energy variance
    needs one forward pass; the forces need ``J``, one backward pass per element and last-layer width (vectorised
    into one autograd call), then O(N D^2). On H2O2 (D = 34, 1 thread) a batch costs about 2x the energies and forces
    of a 4-member committee (``benchmarks/bench_uncertainty.py``); fitting is one such pass over the training frames.

Committee and last layer together ('both': every member's own posterior)
    The mixture of the members' Gaussians has, per atom, ``sigma_i^2 = d_i^2 + 1/M sum_m force_sigma_{m,i}^2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from ase import Atoms
from scipy.stats import rankdata
from torch import Tensor

from .atoms import AtomsBatch, Neighbors, neighbor_list, pair_vectors
from .models import atom_force_deviation

__all__ = [
    'METADATA_KEYS',
    'METHODS',
    'Z95',
    'Calibration',
    'LastLayerPosterior',
    'apply_calibration',
    'calibrate',
    'calibrate_committee',
    'committee_deviations',
    'coverage',
    'fit_last_layer',
    'fit_scale',
    'fit_uncertainty',
    'last_layer_weights',
    'load_posteriors',
    'member_potential',
    'mixture_sigma',
    'spearman',
    'structure_features',
]

#: two-sided 95 % quantile of the standard normal distribution
Z95 = 1.959963984540054
#: the values of the training option ``uncertainty``
METHODS = ('committee', 'last_layer', 'both')
#: the entries :func:`fit_uncertainty` puts in a potential's metadata
METADATA_KEYS = ('calibration', 'calibration_last_layer', 'calibration_both', 'last_layer')
#: smallest per-atom uncertainty used in a division [eV/Å]
_FLOOR = 1e-12
#: pair-feature values (floats) one vectorised backward pass of feature Jacobian columns may hold
_JACOBIAN_BUDGET = 20_000_000


# ------------------------------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """A fitted scale and how well the per-atom uncertainty ranks and covers the force errors.

    Attributes
    ----------
    scale
        Factor s: ``s * sigma`` is the calibrated per-atom uncertainty [eV/Å].
    spearman
        Rank correlation of the per-atom uncertainty with the per-atom force error norm (NaN when undefined).
    coverage_95, coverage_95_raw
        Fraction of force components with ``|error| <= 1.96 s sigma / sqrt(3)``, with the scale and with s = 1.
    n_frames, n_atoms
        Frames and atoms the numbers come from.
    """

    scale: float
    spearman: float
    coverage_95: float
    coverage_95_raw: float
    n_frames: int
    n_atoms: int

    def as_dict(self) -> dict:
        """Plain numbers for metadata and node attributes (an undefined Spearman coefficient becomes None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    def apply(self, sigma):
        """Calibrated uncertainty ``scale * sigma`` (same units as ``sigma``, eV/Å)."""
        return apply_calibration(sigma, self)


def apply_calibration(sigma, calibration: Calibration | Mapping | float):
    """Return ``scale * sigma``: a deviation [eV/Å] (array, tensor or number) made calibrated.

    ``calibration`` is a :class:`Calibration`, its :meth:`~Calibration.as_dict` (e.g. ``pot.metadata['calibration']``)
    or the scale itself.
    """
    if isinstance(calibration, Calibration):
        scale = calibration.scale
    elif isinstance(calibration, Mapping):
        scale = calibration['scale']
    else:
        scale = calibration
    return float(scale) * sigma


def _as_arrays(sigma, errors) -> tuple[np.ndarray, np.ndarray]:
    sigma = np.asarray(sigma, dtype=float).reshape(-1)
    errors = np.asarray(errors, dtype=float).reshape(len(sigma), -1)
    return np.maximum(sigma, _FLOOR), errors


def fit_scale(sigma, errors) -> float:
    """Maximum-likelihood scale s of ``errors`` (N, 3) [eV/Å] ~ N(0, (s sigma_i)^2 / 3) per component.

    ``sigma`` (N,) is the per-atom uncertainty [eV/Å]; ``s^2 = (1/N) sum_i |e_i|^2 / sigma_i^2``.
    """
    sigma, errors = _as_arrays(sigma, errors)
    if len(sigma) == 0:
        return math.nan
    return float(np.sqrt(np.mean((errors**2).sum(1) / sigma**2)))


def coverage(sigma, errors, scale: float = 1.0, z: float = Z95) -> float:
    """Fraction of force components inside ``|e_ic| <= z * scale * sigma_i / sqrt(3)`` (sigma [eV/Å] per atom)."""
    sigma, errors = _as_arrays(sigma, errors)
    if errors.size == 0:
        return math.nan
    half_width = z * scale * sigma / math.sqrt(errors.shape[1])
    return float(np.mean(np.abs(errors) <= half_width[:, None]))


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long sequences (ties get average ranks); NaN if one is constant."""
    a, b = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def calibrate(sigma, errors, n_frames: int, scale: float | None = None) -> Calibration:
    """Calibration of per-atom uncertainties ``sigma`` (N,) [eV/Å] against force errors (N, 3) [eV/Å].

    With ``scale`` given (fitted elsewhere, e.g. on a validation split), ``coverage_95`` is that scale's coverage on
    these errors (an out-of-sample test); otherwise the scale is fitted here.
    """
    sigma_arr, errors_arr = _as_arrays(sigma, errors)
    fitted = fit_scale(sigma_arr, errors_arr) if scale is None else float(scale)
    return Calibration(
        scale=fitted,
        spearman=spearman(sigma_arr, np.linalg.norm(errors_arr, axis=1)),
        coverage_95=coverage(sigma_arr, errors_arr, fitted),
        coverage_95_raw=coverage(sigma_arr, errors_arr, 1.0),
        n_frames=int(n_frames),
        n_atoms=len(sigma_arr),
    )


# --------------------------------------------------------------------------------------------------------- committee
def _batches(
    frames: Sequence[Atoms], batch_size: int, dtype: torch.dtype, device, labels: bool = True
) -> Iterator[tuple[AtomsBatch, Tensor | None, Tensor | None]]:
    """Batches of frames with reference energies (B,) [eV] and forces (N, 3) [eV/Å] (None without ``labels``)."""
    for start in range(0, len(frames), batch_size):
        chunk = list(frames[start : start + batch_size])
        batch = AtomsBatch.from_atoms(chunk, dtype=dtype, device=device)
        if not labels:
            yield batch, None, None
            continue
        try:
            energies = [float(a.get_potential_energy()) for a in chunk]
            forces = np.concatenate([np.asarray(a.get_forces(), dtype=float) for a in chunk])
        except Exception as error:
            raise ValueError(f'frames {start}..{start + len(chunk) - 1} need an energy and forces: {error}') from error
        yield (
            batch,
            torch.tensor(energies, dtype=dtype, device=device),
            torch.as_tensor(forces, dtype=dtype, device=device),
        )


def committee_deviations(pot, frames: Sequence[Atoms], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom committee deviation (N,) [eV/Å] and error of the committee-mean forces (N, 3) [eV/Å] on frames."""
    if pot.committee_size < 2:
        raise ValueError(f'a committee deviation needs at least 2 members, the potential has {pot.committee_size}')
    deviations, errors = [], []
    for batch, _, f_ref in _batches(frames, batch_size, pot.dtype, pot.device):
        out = pot.evaluate(batch)
        deviations.append(atom_force_deviation(out['member_forces'], out['forces']).double().cpu())
        errors.append((out['forces'] - f_ref).double().cpu())
    return torch.cat(deviations).numpy(), torch.cat(errors).numpy()


def calibrate_committee(pot, frames: Sequence[Atoms], scale: float | None = None) -> Calibration:
    """:func:`calibrate` of the committee deviation on labelled frames (held-out ones: a validation split)."""
    deviation, errors = committee_deviations(pot, frames)
    return calibrate(deviation, errors, len(frames), scale)


def mixture_sigma(deviation, member_sigmas: Sequence) -> np.ndarray:
    """Per-atom uncertainty [eV/Å] of the committee as a mixture of its members' last-layer Gaussians.

    ``sigma_i = sqrt(d_i^2 + 1/M sum_m force_sigma_{m,i}^2)`` with ``d`` the committee deviation (N,) and
    ``member_sigmas`` the M members' ``force_sigma`` (N,) (law of total variance).
    """
    within = np.mean([np.asarray(s, dtype=float) ** 2 for s in member_sigmas], axis=0)
    return np.sqrt(np.asarray(deviation, dtype=float) ** 2 + within)


# -------------------------------------------------------------------------------------------------------- last layer
def member_potential(pot, member: int = 0, dtype: torch.dtype | None = None):
    """A one-member ``Potential`` that computes exactly what member ``member`` of ``pot`` computes."""
    from .models import Potential

    if not isinstance(pot, Potential):
        raise TypeError(f'last-layer uncertainty needs a bp-chiral Potential, not {type(pot).__name__}')
    if not 0 <= member < pot.committee_size:
        raise ValueError(f'member {member} does not exist in a committee of {pot.committee_size}')
    hyper = {**pot.hyperparameters(), 'committee': 1}
    dtype = dtype or pot.dtype
    single = Potential.build(**hyper, dtype=dtype, device=pot.device)
    state = {}
    for name, value in pot.state_dict().items():
        if name.startswith(('weights.', 'biases.')) or name == 'reference_energies':
            value = value[member : member + 1]
        state[name] = value.detach().to(dtype) if value.is_floating_point() else value
    single.load_state_dict(state)
    return single


def last_layer_weights(pot, member: int = 0) -> Tensor:
    """Trained last-layer weights theta (D,) of member ``member``: per element ``[w_e (H), energy_scale b_e + E0_e]``.

    ``w_e`` is dimensionless, the offset in eV; D = n_elements (H + 1).
    """
    w = pot.weights[-1][member, :, :, 0]  # (E, H)
    offsets = pot.energy_scale * pot.biases[-1][member, :, 0] + pot.reference_energies[member]  # (E,)
    return torch.cat([w, offsets.unsqueeze(1)], dim=1).reshape(-1).detach()


def structure_features(
    pot, batch: AtomsBatch, neighbors: Neighbors | None = None, member: int = 0, jacobian: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Last-layer features phi (B, D) [eV per weight, atoms per offset] and, if asked, J = d phi / d R (N, 3, D) [eV/Å].

    The energy of member ``member`` is ``phi @ last_layer_weights(pot, member)`` and its forces ``-J @ theta``.
    """
    if batch.dtype != pot.dtype or batch.device != pot.device:
        batch = batch.to(device=pot.device, dtype=pot.dtype)
    if neighbors is None:
        neighbors = neighbor_list(batch, pot.cutoff)
    species = pot.descriptor.element_index(batch.numbers)
    positions = batch.positions.detach().requires_grad_(jacobian)
    moved = AtomsBatch(positions, batch.numbers, batch.cell, batch.pbc, batch.batch)
    n_el = pot.descriptor.n_elements
    with torch.set_grad_enabled(jacobian):
        raw = pot.descriptor(pair_vectors(moved, neighbors), neighbors.i, neighbors.j, species)
        x = pot.normalise(pot.transform(raw, species), species)
        h = pot.energy_scale * pot.last_hidden(x, species)[member]  # (N, H) eV
        rows = batch.batch * n_el + species
        summed = h.new_zeros(batch.n_systems * n_el, h.shape[1]).index_add(0, rows, h)
    counts = torch.zeros(batch.n_systems * n_el, 1, dtype=h.dtype, device=h.device)
    counts = counts.index_add(0, rows, torch.ones(len(rows), 1, dtype=h.dtype, device=h.device))
    phi = torch.cat([summed.detach(), counts], dim=1).reshape(batch.n_systems, -1)
    if not jacobian:
        return phi, None
    graph_size = neighbors.n_pairs * pot.descriptor.n_features
    return phi, _feature_jacobian(summed, positions, species, batch.n_systems, n_el, graph_size)


def _feature_jacobian(
    summed: Tensor, positions: Tensor, species: Tensor, n_systems: int, n_el: int, graph_size: int
) -> Tensor:
    """J (N, 3, D) of the per-structure features: one backward pass per (present element, width) column.

    A structure's features depend only on its own atoms, so one pass per column serves every structure. The columns
    go through autograd together (vectorised, ``is_grads_batched``) in chunks of at most ``_JACOBIAN_BUDGET /
    graph_size`` columns (``graph_size``: pairs x descriptor features), or one by one where that is not supported.
    """
    width = summed.shape[1]
    columns = [(e, k) for e in sorted(set(species.tolist())) for k in range(width)]
    jac = positions.new_zeros(positions.shape[0], 3, n_el, width + 1)
    chunk = max(1, min(len(columns), _JACOBIAN_BUDGET // max(graph_size, 1)))
    for start in range(0, len(columns), chunk):
        part = columns[start : start + chunk]
        basis = summed.new_zeros(len(part), n_systems, n_el, width)
        for row, (e, k) in enumerate(part):
            basis[row, :, e, k] = 1.0
        basis = basis.reshape(len(part), n_systems * n_el, width)
        try:
            grads = torch.autograd.grad(summed, positions, basis, retain_graph=True, is_grads_batched=True)[0]
        except RuntimeError:  # an operation without a batching rule: one column at a time
            grads = torch.stack([torch.autograd.grad(summed, positions, g, retain_graph=True)[0] for g in basis])
        for row, (e, k) in enumerate(part):
            jac[:, :, e, k] = grads[row]
    return jac.reshape(positions.shape[0], 3, -1)


@dataclass
class LastLayerPosterior:
    """Gaussian posterior of one member's last-layer weights (see the module docstring for the formulas).

    Attributes
    ----------
    covariance
        Sigma (D, D) of theta (weights dimensionless, offsets eV).
    weights
        The trained theta (D,) the posterior is centred on (a check that it belongs to the potential at hand).
    member
        Committee member it was fitted for.
    prior_precision, offset_prior_precision
        alpha (evidence) for the weights, alpha_0 (fixed) for the offsets [1/eV^2].
    energy_noise_variance, force_noise_variance
        1/beta_E [eV^2] and 1/beta_F [(eV/Å)^2 per component] (evidence).
    effective_parameters
        gamma: the number of weights the data determine.
    n_frames, with_forces
        Training frames it was fitted on, and whether forces entered the fit.
    """

    covariance: np.ndarray
    weights: np.ndarray
    member: int
    prior_precision: float
    offset_prior_precision: float
    energy_noise_variance: float
    force_noise_variance: float
    effective_parameters: float
    n_frames: int
    with_forces: bool

    def as_metadata(self) -> dict:
        """Plain lists and numbers (stored in the potential file's metadata)."""
        data = asdict(self)
        data['covariance'] = np.asarray(self.covariance, dtype=float).tolist()
        data['weights'] = np.asarray(self.weights, dtype=float).tolist()
        return data

    @classmethod
    def from_metadata(cls, data: Mapping) -> LastLayerPosterior:
        """Inverse of :meth:`as_metadata`."""
        values = dict(data)
        values['covariance'] = np.asarray(values['covariance'], dtype=float)
        values['weights'] = np.asarray(values['weights'], dtype=float)
        return cls(**values)

    def check(self, pot) -> None:
        """Raise ``ValueError`` when ``pot``'s member is not the model this posterior was fitted for.

        ``pot`` is the committee, or a one-member potential taken for the member (:func:`member_potential`).
        """
        theta = last_layer_weights(pot, self.member if pot.committee_size > 1 else 0).double().cpu().numpy()
        if theta.shape != self.weights.shape or not np.allclose(theta, self.weights, rtol=1e-5, atol=1e-6):
            raise ValueError(f'the last-layer posterior does not belong to member {self.member} of this potential')

    def predict(self, pot, frames: Sequence[Atoms] | AtomsBatch, forces: bool = True, batch_size: int = 64) -> dict:
        """Member energies, forces and their last-layer variances.

        Parameters
        ----------
        pot
            The committee holding the member the posterior belongs to, or that member alone (faster: no copy).
        frames
            Structures (labels are not needed), or one ``AtomsBatch``.
        forces
            Also forces and their variances (needs J: one backward pass per feature column).
        batch_size
            Structures per pass when ``frames`` is a sequence.

        Returns
        -------
        dict
            numpy arrays: ``energy`` (B,) [eV], ``energy_variance`` (B,) [eV^2] and with ``forces``: ``forces``
            (N, 3) [eV/Å], ``force_variance`` (N,) [eV^2/Å^2] (epistemic, summed over components) and
            ``force_sigma`` (N,) [eV/Å] (with the label noise, comparable to a committee deviation).
        """
        self.check(pot)
        single = member_potential(pot, self.member) if pot.committee_size > 1 else pot
        theta = torch.as_tensor(self.weights, dtype=torch.float64, device=single.device)
        cov = torch.as_tensor(self.covariance, dtype=torch.float64, device=single.device)
        batches = (
            [(frames, None, None)]
            if isinstance(frames, AtomsBatch)
            else _batches(frames, batch_size, single.dtype, single.device, labels=False)
        )
        parts: dict[str, list] = {}
        for batch, _, _ in batches:
            phi, jac = structure_features(single, batch, jacobian=forces)
            phi = phi.double()
            parts.setdefault('energy', []).append(phi @ theta)
            parts.setdefault('energy_variance', []).append(torch.einsum('bd,de,be->b', phi, cov, phi))
            if forces:
                jac = jac.double()
                parts.setdefault('forces', []).append(-jac @ theta)
                parts.setdefault('force_variance', []).append(torch.einsum('ncd,de,nce->n', jac, cov, jac))
        result = {key: torch.cat(values).cpu().numpy() for key, values in parts.items()}
        if forces:
            result['force_sigma'] = np.sqrt(np.maximum(result['force_variance'], 0) + 3 * self.force_noise_variance)
        return result


def _accumulate(single, frames: Sequence[Atoms], forces: bool, batch_size: int) -> dict:
    """Gauss-Newton blocks Phi^T Phi, J^T J (D, D) and squared residuals of the trained member on labelled frames."""
    theta = last_layer_weights(single, 0).double()
    n_dim = len(theta)
    sums = {'g_e': theta.new_zeros(n_dim, n_dim), 'g_f': theta.new_zeros(n_dim, n_dim), 'sse_e': 0.0, 'sse_f': 0.0}
    sums.update(n_e=0, n_f=0)
    for batch, e_ref, f_ref in _batches(frames, batch_size, single.dtype, single.device):
        phi, jac = structure_features(single, batch, jacobian=forces)
        phi = phi.double()
        sums['g_e'] += phi.T @ phi
        sums['sse_e'] += float(((e_ref.double() - phi @ theta) ** 2).sum())
        sums['n_e'] += batch.n_systems
        if forces:
            rows = jac.double().reshape(-1, n_dim)
            sums['g_f'] += rows.T @ rows
            sums['sse_f'] += float(((f_ref.double().reshape(-1) + rows @ theta) ** 2).sum())
            sums['n_f'] += rows.shape[0]
    return sums


def _evidence(sums: dict, theta: Tensor, weight_mask: Tensor, offset_precision: float, max_iter: int = 200) -> dict:
    """MacKay's fixed point for alpha, beta_E, beta_F around the trained weights; returns them, Sigma and gamma."""
    tiny = 1e-300
    n_w = int(weight_mask.sum())
    w_norm2 = max(float((theta[weight_mask] ** 2).sum()), tiny)
    # residuals of an exact fit: noise variances of at least 1e-12 (eV^2, (eV/Å)^2) keep the precision finite
    sse_e, sse_f = max(sums['sse_e'], 1e-12 * sums['n_e']), max(sums['sse_f'], 1e-12 * sums['n_f'])
    alpha = n_w / w_norm2
    beta_e = sums['n_e'] / sse_e
    beta_f = sums['n_f'] / sse_f if sums['n_f'] else 0.0
    for _ in range(max_iter):
        prior = torch.where(weight_mask, torch.full_like(theta, alpha), torch.full_like(theta, offset_precision))
        precision = beta_e * sums['g_e'] + beta_f * sums['g_f'] + torch.diag(prior)
        cov = torch.cholesky_inverse(torch.linalg.cholesky(0.5 * (precision + precision.T)))
        gamma_e = beta_e * float((sums['g_e'] * cov).sum())
        gamma_f = beta_f * float((sums['g_f'] * cov).sum())
        gamma_w = n_w - alpha * float(cov.diagonal()[weight_mask].sum())
        new = (
            max(gamma_w, 1e-6) / w_norm2,
            max(sums['n_e'] - gamma_e, 0.5) / sse_e,
            max(sums['n_f'] - gamma_f, 0.5) / sse_f if sums['n_f'] else 0.0,
        )
        change = max(abs(a - b) / max(abs(b), tiny) for a, b in zip(new, (alpha, beta_e, beta_f), strict=True))
        alpha, beta_e, beta_f = new
        if change < 1e-8:
            break
    return {'alpha': alpha, 'beta_e': beta_e, 'beta_f': beta_f, 'covariance': cov, 'gamma': gamma_w}


def fit_last_layer(
    pot,
    frames: Sequence[Atoms],
    member: int = 0,
    forces: bool = True,
    offset_prior_std: float = 10.0,
    batch_size: int = 64,
) -> LastLayerPosterior:
    """Fit the last-layer posterior of member ``member`` on labelled training frames (energies [eV], forces [eV/Å]).

    Evidence maximisation sets the weight prior precision and both noise levels; ``offset_prior_std`` [eV] is the
    fixed prior standard deviation of the per-element offsets. Works in float64 on a copy of the member.
    """
    if not frames:
        raise ValueError('a last-layer posterior needs training frames')
    single = member_potential(pot, member, dtype=torch.float64)
    theta = last_layer_weights(single, 0).double()
    width = single.weights[-1].shape[2]
    weight_mask = (torch.arange(len(theta), device=theta.device) % (width + 1)) != width
    sums = _accumulate(single, frames, forces, batch_size)
    fit = _evidence(sums, theta, weight_mask, 1.0 / offset_prior_std**2)
    return LastLayerPosterior(
        covariance=fit['covariance'].cpu().numpy(),
        weights=theta.cpu().numpy(),
        member=int(member),
        prior_precision=float(fit['alpha']),
        offset_prior_precision=1.0 / offset_prior_std**2,
        energy_noise_variance=1.0 / fit['beta_e'],
        force_noise_variance=1.0 / fit['beta_f'] if fit['beta_f'] > 0 else 0.0,
        effective_parameters=float(fit['gamma']),
        n_frames=len(frames),
        with_forces=bool(forces),
    )


def load_posteriors(pot) -> list[LastLayerPosterior]:
    """The last-layer posteriors stored in ``pot.metadata['last_layer']`` (empty when there are none)."""
    stored = pot.metadata.get('last_layer') or {}
    return [LastLayerPosterior.from_metadata(data) for data in stored.get('members', [])]


def _force_errors(frames: Sequence[Atoms], forces: np.ndarray) -> np.ndarray:
    reference = np.concatenate([np.asarray(a.get_forces(), dtype=float) for a in frames])
    return np.asarray(forces, dtype=float) - reference


# ---------------------------------------------------------------------------------------------------------- training
def fit_uncertainty(pot, train_frames: Sequence[Atoms], validation_frames: Sequence[Atoms], method: str) -> dict:
    """Metadata entries of a trained potential: its uncertainty model and calibration on the validation frames.

    ``calibration`` (committees, when there are validation frames); for ``method`` 'last_layer' (member 0) or 'both'
    (every member): ``last_layer`` (the posteriors), ``calibration_last_layer`` (member 0's, errors of member 0) and,
    for 'both' with a committee, ``calibration_both`` (the mixture, errors of the committee mean).
    """
    if method not in METHODS:
        raise ValueError(f'unknown uncertainty {method!r}; choose from {METHODS}')
    entries: dict = {}
    committee = pot.committee_size > 1
    if committee and validation_frames:
        deviation, errors = committee_deviations(pot, validation_frames)
        entries['calibration'] = calibrate(deviation, errors, len(validation_frames)).as_dict()
    if method == 'committee':
        return entries
    members = range(pot.committee_size) if method == 'both' else [0]
    posteriors = [fit_last_layer(pot, train_frames, member=m) for m in members]
    entries['last_layer'] = {'method': 'laplace-evidence', 'members': [p.as_metadata() for p in posteriors]}
    if validation_frames:
        predictions = [p.predict(pot, validation_frames) for p in posteriors]
        own_errors = _force_errors(validation_frames, predictions[0]['forces'])
        calibration = calibrate(predictions[0]['force_sigma'], own_errors, len(validation_frames))
        entries['calibration_last_layer'] = calibration.as_dict()
        if committee and len(posteriors) > 1:
            sigma = mixture_sigma(deviation, [p['force_sigma'] for p in predictions])
            entries['calibration_both'] = calibrate(sigma, errors, len(validation_frames)).as_dict()
    return entries
