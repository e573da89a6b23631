"""Well-tempered metadynamics with multiple walkers on a grid of one or two collective variables.

Every replica of a batched :func:`~aiida_mlff.core.md.simulate` run is a walker; all walkers add Gaussian hills to
one shared bias stored on a grid (values and exact gradients of the hills at the grid points). Between grid points
the bias and its gradient are interpolated (multilinear), and the bias energy is built so that autograd through the
CVs gives the forces from the interpolated gradient. The time-dependent offset c(t) of Tiwary and Parrinello
(J. Phys. Chem. B 119, 736 (2015)) is tracked after every deposit for reweighting.

Example, 8 walkers on two CVs::

    bias = MetadynamicsBias([Position(0, 'x'), Position(0, 'y')], grid=[(-1.7, 1.3, 301), (-0.4, 2.2, 261)],
                            height=0.005, widths=[0.05, 0.05], pace=100, bias_factor=6.0, temperature=300.0)
    result = simulate(surface, atoms_list, ensemble='langevin', timestep=2.0, steps=50_000, temperature=300.0,
                      biases=[bias])
    fes = bias_free_energy(bias, edges)                                # from the bias
    fes = reweighted_free_energy(result.colvars, result.bias_energy, bias.ct_at(result.step), edges, 300.0)

Units: CV internal units (Å, rad), eV, K, MD steps.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .colvars import CollectiveVariable
from .fes2d import FreeEnergySurface
from .wham import PMF

__all__ = ['MetadynamicsBias', 'bias_free_energy', 'reweighted_free_energy']

KB_EV = 8.617333262e-5  # eV/K


class MetadynamicsBias:
    """Gaussian hills on a grid over one or two CVs, shared by all walkers (every replica of the batch).

    Every ``pace`` steps each active walker deposits a hill at its CV value ``s_w``; all hills go into the same
    grid. Well-tempered: the height is ``height * exp(-V(s_w) / (kB (bias_factor - 1) T))`` with V the bias before
    this deposit; ``bias_factor=None`` gives plain metadynamics (constant height).

    Outside a non-periodic grid the bias is constant along that CV (its value at the nearest grid edge) and exerts
    no force: there is no wall unless ``wall`` is given, a harmonic wall ``0.5 wall d^2`` on the distance d beyond
    the grid edge (added to the bias energy, so reweighting with the recorded bias energy stays exact). Hills of
    walkers outside the grid are still added at their true centre (their tails reach into the grid).

    Parameters
    ----------
    cvs
        One or two :class:`~aiida_mlff.core.colvars.CollectiveVariable`.
    grid
        Per CV ``(lower, upper, n_points)`` in internal CV units. Non-periodic: ``n_points`` points from lower to
        upper inclusive. Periodic: ``upper - lower`` must equal the period; ``n_points`` points
        ``lower + i * period / n_points`` (the grid wraps).
    height
        Initial hill height, eV.
    widths
        Gaussian sigma per CV, internal CV units.
    pace
        Deposit every ``pace`` MD steps (at steps that are multiples of ``pace``).
    bias_factor
        gamma > 1 of well-tempered metadynamics, or None for plain metadynamics.
    temperature
        K, of the walkers (the well-tempered height and c(t) use it).
    wall
        Optional harmonic wall constant beyond non-periodic grid edges, eV per CV unit squared.
    """

    def __init__(
        self,
        cvs: Sequence[CollectiveVariable],
        grid: Sequence[tuple[float, float, int]],
        height: float,
        widths: float | Sequence[float],
        pace: int,
        bias_factor: float | None,
        temperature: float,
        wall: float | None = None,
    ) -> None:
        self._cvs = list(cvs)
        k = len(self._cvs)
        if k not in (1, 2):
            raise ValueError(f'metadynamics on 1 or 2 CVs, got {k}')
        if len(grid) != k:
            raise ValueError(f'{len(grid)} grid specs for {k} CVs')
        widths = np.broadcast_to(np.asarray(widths, dtype=float), (k,))
        if (widths <= 0).any() or height <= 0 or pace < 1:
            raise ValueError('widths, height and pace must be positive')
        if bias_factor is not None and bias_factor <= 1.0:
            raise ValueError(f'bias_factor must be > 1 (or None for plain metadynamics), got {bias_factor}')
        self.grid_spec = np.array([[float(lo), float(hi), int(n)] for lo, hi, n in grid])
        self.periods = [cv.period for cv in self._cvs]
        for (lo, hi, n), p in zip(self.grid_spec, self.periods, strict=True):
            if n < 2 or hi <= lo:
                raise ValueError(f'bad grid ({lo}, {hi}, {n})')
            if p is not None and not math.isclose(hi - lo, p, rel_tol=1e-9):
                raise ValueError(f'a periodic grid must span one period {p}, got {lo}..{hi}')
        self.height, self.widths, self.pace = float(height), widths.copy(), int(pace)
        self.bias_factor = None if bias_factor is None else float(bias_factor)
        self.temperature = float(temperature)
        self.wall = None if not wall else float(wall)
        self.shape = tuple(int(n) for n in self.grid_spec[:, 2])
        self._table = torch.zeros((*self.shape, 1 + k), dtype=torch.float64)  # V, then dV/ds_d, at the grid points
        self._axes = [torch.as_tensor(a) for a in self.grid_axes()]
        self._h = [float(a[1] - a[0]) for a in self.grid_axes()]  # grid spacing per CV
        self.n_deposits = 0
        self._hills: list[tuple[Tensor, ...]] = []  # per deposit: centres (B, k), heights (B,), steps, walkers (B,)
        self._ct: list[Tensor] = []  # c(t) after each deposit, eV, (1,)
        self._ct_steps: list[int] = []

    # ------------------------------------------------------------------------------------------ properties
    def __repr__(self) -> str:
        return (
            f'MetadynamicsBias({[cv.name for cv in self._cvs]}, height={self.height}, widths={self.widths.tolist()}, '
            f'pace={self.pace}, bias_factor={self.bias_factor}, {self.n_deposits} deposits)'
        )

    @property
    def cvs(self) -> list[CollectiveVariable]:
        """The k CVs the bias acts on."""
        return list(self._cvs)

    @property
    def kt(self) -> float:
        """KT in eV."""
        return KB_EV * self.temperature

    def grid_axes(self) -> list[np.ndarray]:
        """The grid points along each CV, internal CV units."""
        axes = []
        for (lo, hi, n), p in zip(self.grid_spec, self.periods, strict=True):
            n = int(n)
            axes.append(lo + np.arange(n) * (p / n) if p is not None else np.linspace(lo, hi, n))
        return axes

    def _to(self, like: Tensor) -> None:
        """Move the grid to the device and float type of ``like`` (no-op when already there)."""
        if self._table.device != like.device or self._table.dtype != like.dtype:
            self._table = self._table.to(device=like.device, dtype=like.dtype)
            self._axes = [a.to(device=like.device, dtype=like.dtype) for a in self._axes]

    # ------------------------------------------------------------------------------------------ interpolation
    def _corners(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flat grid indices (2^k, P) and weights (2^k, P) of the interpolation corners of s (P, k); inside (P, k)."""
        flat, weight, inside = None, None, []
        for d in range(len(self._cvs)):
            n, lo = self.shape[d], float(self.grid_spec[d, 0])
            u = (s[:, d] - lo) / self._h[d]
            if self.periods[d] is not None:
                i0 = torch.floor(u)
                t = u - i0
                i0 = torch.remainder(i0.long(), n)
                idx = torch.stack([i0, torch.remainder(i0 + 1, n)])
                inside.append(torch.ones_like(u, dtype=torch.bool))
            else:
                inside.append((u >= 0) & (u <= n - 1))
                u = u.clamp(0, n - 1)
                i0 = torch.floor(u).clamp(max=n - 2)
                t = u - i0
                i0 = i0.long()
                idx = torch.stack([i0, i0 + 1])
            w = torch.stack([1.0 - t, t])
            if flat is None:
                flat, weight = idx, w
            else:  # corners of the dims so far x the two of this dim, row-major flat index
                flat = (flat.unsqueeze(1) * n + idx.unsqueeze(0)).reshape(-1, idx.shape[-1])
                weight = (weight.unsqueeze(1) * w.unsqueeze(0)).reshape(-1, w.shape[-1])
        return flat, weight, torch.stack(inside, dim=-1)

    def interpolate(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Bias V(s) [eV] (P,) and its gradient dV/ds (P, k) [eV per CV unit] by multilinear interpolation.

        Not differentiable (use :meth:`energy_from_cv` for forces). Outside a non-periodic grid, V is the value at
        the nearest edge and the gradient along that CV is zero (the wall, if any, is not included).
        """
        k = len(self._cvs)
        s = s.detach().reshape(-1, k).to(self._table)
        flat, weight, inside = self._corners(s)
        out = (weight.unsqueeze(-1) * self._table.reshape(-1, 1 + k)[flat]).sum(0)  # (P, 1 + k)
        return out[:, 0], out[:, 1:] * inside.to(out.dtype)

    def _wall_energy(self, s: Tensor) -> Tensor:
        """Harmonic wall beyond non-periodic grid edges, (P,) eV, differentiable in s."""
        e = s.new_zeros(s.shape[0])
        if self.wall is None:
            return e
        for d, p in enumerate(self.periods):
            if p is None:
                lo, hi = float(self.grid_spec[d, 0]), float(self.grid_spec[d, 1])
                out = torch.relu(lo - s[:, d]) + torch.relu(s[:, d] - hi)
                e = e + 0.5 * self.wall * out**2
        return e

    def energy_and_derivative(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Bias energy [eV] (P,) and dE/ds (P, k) at CV values s (P, k), without autograd.

        The interpolated bias and gradient plus the wall's: what :meth:`energy_from_cv` differentiates to.
        """
        k = len(self._cvs)
        s = s.detach().reshape(-1, k)
        self._to(s)
        v, g = self.interpolate(s)
        v, g = v.to(s.dtype), g.to(s.dtype)
        if self.wall is not None:
            for d, p in enumerate(self.periods):
                if p is None:
                    lo, hi = float(self.grid_spec[d, 0]), float(self.grid_spec[d, 1])
                    below, above = torch.relu(lo - s[:, d]), torch.relu(s[:, d] - hi)
                    v = v + 0.5 * self.wall * (below + above) ** 2
                    g[:, d] = g[:, d] + self.wall * (above - below)
        return v, g

    def energy_from_cv(self, s: Tensor) -> Tensor:
        """Bias energy [eV] (P,) of CV values s (P, k), whose gradient in s is the interpolated dV/ds (plus wall)."""
        s = s.reshape(-1, len(self._cvs))
        self._to(s)
        s0 = s.detach()
        v, g = self.interpolate(s0)
        return v + (g * (s - s0)).sum(-1) + self._wall_energy(s)

    def __call__(self, positions: Tensor, cell=None, pbc=None, offsets=None) -> tuple[Tensor, Tensor]:
        """Return (bias energy [eV] (B,), CV values (B, k)); differentiable in positions."""
        s = torch.stack([cv(positions, cell, pbc, offsets) for cv in self._cvs], dim=-1)
        return self.energy_from_cv(s), s

    def energy_of(self, values: Tensor, replicas: Tensor | None = None) -> Tensor:
        """Bias energy [eV] (P,) of CV values (P, k): the same shared bias for every replica."""
        return self.energy_from_cv(values.detach().reshape(-1, len(self._cvs))).detach()

    # ------------------------------------------------------------------------------------------ deposition
    def add_hills(self, centers: Tensor, heights: Tensor) -> None:
        """Add Gaussians of ``heights`` (H,) eV at ``centers`` (H, k): exact values and gradients at the grid points.

        The distance to each grid point is the minimum image for periodic CVs. Vectorised: one outer product.
        """
        centers = centers.reshape(-1, len(self._cvs)).to(self._table)
        heights = heights.reshape(-1).to(self._table)
        gauss, dgauss = [], []
        for d, cv in enumerate(self._cvs):
            diff = cv.difference(self._axes[d].unsqueeze(0), centers[:, d : d + 1])  # (H, n_d)
            g = torch.exp(-0.5 * (diff / float(self.widths[d])) ** 2)
            gauss.append(g)
            dgauss.append(-diff / float(self.widths[d]) ** 2 * g)
        letters = string.ascii_lowercase[1 : 1 + len(self._cvs)]
        spec = 'h,' + ','.join(f'h{c}' for c in letters) + '->' + letters
        self._table[..., 0] += torch.einsum(spec, heights, *gauss)
        for d in range(len(self._cvs)):
            factors = [dgauss[e] if e == d else gauss[e] for e in range(len(self._cvs))]
            self._table[..., 1 + d] += torch.einsum(spec, heights, *factors)

    def hill_heights(self, s: Tensor) -> Tensor:
        """Height [eV] (P,) of hills deposited now at CV values s (P, k) (well-tempered rescaling)."""
        s = s.detach().reshape(-1, len(self._cvs)).to(self._table)
        h = torch.full_like(s[:, 0], self.height)
        if self.bias_factor is None:
            return h
        v, _ = self.interpolate(s)
        return h * torch.exp(-v / (self.kt * (self.bias_factor - 1.0)))

    def update(self, step: int, values: Tensor, active: Tensor | None = None) -> None:
        """Called after every MD step: at multiples of ``pace`` every active walker deposits a hill at ``values``."""
        if step % self.pace:
            return
        s = values.detach().reshape(-1, len(self._cvs))
        self._to(s)
        h = self.hill_heights(s)
        if active is not None:
            h = h * active.to(h.dtype)
        self.add_hills(s, h)
        walkers = torch.arange(len(h), device=h.device)
        self._hills.append((s.clone(), h, torch.full_like(walkers, int(step)), walkers))
        self._ct.append(self._current_ct().reshape(1))
        self._ct_steps.append(int(step))
        self.n_deposits += 1

    def _current_ct(self) -> Tensor:
        """c(t) [eV] of the current grid bias (a 0-d tensor on the grid's device)."""
        beta_v = self._table[..., 0].reshape(-1) / self.kt
        if self.bias_factor is None:
            return self.kt * (torch.logsumexp(beta_v, 0) - math.log(beta_v.numel()))
        g = self.bias_factor
        return self.kt * (torch.logsumexp(g / (g - 1.0) * beta_v, 0) - torch.logsumexp(beta_v / (g - 1.0), 0))

    # ------------------------------------------------------------------------------------------ history
    def ct_history(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps (D,), c(t) (D,) eV) after each deposit."""
        ct = np.concatenate([c.detach().cpu().double().numpy() for c in self._ct]) if self._ct else np.zeros(0)
        return np.asarray(self._ct_steps, dtype=np.int64), ct

    def ct_at(self, steps) -> np.ndarray:
        """c(t) [eV] in force at each MD step (any shape).

        The bias energy recorded at step n was computed before the deposit of step n, so this is c(t) after the
        last deposit at a step strictly before n (0 before the first deposit); piecewise constant in between.
        """
        dep_steps, ct = self.ct_history()
        steps = np.asarray(steps)
        i = np.searchsorted(dep_steps, steps, side='left') - 1
        return np.where(i >= 0, np.concatenate([[0.0], ct])[i + 1], 0.0)

    def hills(self) -> dict[str, np.ndarray]:
        """The deposited hills: ``centers`` (H, k), ``heights`` (H,) eV, ``steps`` (H,), ``walkers`` (H,).

        Walkers that were stopped at a deposit add no hill (they are not listed).
        """
        if not self._hills:
            k = len(self._cvs)
            empty = np.zeros(0, np.int64)
            return {'centers': np.zeros((0, k)), 'heights': np.zeros(0), 'steps': empty, 'walkers': empty}
        out = {
            key: np.concatenate([h[i].detach().cpu().numpy() for h in self._hills])
            for i, key in enumerate(('centers', 'heights', 'steps', 'walkers'))
        }
        keep = out['heights'] > 0
        return {
            'centers': out['centers'][keep].astype(float),
            'heights': out['heights'][keep].astype(float),
            'steps': out['steps'][keep].astype(np.int64),
            'walkers': out['walkers'][keep].astype(np.int64),
        }

    # ------------------------------------------------------------------------------------------ grids
    def bias_on_grid(self) -> np.ndarray:
        """The bias V [eV] at the grid points, shape of the grid."""
        return self._table[..., 0].detach().cpu().numpy().astype(float).copy()

    def gradient_on_grid(self) -> np.ndarray:
        """dV/ds [eV per CV unit] at the grid points, shape ``(k, n_1)`` or ``(k, n_1, n_2)``."""
        return np.moveaxis(self._table[..., 1:].detach().cpu().numpy().astype(float), -1, 0).copy()

    # ------------------------------------------------------------------------------------------ state
    def _parameters(self) -> dict[str, np.ndarray]:
        return {
            'grid_spec': self.grid_spec.copy(),
            'widths': self.widths.copy(),
            'height': np.array(self.height),
            'pace': np.array(self.pace),
            'bias_factor': np.array(np.nan if self.bias_factor is None else self.bias_factor),
            'temperature': np.array(self.temperature),
            'wall': np.array(np.nan if self.wall is None else self.wall),
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Grid, hills, c(t) history, deposit counter and the parameters, as numpy arrays."""
        hills = self.hills()
        ct_steps, ct = self.ct_history()
        return {
            **self._parameters(),
            'value': self.bias_on_grid(),
            'gradient': self.gradient_on_grid(),
            'n_deposits': np.array(self.n_deposits),
            'ct': ct,
            'ct_steps': ct_steps,
            **{f'hill_{k}': v for k, v in hills.items()},
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Take back a :meth:`state_dict`; the parameters must be the same as this bias's."""
        for key, mine in self._parameters().items():
            theirs = np.asarray(state[key], dtype=float)
            if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=1e-12, atol=0.0, equal_nan=True):
                raise ValueError(f'saved metadynamics bias has {key}={theirs.tolist()}, this one {mine.tolist()}')
        dtype, device = self._table.dtype, self._table.device
        table = np.concatenate([np.asarray(state['value'])[..., None], np.moveaxis(state['gradient'], 0, -1)], -1)
        self._table = torch.as_tensor(table, dtype=dtype, device=device).clone()
        self.n_deposits = int(state['n_deposits'])
        self._ct = [torch.as_tensor(np.asarray(state['ct'], dtype=float), dtype=dtype, device=device)]
        self._ct_steps = [int(t) for t in np.asarray(state['ct_steps'])]
        self._hills = [
            (
                torch.as_tensor(np.asarray(state['hill_centers']), dtype=dtype, device=device),
                torch.as_tensor(np.asarray(state['hill_heights']), dtype=dtype, device=device),
                torch.as_tensor(np.asarray(state['hill_steps']), dtype=torch.int64, device=device),
                torch.as_tensor(np.asarray(state['hill_walkers']), dtype=torch.int64, device=device),
            )
        ]


# ---------------------------------------------------------------------------------------------- free energies
def _names_units(cvs: Sequence[CollectiveVariable] | None, k: int, names, units) -> tuple[tuple, tuple]:
    names = (
        tuple(names)
        if names is not None
        else tuple(cv.name for cv in cvs)
        if cvs
        else tuple(f'cv{i}' for i in range(k))
    )
    units = tuple(units) if units is not None else tuple(cv.unit for cv in cvs) if cvs else ('',) * k
    return names, units


def _result(edges, free_energy, error, temperature, periods, names, units, warnings_) -> PMF | FreeEnergySurface:
    """Pack a 1-D result as a :class:`PMF`, a 2-D one as a :class:`FreeEnergySurface` (estimator 'metadynamics')."""
    if len(edges) == 1:
        e = edges[0]
        return PMF(
            grid=0.5 * (e[1:] + e[:-1]),
            free_energy=free_energy,
            error=error,
            window_free_energies=np.zeros(0),
            overlap=np.zeros((0, 0)),
            counts=np.zeros((0, len(e) - 1)),
            temperature=float(temperature),
            period=periods[0],
            warnings=list(warnings_),
        )
    return FreeEnergySurface(
        edges=(edges[0], edges[1]),
        free_energy=free_energy,
        error=error,
        temperature=float(temperature),
        periods=(periods[0], periods[1]),
        names=names,
        units=units,
        estimator='metadynamics',
        warnings=list(warnings_),
    )


def _grid_edges(axis: np.ndarray) -> np.ndarray:
    """Bin edges around grid points (half a spacing beyond the end points)."""
    h = axis[1] - axis[0]
    return np.concatenate([axis - 0.5 * h, [axis[-1] + 0.5 * h]])


def bias_free_energy(
    bias: MetadynamicsBias, edges: Sequence[np.ndarray] | None = None, refine: int = 10
) -> PMF | FreeEnergySurface:
    """Free energy from the bias: ``F = -(gamma / (gamma - 1)) V`` (well-tempered) or ``-V`` (plain), min 0.

    Parameters
    ----------
    bias
        The metadynamics bias after the run.
    edges
        Bin edges per CV (internal units). Given: F per bin is ``-kT ln mean exp(-F / kT)`` over ``refine`` sub-points
        per bin and CV (the same bin integral as :func:`~aiida_mlff.core.surfaces.exact_free_energy`). None: F at
        the grid points (bins centred on them).
    refine
        Sub-points per bin and CV.

    Returns
    -------
    PMF or FreeEnergySurface
        One CV: a :class:`~aiida_mlff.core.wham.PMF` (window_free_energies, overlap, counts empty); two CVs: a
        :class:`~aiida_mlff.core.fes2d.FreeEnergySurface`. Errors are NaN (the bias alone gives none).
    """
    g = bias.bias_factor
    factor = 1.0 if g is None else g / (g - 1.0)
    kt = bias.kt
    if edges is None:
        axes = bias.grid_axes()
        edges = [_grid_edges(a) for a in axes]
        f = -factor * bias.bias_on_grid()
    else:
        edges = [np.asarray(e, dtype=float) for e in edges]
        t = (np.arange(refine) + 0.5) / refine
        subs = [(e[:-1, None] + np.diff(e)[:, None] * t[None, :]).reshape(-1) for e in edges]
        mesh = np.stack(np.meshgrid(*subs, indexing='ij'), axis=-1).reshape(-1, len(edges))
        v, _ = bias.interpolate(torch.as_tensor(mesh, dtype=torch.float64))
        f_sub = -factor * v.detach().cpu().double().numpy()
        shape = [n for e in edges for n in (len(e) - 1, refine)]
        log_w = (-f_sub / kt).reshape(shape)
        axes_sub = tuple(range(1, 2 * len(edges), 2))
        shift = log_w.max()
        f = -kt * (np.log(np.exp(log_w - shift).mean(axis=axes_sub)) + shift)
    f = f - f.min()
    names, units = _names_units(bias.cvs, len(edges), None, None)
    return _result(edges, f, np.full_like(f, np.nan), bias.temperature, bias.periods, names, units, [])


def _weighted_histogram(s: np.ndarray, log_w: np.ndarray, edges: list[np.ndarray], periods) -> np.ndarray:
    """Sum of ``exp(log_w)`` per bin of points s (N, k); periodic CVs are wrapped into ``[edges[0], + period)``."""
    s = s.copy()
    for d, p in enumerate(periods):
        if p is not None:
            s[:, d] = edges[d][0] + np.mod(s[:, d] - edges[d][0], p)
    hist, _ = np.histogramdd(s, bins=edges, weights=np.exp(log_w))
    return hist


def reweighted_free_energy(
    colvars: np.ndarray,
    bias_energy: np.ndarray,
    ct: np.ndarray,
    edges: Sequence[np.ndarray],
    temperature: float,
    periods: Sequence[float | None] | None = None,
    discard: float = 0.2,
    blocks: int = 5,
    names: Sequence[str] | None = None,
    units: Sequence[str] | None = None,
) -> PMF | FreeEnergySurface:
    """Free energy by reweighting metadynamics frames with ``exp((V(s_t, t) - c(t)) / kT)``.

    Parameters
    ----------
    colvars
        (F, W, k) CV values of F frames of W walkers (``result.colvars[:, :, :k]``); NaN frames are skipped.
    bias_energy
        (F, W) eV, the metadynamics bias of each frame at its time (``result.bias_energy``).
    ct
        (F,) eV, c(t) at each frame (``bias.ct_at(result.step)``).
    edges
        Bin edges per CV, internal units (1 or 2 arrays).
    temperature
        K.
    periods
        Per CV period or None (values are wrapped into the edges' range); default all None.
    discard
        Fraction of the frames dropped at the start (the bias is still building up).
    blocks
        Number of contiguous blocks of the remaining frames for the error.
    names, units
        Labels per CV (default ``cv0``, ... and '').

    Returns
    -------
    PMF or FreeEnergySurface
        F per bin (eV, min 0, NaN without samples); error: standard error of the block free energies (each block's
        histogram normalised to one; NaN where a block has no sample).
    """
    colvars = np.asarray(colvars, dtype=float)
    if colvars.ndim == 2:
        colvars = colvars[..., None]
    n_frames, _, k = colvars.shape
    edges = [np.asarray(e, dtype=float) for e in edges]
    if len(edges) != k:
        raise ValueError(f'{len(edges)} edge arrays for {k} CVs')
    periods = list(periods) if periods is not None else [None] * k
    kt = KB_EV * float(temperature)
    log_w = (np.asarray(bias_energy, dtype=float) - np.asarray(ct, dtype=float)[:, None]) / kt  # (F, W)
    start = round(discard * n_frames)
    chunks = np.array_split(np.arange(start, n_frames), blocks)
    ok = np.isfinite(log_w) & np.isfinite(colvars).all(-1)
    shift = log_w[start:][ok[start:]].max()
    hists = []
    for frames in chunks:
        m = ok[frames]
        hists.append(_weighted_histogram(colvars[frames][m], log_w[frames][m] - shift, edges, periods))
    hists = np.array(hists)
    total = hists.sum(0)
    with np.errstate(divide='ignore', invalid='ignore'):
        f = -kt * np.log(total / total.sum())
        f_blocks = -kt * np.log(hists / hists.sum(axis=tuple(range(1, k + 1)), keepdims=True))
    f = np.where(np.isfinite(f), f, np.nan)
    f = f - np.nanmin(f)
    error = np.full_like(f, np.nan)
    if blocks >= 2:
        with np.errstate(invalid='ignore'):
            error = np.where(np.isfinite(f_blocks).all(0), f_blocks.std(0, ddof=1) / np.sqrt(blocks), np.nan)
    warnings_ = [] if blocks >= 2 else ['fewer than two blocks: no error estimate']
    names, units = _names_units(None, k, names, units)
    return _result(edges, f, error, temperature, periods, names, units, warnings_)
