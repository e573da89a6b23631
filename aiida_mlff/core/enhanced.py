"""From options in file units to the biases of an MD job, and back: the one place that sets up enhanced sampling.

The metadynamics options (:data:`aiida_mlff.core.options.METADYNAMICS`) speak the CVs' file units (degrees, Å) and
leave widths, heights and grids to defaults that follow from the CV and the temperature; :func:`metadynamics_job_bias`
turns them into the job-file spec of a :class:`~aiida_mlff.core.metadynamics.MetadynamicsBias` in internal units,
and :func:`bias_from_spec` builds the engine's bias from any job-file bias spec (harmonic or metadynamics).

Defaults, in this order: the range of a periodic CV is its whole period; a width is 1/30 of the range; a hill
starts ``kT / 2`` high; the grid spacing is ``grid_spacing`` widths and reaches 3 widths beyond a non-periodic range
(so hills near its edges keep their tails), where a harmonic wall of ``wall`` kT per width squared keeps the walkers
near the grid.

Units: internal CV units (Å, rad) in job files, file units (Å, deg) in options; eV; K; steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .colvars import CollectiveVariable, HarmonicBias, cv_from_spec

__all__ = [
    'METAD_KEYS',
    'bias_from_spec',
    'free_energy_edges',
    'metadynamics_errors',
    'metadynamics_free_energies',
    'metadynamics_job_bias',
    'surface_summary',
]

KB_EV = 8.617333262e-5  # eV/K
WIDTHS_PER_RANGE = 30
#: the keys of a metadynamics bias in a job file
METAD_KEYS = ('type', 'cvs', 'grid', 'height', 'widths', 'pace', 'bias_factor', 'wall', 'walkers')


def _per_cv(value: Any, n: int) -> list[float] | None:
    """A number or a list of numbers as one value per CV (a single number serves every CV); None if it cannot."""
    if value is None:
        return None
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) == 1:
        return values * n
    return values if len(values) == n else None


def _ranges(cvs: Sequence[CollectiveVariable], ranges: Any) -> list[list[float]] | None:
    if ranges is None:
        return [None] * len(cvs)
    nested = bool(ranges) and isinstance(ranges[0], list | tuple)
    listed = [list(r) for r in ranges] if nested else [list(ranges)]
    return listed if len(listed) == len(cvs) else None


def metadynamics_errors(cvs: Sequence[CollectiveVariable], parameters: Mapping, where: str = 'parameters') -> list[str]:
    """Problems of metadynamics options (defaults filled in) with these CVs, each naming its field."""
    errors = []
    if len(cvs) not in (1, 2):
        errors.append(f'{where}: metadynamics on one or two CVs, got {len(cvs)}')
        return errors
    ranges = _ranges(cvs, parameters.get('range'))
    if ranges is None:
        errors.append(f'{where}.range: give one [lower, upper] per CV ({len(cvs)}), got {parameters.get("range")!r}')
    else:
        for k, (cv, r) in enumerate(zip(cvs, ranges, strict=True)):
            if r is None and cv.period is None:
                errors.append(f'{where}.range: {cv.name} is not periodic: give its [lower, upper] in {cv.file_unit}')
            elif r is not None and cv.period is not None and r[1] - r[0] > cv.file_period * (1 + 1e-9):
                errors.append(f'{where}.range[{k}]: wider than the period of {cv.name} ({cv.file_period:g})')
    width = parameters.get('width')
    if width is not None and _per_cv(width, len(cvs)) is None:
        errors.append(f'{where}.width: give one width per CV ({len(cvs)}), got {width!r}')
    return errors


def _axis(cv: CollectiveVariable, file_range: list[float] | None, width: float, spacing: float) -> list[float]:
    """``(lower, upper, n_points)`` of one CV's grid in internal units."""
    if cv.period is not None and (file_range is None or math.isclose(file_range[1] - file_range[0], cv.file_period)):
        lo = -cv.period / 2 if file_range is None else float(cv.to_internal(file_range[0]))
        n = max(8, math.ceil(cv.period / (spacing * width)))
        return [lo, lo + cv.period, n]
    lo, hi = (float(v) for v in cv.to_internal(list(file_range)))  # an arc of a periodic CV is held by walls too
    pad = 3.0 * width  # hills near an edge keep their tails on the grid
    n = max(8, math.ceil((hi - lo + 2 * pad) / (spacing * width)) + 1)
    return [lo - pad, hi + pad, n]


def metadynamics_job_bias(cvs: Sequence[CollectiveVariable], parameters: Mapping) -> dict[str, Any]:
    """The job-file spec (internal units) of the metadynamics bias that ``parameters`` (file units) describe.

    Parameters
    ----------
    cvs
        One or two CVs.
    parameters
        :data:`~aiida_mlff.core.options.METADYNAMICS` options with defaults filled in (checked by
        :func:`metadynamics_errors`).
    """
    errors = metadynamics_errors(cvs, parameters)
    if errors:
        raise ValueError('; '.join(errors))
    kt = KB_EV * float(parameters['temperature'])
    ranges = _ranges(cvs, parameters.get('range'))
    widths, grid = [], []
    given = _per_cv(parameters.get('width'), len(cvs))
    for k, (cv, r) in enumerate(zip(cvs, ranges, strict=True)):
        extent = cv.period if r is None else float(cv.to_internal(r[1]) - cv.to_internal(r[0]))
        width = extent / WIDTHS_PER_RANGE if given is None else float(cv.to_internal(given[k]))
        widths.append(width)
        grid.append(_axis(cv, r, width, float(parameters['grid_spacing'])))
    walls = [
        float(parameters['wall']) * kt / w**2 if cv.period is None or g[1] - g[0] < cv.period * (1 - 1e-9) else 0.0
        for cv, w, g in zip(cvs, widths, grid, strict=True)
    ]
    return {
        'type': 'metadynamics',
        'cvs': [cv.spec for cv in cvs],
        'grid': grid,
        'height': float(parameters['height']) if parameters.get('height') is not None else 0.5 * kt,
        'widths': widths,
        'pace': int(parameters['pace']),
        'bias_factor': parameters['bias_factor'],
        'wall': max(walls) if any(walls) else None,
        'walkers': int(parameters['walkers']),
    }


def bias_from_spec(spec: Mapping, temperature: float):
    """The engine's bias of a job-file spec: harmonic ``{cv, centers, kappa}`` or ``{type: metadynamics, ...}``."""
    if spec.get('type') == 'metadynamics':
        from .metadynamics import MetadynamicsBias

        return MetadynamicsBias(
            [cv_from_spec(c) for c in spec['cvs']],
            [tuple(g) for g in spec['grid']],
            height=float(spec['height']),
            widths=np.asarray(spec['widths'], dtype=float),
            pace=int(spec['pace']),
            bias_factor=spec.get('bias_factor'),
            temperature=float(temperature),
            wall=spec.get('wall'),
        )
    return HarmonicBias(cv_from_spec(spec['cv']), spec['centers'], spec['kappa'])


def free_energy_edges(job_bias: Mapping, bins: int) -> list[np.ndarray]:
    """Histogram edges (internal units) of the free energy of a metadynamics job bias: ``bins`` per CV.

    A periodic CV over its whole period; otherwise the user's range (the grid without its 3-width pads).
    """
    edges = []
    for spec, (lo, hi, _), width in zip(job_bias['cvs'], job_bias['grid'], job_bias['widths'], strict=True):
        cv = cv_from_spec(spec)
        full = cv.period is not None and math.isclose(hi - lo, cv.period, rel_tol=1e-9)
        if not full:
            lo, hi = lo + 3.0 * width, hi - 3.0 * width
        edges.append(np.linspace(lo, hi, int(bins) + 1))
    return edges


def metadynamics_free_energies(
    job_bias: Mapping,
    temperature: float,
    colvars: np.ndarray,
    bias_energy: np.ndarray,
    ct: np.ndarray,
    hills: Mapping[str, np.ndarray],
    bins: int,
    discard: float,
    blocks: int,
):
    """The reweighted free energy (with block errors) and the one from the final bias, on the same bins.

    Parameters
    ----------
    job_bias
        The job-file spec of the bias (:func:`metadynamics_job_bias`).
    temperature
        K.
    colvars
        (F, W, k) CV values per frame and walker, internal units (the metadynamics CVs first).
    bias_energy
        (F, W) eV, the metadynamics bias of each frame when it was recorded.
    ct
        (F,) eV, c(t) at each frame.
    hills
        ``centers`` (H, k) and ``heights`` (H,) eV of every hill: the final bias is rebuilt from them exactly.
    bins, discard, blocks
        Bins per CV, fraction of frames discarded at the start, blocks for the error.

    Returns
    -------
    tuple
        ``(reweighted, from_bias)``: :class:`~aiida_mlff.core.wham.PMF` for one CV, else
        :class:`~aiida_mlff.core.fes2d.FreeEnergySurface`.
    """
    import torch

    from .metadynamics import bias_free_energy, reweighted_free_energy

    cvs = [cv_from_spec(c) for c in job_bias['cvs']]
    edges = free_energy_edges(job_bias, bins)
    k = len(cvs)
    reweighted = reweighted_free_energy(
        colvars[..., :k],
        bias_energy,
        ct,
        edges,
        temperature,
        periods=[cv.period for cv in cvs],
        discard=discard,
        blocks=blocks,
        names=[cv.name for cv in cvs],
        units=[cv.unit for cv in cvs],
    )
    bias = bias_from_spec(job_bias, temperature)
    if len(hills['heights']):
        bias.add_hills(torch.as_tensor(np.asarray(hills['centers'])), torch.as_tensor(np.asarray(hills['heights'])))
    return reweighted, bias_free_energy(bias, edges)


def surface_summary(fes, max_minima: int = 4) -> dict[str, Any]:
    """The basins of a 2-D surface and the minimum free-energy paths from the deepest one to the next ones.

    Parameters
    ----------
    fes
        A :class:`~aiida_mlff.core.fes2d.FreeEnergySurface`.
    max_minima
        At most this many basins (deepest first), each but the first joined to the first by a string.

    Returns
    -------
    dict
        ``minima``: ``[{position (2,), free_energy, error, depth}]`` (CV internal units, eV); ``paths``:
        ``[{to, points (n, 2), free_energy (n,), saddle (2,), barrier_forward, barrier_reverse, error_forward,
        error_reverse, converged}]`` (eV; ``to`` the index of the other minimum).
    """
    minima = fes.minima()[:max_minima]
    rows = [
        {
            'position': np.asarray(m.position, dtype=float),
            'free_energy': float(m.free_energy),
            'error': float(m.error),
            'depth': float(m.depth),
        }
        for m in minima
    ]
    paths = []
    for k in range(1, len(minima)):
        path = fes.path(minima[0].position, minima[k].position)
        paths.append(
            {
                'to': k,
                'points': np.asarray(path.points),
                'free_energy': np.asarray(path.free_energy),
                'saddle': np.asarray(path.saddle),
                'barrier_forward': float(path.barrier_forward),
                'barrier_reverse': float(path.barrier_reverse),
                'error_forward': float(path.error_forward),
                'error_reverse': float(path.error_reverse),
                'converged': bool(path.converged),
            }
        )
    return {'minima': rows, 'paths': paths}
