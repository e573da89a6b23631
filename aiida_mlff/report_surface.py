"""Two-CV free-energy surfaces: the map (contours, basins, minimum free-energy paths) and a text summary.

Reads the surface nodes of :mod:`aiida_mlff.calculations.surface` (``ArrayData``: ``x_edges``, ``y_edges`` in the CVs'
internal units, ``free_energy`` and ``error`` in eV, ``path_<k>_points`` in file units; attributes ``minima``,
``paths``, ``names``, ``file_units``), from 2-D umbrella sampling or 2-D metadynamics alike. Energies are shown in
kcal/mol.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use('Agg')

import matplotlib.pyplot as plt
import numpy as np

from aiida_mlff.core.colvars import FILE_UNITS

__all__ = ['is_surface', 'plot_surface', 'surface_lines']

EV_TO_KCAL_MOL = 23.060547830619


def is_surface(node) -> bool:
    """Whether ``node`` is a free-energy surface node (an ArrayData with edges and a free energy)."""
    names = set(node.get_arraynames()) if hasattr(node, 'get_arraynames') else set()
    return {'x_edges', 'y_edges', 'free_energy'} <= names


def _axes_in_file_units(node) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres of both CVs in their file units (degrees for angles, Å for lengths)."""
    out = []
    for key, unit in zip(('x_edges', 'y_edges'), node.base.attributes.get('units'), strict=True):
        edges = node.get_array(key) * FILE_UNITS[unit][1]
        out.append(0.5 * (edges[1:] + edges[:-1]))
    return out[0], out[1]


def _labels(node) -> list[str]:
    names = node.base.attributes.get('names')
    units = node.base.attributes.get('file_units')
    return [f'{n} ({u})' if u else n for n, u in zip(names, units, strict=True)]


def plot_surface(node, path: str | Path, levels_kcal: float = 1.0) -> Path:
    """The surface in kcal/mol as filled contours every ``levels_kcal``, its basins and the paths between them."""
    x, y = _axes_in_file_units(node)
    f = node.get_array('free_energy') * EV_TO_KCAL_MOL
    f = f - np.nanmin(f)
    top = float(np.nanmax(f))
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    levels = np.arange(0.0, top + levels_kcal, levels_kcal)
    filled = ax.contourf(x, y, f.T, levels=levels, cmap='viridis')
    ax.contour(x, y, f.T, levels=levels, colors='k', linewidths=0.3)
    fig.colorbar(filled, ax=ax, label='free energy (kcal/mol)')
    for k, minimum in enumerate(node.base.attributes.get('minima', [])):
        px, py = minimum['position']
        ax.plot(px, py, 'w*', markersize=11, markeredgecolor='k')
        ax.annotate(chr(ord('A') + k), (px, py), textcoords='offset points', xytext=(6, 6), color='w')
    for k, p in enumerate(node.base.attributes.get('paths', [])):
        points = node.get_array(f'path_{k}_points')
        ax.plot(points[:, 0], points[:, 1], 'w-', linewidth=1.5)
        ax.plot(*p['saddle'], 'rX', markersize=9, markeredgecolor='w')
    xlabel, ylabel = _labels(node)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    estimator = node.base.attributes.get('estimator', '')
    ax.set_title(f'free energy ({estimator}), {node.base.attributes.get("temperature"):g} K')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _kcal(value: float | None) -> str:
    return 'n/a' if value is None else f'{value * EV_TO_KCAL_MOL:.2f}'


def surface_lines(node) -> list[str]:
    """The basins (A, B, ...) and the barriers along the minimum free-energy paths, in kcal/mol, as text lines."""
    units = node.base.attributes.get('file_units')
    lines = []
    minima = node.base.attributes.get('minima', [])
    for k, m in enumerate(minima):
        where = ', '.join(f'{v:.4g} {u}'.rstrip() for v, u in zip(m['position'], units, strict=True))
        lines.append(f'basin {chr(ord("A") + k)} at ({where}): F = {_kcal(m["free_energy"])} ± {_kcal(m["error"])}')
    for p in node.base.attributes.get('paths', []):
        a, b = chr(ord('A') + p['from']), chr(ord('A') + p['to'])
        saddle = ', '.join(f'{v:.4g}' for v in p['saddle'])
        note = '' if p['converged'] else ' (string not converged)'
        lines.append(
            f'{a} -> {b}: barrier {_kcal(p["barrier_forward"])} ± {_kcal(p["error_forward"])}, back '
            f'{_kcal(p["barrier_reverse"])} ± {_kcal(p["error_reverse"])} kcal/mol, saddle at ({saddle}){note}'
        )
    return lines
