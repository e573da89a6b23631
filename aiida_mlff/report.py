"""Plots and the campaign report: parity, learning curve, active-learning history, PMF; HTML page and JSON summary.

All figures are drawn with matplotlib's Agg backend (no display needed). The report is built from the outputs of a
``mlff.campaign`` work chain, or from any mapping of output label to node with the same contract:

``dataset`` (TrainingSetData), ``potential`` (PotentialData), ``learning_curve`` (ArrayData: epoch, train_loss,
validation_loss, learning_rate, time_s), ``history`` (Dict: ``iterations`` and ``stop_reason``), ``pmf`` (XyData:
x the CV in its file unit (degrees, Å), y ``free_energy`` and ``error`` in eV, optional ``member_<m>`` in eV),
``barriers`` (Dict of :func:`aiida_mlff.calculations.states.pmf_states`: ``unit``, ``states`` and ``transitions`` by
name, ``experiment_kcal_mol``, ``warnings``), ``rates`` (Dict: transition name -> ``forward``/``backward`` in s^-1)
and ``scan`` (ArrayData: ``value`` in the CV's file unit, ``mlff`` and ``dft`` in kcal/mol relative to their minimum).
Outputs that are missing are skipped and named in the report. A ``barriers`` Dict of the older form (one
``{'eV', 'kcal_mol', 'error_kcal_mol'}`` entry per barrier, e.g. ``trans`` and ``cis``) is read as forward barriers.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use('Agg')

import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    'EV_TO_KCAL_MOL',
    'barrier_lines',
    'barrier_tables',
    'campaign_outputs',
    'parity_data',
    'plot_history',
    'plot_learning_curve',
    'plot_parity',
    'plot_pmf',
    'write_campaign_report',
]

#: kcal/mol per eV.
EV_TO_KCAL_MOL = 23.060547830619
_DPI = 110


# ------------------------------------------------------------------------------------------------------------ inputs
def campaign_outputs(node_or_outputs: Any) -> dict[str, Any]:
    """Return the campaign outputs as a dict of link label to node.

    Parameters
    ----------
    node_or_outputs
        A process node (its outputs are read from its outgoing ``RETURN``/``CREATE`` links) or a mapping of output
        label to node.
    """
    if isinstance(node_or_outputs, Mapping):
        return dict(node_or_outputs)
    from aiida import orm

    if isinstance(node_or_outputs, orm.ProcessNode):
        from aiida.common.links import LinkType

        links = node_or_outputs.base.links.get_outgoing(link_type=(LinkType.RETURN, LinkType.CREATE)).all()
        return {link.link_label: link.node for link in links}
    raise TypeError(f'expected a process node or a mapping of output label to node, got {type(node_or_outputs)!r}')


def _identity(node: Any) -> dict[str, Any]:
    """PK, UUID and type of a node (for the report's provenance links)."""
    return {
        'pk': getattr(node, 'pk', None),
        'uuid': getattr(node, 'uuid', None),
        'type': type(node).__name__,
    }


def parity_data(potential, frames, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Reference and predicted energies and forces on labelled frames.

    Parameters
    ----------
    potential
        A :class:`aiida_mlff.core.models.Potential` (or a ``PotentialData`` node, loaded here).
    frames
        ``ase.Atoms`` with a calculator holding reference ``energy`` [eV] and ``forces`` [eV/Å], or a
        ``TrainingSetData`` node.
    batch_size
        Structures per forward pass.

    Returns
    -------
    dict
        ``energy_ref``, ``energy_pred`` [eV/atom], ``forces_ref``, ``forces_pred`` [eV/Å, all components flattened]
        and ``natoms``.
    """
    from aiida_mlff.core.atoms import AtomsBatch

    if hasattr(potential, 'load_potential'):
        potential = potential.load_potential()
    if hasattr(frames, 'to_atoms'):
        frames = frames.to_atoms()
    frames = list(frames)
    e_ref = np.array([a.get_potential_energy() for a in frames])
    f_ref = np.concatenate([a.get_forces() for a in frames])
    natoms = np.array([len(a) for a in frames])
    e_pred, f_pred = [], []
    for start in range(0, len(frames), batch_size):
        batch = AtomsBatch.from_atoms(
            frames[start : start + batch_size], dtype=potential.dtype, device=potential.device
        )
        out = potential.evaluate(batch, forces=True)
        e_pred.append(out['energy'].detach().cpu().double().numpy())
        f_pred.append(out['forces'].detach().cpu().double().numpy())
    return {
        'energy_ref': e_ref / natoms,
        'energy_pred': np.concatenate(e_pred) / natoms,
        'forces_ref': f_ref.ravel(),
        'forces_pred': np.concatenate(f_pred).ravel(),
        'natoms': natoms,
    }


# ------------------------------------------------------------------------------------------------------------ plots
def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches='tight', facecolor='white')
    plt.close(fig)
    return path


def plot_parity(reference: np.ndarray, predicted: np.ndarray, path: str | Path, quantity: str, unit: str) -> Path:
    """Parity plot of ``predicted`` against ``reference`` with the RMSE and MAE in the title; return the path.

    Parameters
    ----------
    reference, predicted
        Values of the same shape, in ``unit``.
    path
        PNG file to write.
    quantity
        Axis name, e.g. ``'Energy per atom'``.
    unit
        Unit of the values, e.g. ``'eV/atom'``.
    """
    reference = np.asarray(reference, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    error = predicted - reference
    rmse = float(np.sqrt(np.mean(error**2)))
    mae = float(np.mean(np.abs(error)))
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    lo = float(min(reference.min(), predicted.min()))
    hi = float(max(reference.max(), predicted.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color='0.5', lw=1, ls='--', zorder=1)
    ax.scatter(reference, predicted, s=8, alpha=0.6, color='tab:blue', edgecolors='none', zorder=2)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect('equal')
    ax.set_xlabel(f'{quantity}, DFT ({unit})')
    ax.set_ylabel(f'{quantity}, MLFF ({unit})')
    ax.set_title(f'RMSE {rmse:.3g}, MAE {mae:.3g} {unit}', fontsize=10)
    return _save(fig, path)


def plot_learning_curve(curve: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Training and validation loss per epoch (log scale), with the learning rate on a second axis.

    Parameters
    ----------
    curve
        Arrays by name: ``epoch`` and any of ``train_loss``, ``validation_loss``, ``learning_rate``; an
        ``ArrayData`` node works too.
    path
        PNG file to write.
    """
    if hasattr(curve, 'get_arraynames'):
        curve = {name: curve.get_array(name) for name in curve.get_arraynames()}
    epoch = np.asarray(curve['epoch'], dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, color in (('train_loss', 'tab:blue'), ('validation_loss', 'tab:orange')):
        if name in curve:
            ax.plot(epoch, np.asarray(curve[name], dtype=float), color=color, label=name.replace('_', ' '))
    ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.set_ylabel('loss')
    handles, labels = ax.get_legend_handles_labels()
    if 'learning_rate' in curve:
        twin = ax.twinx()
        twin.plot(epoch, np.asarray(curve['learning_rate'], dtype=float), color='0.4', ls=':', label='learning rate')
        twin.set_ylabel('learning rate')
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc='upper right', fontsize=9)
    ax.set_title('Learning curve', fontsize=11)
    return _save(fig, path)


def plot_history(history: Mapping[str, Any], path: str | Path) -> Path:
    """Active-learning history: fractions of accurate/candidate/failed frames, dataset size and validation errors.

    Parameters
    ----------
    history
        ``{'iterations': [...], 'stop_reason': str}`` as in the ``history`` output (a ``Dict`` node works too).
    path
        PNG file to write.
    """
    if hasattr(history, 'get_dict'):
        history = history.get_dict()
    rows = list(history.get('iterations', []))
    if not rows:
        raise ValueError('the history has no iterations')
    it = np.array([row.get('iteration', k) for k, row in enumerate(rows)], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 3.8))
    bottom = np.zeros(len(rows))
    for key, color in (('accurate', 'tab:green'), ('candidate', 'tab:orange'), ('failed', 'tab:red')):
        values = np.array([float(row.get(key, 0.0)) for row in rows])
        axes[0].bar(it, values, bottom=bottom, color=color, label=key, width=0.7)
        bottom += values
    axes[0].set_ylim(0, 1.05)
    axes[0].set_xlabel('iteration')
    axes[0].set_ylabel('fraction of explored frames')
    axes[0].legend(fontsize=8, loc='lower right')
    axes[1].plot(it, [row.get('n_structures', np.nan) for row in rows], 'o-', label='structures in dataset')
    axes[1].plot(it, [row.get('n_labelled', np.nan) for row in rows], 's--', label='labelled this iteration')
    axes[1].set_xlabel('iteration')
    axes[1].set_ylabel('count')
    axes[1].legend(fontsize=8)
    val = [row.get('validation', {}) or {} for row in rows]
    e = np.array([v.get('energy_rmse_meV_per_atom', np.nan) for v in val], dtype=float)
    f = np.array([v.get('force_mae_meV_per_A', np.nan) for v in val], dtype=float)
    axes[2].plot(it, e, 'o-', color='tab:blue', label='energy RMSE (meV/atom)')
    axes[2].plot(it, f, 's-', color='tab:purple', label='force MAE (meV/Å)')
    axes[2].set_xlabel('iteration')
    axes[2].set_ylabel('validation error')
    if np.isfinite(np.concatenate([e, f])).any():
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(it)
    stop = history.get('stop_reason')
    fig.suptitle('Active learning' + (f' (stopped: {stop})' if stop else ''), fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------- barriers
def barrier_tables(barriers: Mapping[str, Any] | None) -> tuple[dict[str, dict], dict[str, dict]]:
    """The ``states`` and ``transitions`` tables of a ``barriers`` dict, by name, in CV order (both empty for None).

    States are ordered by their minimum and transitions by their transition state (a stored Dict does not keep the
    order of its keys). A dict of the older form (one ``{'eV', 'kcal_mol', 'error_kcal_mol'}`` entry per barrier)
    gives no states and its barriers, by name, as transitions with their forward values only.
    """
    barriers = barriers or {}
    if 'transitions' in barriers:
        states = barriers.get('states') or {}
        transitions = barriers['transitions'] or {}
        return (
            dict(sorted(states.items(), key=lambda item: item[1]['minimum'])),
            dict(sorted(transitions.items(), key=lambda item: item[1]['transition_state'])),
        )
    old = {
        name: {'forward_kcal_mol': v['kcal_mol'], 'forward_error_kcal_mol': v.get('error_kcal_mol'), **v}
        for name, v in sorted(barriers.items())
        if isinstance(v, Mapping) and 'kcal_mol' in v
    }
    return {}, old


def _rates_of(rates: Mapping[str, Any] | None, name: str) -> tuple[float | None, float | None]:
    """(forward, backward) TST rates in s^-1 of the transition ``name`` (an older ``rates`` Dict: forward only)."""
    value = (rates or {}).get(name)
    if isinstance(value, Mapping):
        return value.get('forward'), value.get('backward')
    return value, None


def _pm(value: float | None, error: float | None, digits: int = 2) -> str:
    """``'1.23 ± 0.04'`` (the error left out when unknown)."""
    if value is None:
        return '-'
    return f'{value:.{digits}f}' + (f' ± {error:.{digits}f}' if error is not None else '')


def _barrier_text(t: Mapping[str, Any]) -> str:
    """``'forward 1.23 ± 0.04, backward 0.98 ± 0.05 kcal/mol'`` of one transition."""
    text = f'forward {_pm(t.get("forward_kcal_mol"), t.get("forward_error_kcal_mol"))}'
    if t.get('backward_kcal_mol') is not None:
        text += f', backward {_pm(t["backward_kcal_mol"], t.get("backward_error_kcal_mol"))}'
    return text + ' kcal/mol'


def _transition_text(name: str, t: Mapping[str, Any], unit: str) -> str:
    """One transition: its states, TS position and barriers."""
    where = []
    if 'from' in t:
        where.append(f'{t["from"]} -> {t["to"]}')
    if t.get('transition_state') is not None:
        where.append(f'TS at {t["transition_state"]:.4g} {unit}'.rstrip())
    return f'{name}' + (f' ({", ".join(where)})' if where else '') + f': {_barrier_text(t)}'


def barrier_lines(barriers: Mapping[str, Any], rates: Mapping[str, Any] | None = None) -> list[str]:
    """Lines of text naming every state and every transition (barriers, rates, experiment) of a ``barriers`` dict.

    Parameters
    ----------
    barriers
        The ``barriers`` Dict's contents (see the module docstring; the older form works too).
    rates
        The ``rates`` Dict's contents (s^-1), or None for the rates inside ``barriers``.
    """
    states, transitions = barrier_tables(barriers)
    unit = barriers.get('unit', '')
    experiment = barriers.get('experiment_kcal_mol') or {}
    lines = []
    if states:
        lines.append(f'States ({len(states)}), free energy relative to the lowest:')
        for name, st in states.items():
            lo, hi = st['range']
            lines.append(
                f'  {name}: {_pm(st["kcal_mol"], st.get("error_kcal_mol"))} kcal/mol, minimum at '
                f'{st["minimum"]:.4g} {unit}, range [{lo:.4g}, {hi:.4g}]'
                + (' (named)' if st.get('named') else '')
                + (f'; experiment {float(experiment[name]):.3g} kcal/mol' if name in experiment else '')
            )
    if transitions:
        lines.append(f'Transitions ({len(transitions)}):')
    for name, t in transitions.items():
        text = '  ' + _transition_text(name, t, unit)
        if rates is None:
            forward, backward = t.get('rate_forward'), t.get('rate_backward')
        else:
            forward, backward = _rates_of(rates, name)
        if forward is not None:
            text += f'; TST rate {float(forward):.3g} s^-1' + (
                f' forward, {float(backward):.3g} s^-1 backward' if backward is not None else ''
            )
        if name in experiment:
            text += f'; experiment {float(experiment[name]):.3g} kcal/mol'
        lines.append(text)
    lines.extend(f'Warning: {w}' for w in barriers.get('warnings') or [])
    return lines


def _pmf_arrays(pmf) -> dict[str, np.ndarray]:
    """Arrays of a PMF ``XyData`` node (or a plain mapping) by name: the x array and every y array."""
    if isinstance(pmf, Mapping):
        return {k: np.asarray(v, dtype=float) for k, v in pmf.items()}
    x_name, x = pmf.get_x()[0], pmf.get_x()[1]
    arrays = {x_name: np.asarray(x, dtype=float)}
    for name, values, _ in pmf.get_y():
        arrays[name] = np.asarray(values, dtype=float)
    return arrays


def plot_pmf(
    pmf,
    path: str | Path,
    barriers: Mapping[str, Any] | None = None,
    scan: Mapping[str, np.ndarray] | None = None,
    x_name: str | None = None,
) -> Path:
    """The PMF in kcal/mol (relative to its minimum) with its error band, committee members and reference points.

    Parameters
    ----------
    pmf
        ``XyData`` (or mapping) with x the CV in its file unit (degrees, Å), y ``free_energy`` and ``error`` [eV]
        and optional ``member_<m>`` [eV].
    path
        PNG file to write.
    barriers
        The ``barriers`` dict: its states and transition states are marked and named on the curve, every
        transition's barriers are listed in the legend, and its ``experiment_kcal_mol`` values are drawn as
        horizontal lines.
    scan
        Arrays ``value`` [the CV's file unit], ``mlff`` and ``dft`` [kcal/mol, relative to their minimum] of a
        relaxed scan (an ``ArrayData`` node works too), drawn as points.
    x_name
        Name of the x array (default: the XyData's x, or the first array of a mapping).
    """
    arrays = _pmf_arrays(pmf)
    unit = (barriers or {}).get('unit', '')
    if hasattr(pmf, 'get_x'):
        x_name, unit = x_name or pmf.get_x()[0], pmf.get_x()[2]
    if x_name not in arrays:
        x_name = next(iter(arrays))
    x = arrays[x_name]
    order = np.argsort(x)
    x = x[order]
    free = arrays['free_energy'][order] * EV_TO_KCAL_MOL
    offset = np.nanmin(free)
    free -= offset
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for name in sorted(k for k in arrays if k.startswith('member_')):
        member = arrays[name][order] * EV_TO_KCAL_MOL
        ax.plot(x, member - np.nanmin(member), color='0.7', lw=0.8, zorder=1)
    if 'error' in arrays:
        error = arrays['error'][order] * EV_TO_KCAL_MOL
        ax.fill_between(x, free - error, free + error, color='tab:blue', alpha=0.25, lw=0, label='PMF ± error')
    label = 'PMF (umbrella sampling + WHAM)'
    states, transitions = barrier_tables(barriers)
    if transitions:
        both = any(t.get('backward_kcal_mol') is not None for t in transitions.values())
        label += '\nbarriers' + (', forward / backward' if both else '') + ' (kcal/mol):'
    for name, t in transitions.items():
        label += f'\n  {name}: {_pm(t.get("forward_kcal_mol"), t.get("forward_error_kcal_mol"))}'
        if t.get('backward_kcal_mol') is not None:
            label += f' / {_pm(t["backward_kcal_mol"], t.get("backward_error_kcal_mol"))}'
    ax.plot(x, free, color='tab:blue', lw=2, label=label, zorder=3)
    marks = [(name, st['minimum'], st['kcal_mol'], 'o') for name, st in states.items()]
    marks += [
        (name, t['transition_state'], states[t['from']]['kcal_mol'] + t['forward_kcal_mol'], '^')
        for name, t in transitions.items()
        if t.get('transition_state') is not None and t.get('from') in states
    ]
    for name, position, value, marker in marks:
        ax.plot([position], [value], marker, color='black', ms=5, zorder=5)
        ax.annotate(name, xy=(position, value), xytext=(0, 6), textcoords='offset points', ha='center', fontsize=8)
    if scan is not None:
        if hasattr(scan, 'get_arraynames'):
            scan = {name: scan.get_array(name) for name in scan.get_arraynames()}
        angle = np.asarray(scan['value' if 'value' in scan else 'angle'], dtype=float)  # CV file unit
        if 'dft' in scan:
            ax.plot(angle, scan['dft'], 'o', color='black', ms=5, label='DFT, relaxed scan', zorder=4)
        if 'mlff' in scan:
            ax.plot(angle, scan['mlff'], 'x', color='tab:red', ms=6, label='MLFF, relaxed scan', zorder=4)
    experiment = (barriers or {}).get('experiment_kcal_mol') or {}
    for k, (name, value) in enumerate(sorted(experiment.items())):
        ax.axhline(float(value), color=('tab:green', 'tab:purple', 'tab:brown')[k % 3], ls='--', lw=1, zorder=2)
        ax.annotate(
            f'experiment, {name}: {float(value):.1f} kcal/mol',
            xy=(x.min(), float(value)),
            xytext=(2, 2),
            textcoords='offset points',
            fontsize=8,
        )
    ax.set_xlabel(f'{x_name} ({unit})' if unit else x_name)
    ax.set_ylabel('free energy (kcal/mol)')
    ax.set_xlim(x.min(), x.max())
    ax.legend(fontsize=8, loc='best')
    ax.set_title('Potential of mean force', fontsize=11)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------------ report
def _metrics_of(outputs: Mapping[str, Any], parity: dict[str, np.ndarray] | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if parity is not None:
        e = parity['energy_pred'] - parity['energy_ref']
        f = parity['forces_pred'] - parity['forces_ref']
        metrics = {
            'energy_rmse_meV_per_atom': 1000 * float(np.sqrt(np.mean(e**2))),
            'energy_mae_meV_per_atom': 1000 * float(np.mean(np.abs(e))),
            'force_rmse_meV_per_A': 1000 * float(np.sqrt(np.mean(f**2))),
            'force_mae_meV_per_A': 1000 * float(np.mean(np.abs(f))),
        }
    return metrics


def _dft_sources(dataset) -> dict[str, Any]:
    """The DFT calculations behind the dataset: from its ``sources`` and, when stored, from a provenance query."""
    sources = [s for s in dataset.sources if s]
    result: dict[str, Any] = {'from_dataset_sources': sorted(set(sources))}
    if getattr(dataset, 'is_stored', False):
        from aiida_mlff.provenance import dft_uuids_behind

        found = dft_uuids_behind(dataset)
        result['from_provenance_query'] = sorted(found)
        result['sources_in_provenance'] = set(sources) <= found  # every label traced to a PwCalculation in the graph
        result['in_provenance_not_in_dataset'] = sorted(found - set(sources))  # e.g. labels dropped as duplicates
    return result


def write_campaign_report(node_or_outputs: Any, directory: str | Path) -> dict[str, Path]:
    """Write the figures, ``summary.json`` and ``index.html`` of a campaign into ``directory``.

    Parameters
    ----------
    node_or_outputs
        A ``mlff.campaign`` work chain node, or a mapping of output label to node with the same contract (see the
        module docstring).
    directory
        Folder to write into (created if missing).

    Returns
    -------
    dict
        Paths of what was written, by name: ``parity_energy``, ``parity_forces``, ``learning_curve``, ``history``,
        ``pmf`` (PNGs, each only when its inputs are there), ``summary`` (JSON) and ``html``.
    """
    outputs = campaign_outputs(node_or_outputs)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    missing: list[str] = []
    summary: dict[str, Any] = {'outputs': {label: _identity(node) for label, node in sorted(outputs.items())}}
    if not isinstance(node_or_outputs, Mapping):
        summary['campaign'] = _identity(node_or_outputs)

    dataset, potential = outputs.get('dataset'), outputs.get('potential')
    parity = None
    if dataset is not None and potential is not None:
        parity = parity_data(potential, dataset)
        paths['parity_energy'] = plot_parity(
            parity['energy_ref'], parity['energy_pred'], directory / 'parity_energy.png', 'Energy per atom', 'eV/atom'
        )
        paths['parity_forces'] = plot_parity(
            parity['forces_ref'], parity['forces_pred'], directory / 'parity_forces.png', 'Force component', 'eV/Å'
        )
        summary['parity_on_final_dataset'] = _metrics_of(outputs, parity)
    else:
        missing.append('parity plots (need dataset and potential)')
    if dataset is not None:
        summary['dataset'] = {
            **_identity(dataset),
            'n_structures': int(dataset.n_structures),
            'elements': list(dataset.elements),
            'dft_calculations': _dft_sources(dataset),
        }
    if potential is not None:
        attributes = potential.base.attributes
        summary['potential'] = {
            **_identity(potential),
            'architecture': attributes.get('architecture', None),
            'committee_size': attributes.get('committee_size', None),
            'cutoff_A': attributes.get('cutoff', None),
            'validation_metrics': {
                k: v for k, v in (attributes.get('metrics', {}) or {}).items() if k != 'per_element'
            },
        }
    if 'learning_curve' in outputs:
        paths['learning_curve'] = plot_learning_curve(outputs['learning_curve'], directory / 'learning_curve.png')
    else:
        missing.append('learning curve')
    if 'history' in outputs:
        history = outputs['history'].get_dict()
        paths['history'] = plot_history(history, directory / 'history.png')
        summary['history'] = {
            **_identity(outputs['history']),
            'n_iterations': len(history.get('iterations', [])),
            'stop_reason': history.get('stop_reason'),
            'final_iteration': (history.get('iterations') or [None])[-1],
        }
    else:
        missing.append('active-learning history')
    barriers = outputs['barriers'].get_dict() if 'barriers' in outputs else None
    if 'pmf' in outputs:
        paths['pmf'] = plot_pmf(outputs['pmf'], directory / 'pmf.png', barriers=barriers, scan=outputs.get('scan'))
        summary['pmf'] = _identity(outputs['pmf'])
    else:
        missing.append('PMF')
    if barriers is not None:
        summary['barriers'] = {**_identity(outputs['barriers']), **barriers}
    if 'rates' in outputs:
        summary['rates_per_s'] = {**_identity(outputs['rates']), **outputs['rates'].get_dict()}
    if 'scan' in outputs:
        summary['scan'] = _identity(outputs['scan'])
    summary['missing'] = missing
    summary['figures'] = {name: path.name for name, path in paths.items()}

    paths['summary'] = directory / 'summary.json'
    paths['summary'].write_text(json.dumps(summary, indent=2, sort_keys=True, default=_json_default))
    paths['html'] = directory / 'index.html'
    paths['html'].write_text(_html(summary, paths), encoding='utf-8')
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ------------------------------------------------------------------------------------------------------------- html
_CSS = """
body { font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
code { font-size: 0.9em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
.missing { color: #a33; }
"""


def _node_cell(info: Mapping[str, Any] | None) -> str:
    if not info or info.get('pk') is None:
        return '-'
    return f'{html.escape(str(info["type"]))}&lt;{info["pk"]}&gt;<br><code>{html.escape(str(info["uuid"]))}</code>'


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f'{value:.{digits}g}'
    return html.escape(str(value))


def _html(summary: Mapping[str, Any], paths: Mapping[str, Path]) -> str:
    rows: list[tuple[str, str, str]] = []  # (quantity, value, node)
    outputs = summary.get('outputs', {})
    dataset = summary.get('dataset')
    if dataset:
        sources = dataset['dft_calculations']['from_dataset_sources']
        rows.append(('structures in the final dataset', _fmt(dataset['n_structures']), _node_cell(dataset)))
        rows.append(('DFT calculations behind it', _fmt(len(sources)), _node_cell(dataset)))
    potential = summary.get('potential')
    if potential:
        rows.append(('committee size', _fmt(potential['committee_size']), _node_cell(potential)))
        for key, value in sorted(potential.get('validation_metrics', {}).items()):
            if isinstance(value, int | float):
                rows.append((f'validation {key}', _fmt(float(value)), _node_cell(potential)))
    for key, value in sorted(summary.get('parity_on_final_dataset', {}).items()):
        rows.append((f'final dataset {key}', _fmt(value), _node_cell(potential)))
    barriers = summary.get('barriers')
    rates = summary.get('rates_per_s')
    if barriers:
        states, transitions = barrier_tables(barriers)
        unit = html.escape(barriers.get('unit', ''))
        experiment = barriers.get('experiment_kcal_mol', {}) or {}
        for name, st in states.items():
            text = (
                f'{_pm(st["kcal_mol"], st.get("error_kcal_mol"))} kcal/mol, minimum at {st["minimum"]:.4g} {unit}, '
                f'range [{st["range"][0]:.4g}, {st["range"][1]:.4g}] {unit}'
            )
            if name in experiment:
                text += f'; experiment {float(experiment[name]):.3g} kcal/mol'
            rows.append((f'state {html.escape(name)}', text, _node_cell(barriers)))
        for name, t in transitions.items():
            text = html.escape(_barrier_text(t))
            where = f' ({html.escape(t["from"])} &rarr; {html.escape(t["to"])})' if 'from' in t else ''
            if t.get('transition_state') is not None:
                text += f', transition state at {t["transition_state"]:.4g} {unit}'
            if name in experiment:
                text += f'; experiment {float(experiment[name]):.3g} kcal/mol'
            rows.append((f'barrier {html.escape(name)}{where}', text, _node_cell(barriers)))
            forward, backward = _rates_of(rates, name) if rates else (t.get('rate_forward'), t.get('rate_backward'))
            if forward is not None:
                text = f'{float(forward):.3g} s<sup>-1</sup>'
                if backward is not None:
                    text = f'forward {text}, backward {float(backward):.3g} s<sup>-1</sup>'
                rows.append((f'rate {html.escape(name)} (TST)', text, _node_cell(rates or barriers)))
        for warning in barriers.get('warnings') or []:
            rows.append(('warning', html.escape(warning), _node_cell(barriers)))
    history = summary.get('history')
    if history:
        rows.append(('active-learning iterations', _fmt(history['n_iterations']), _node_cell(history)))
        rows.append(('stop reason', _fmt(history['stop_reason']), _node_cell(history)))

    parts = [
        '<!DOCTYPE html>',
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        '<title>aiida-mlff campaign report</title>',
        f'<style>{_CSS}</style></head><body>',
        '<h1>aiida-mlff campaign report</h1>',
    ]
    campaign = summary.get('campaign')
    if campaign:
        parts.append(f'<p>Campaign: {_node_cell(campaign)}</p>')
    parts.append('<h2>Key numbers</h2>')
    parts.append('<table><tr><th>quantity</th><th>value</th><th>node (PK, UUID)</th></tr>')
    parts.extend(f'<tr><td>{q}</td><td>{v}</td><td>{n}</td></tr>' for q, v, n in rows)
    parts.append('</table>')
    parts.append('<h2>Figures</h2>')
    captions = {
        'parity_energy': 'Energy per atom, MLFF against DFT, on the final dataset',
        'parity_forces': 'Force components, MLFF against DFT, on the final dataset',
        'learning_curve': 'Learning curve of the final training',
        'history': 'Active-learning history',
        'pmf': 'Potential of mean force with its error band, relaxed-scan points and experimental barriers',
    }
    for name, caption in captions.items():
        if name in paths:
            file = html.escape(paths[name].name)
            parts.append(
                f'<figure><a href="{file}"><img src="{file}" alt="{html.escape(caption)}"></a>'
                f'<figcaption>{html.escape(caption)}</figcaption></figure>'
            )
    missing = summary.get('missing', [])
    if missing:
        parts.append('<p class="missing">Not in this report (output missing): ' + html.escape(', '.join(missing)))
        parts.append('</p>')
    parts.append('<h2>Outputs</h2><table><tr><th>output</th><th>node (PK, UUID)</th></tr>')
    parts.extend(
        f'<tr><td>{html.escape(label)}</td><td>{_node_cell(info)}</td></tr>' for label, info in outputs.items()
    )
    parts.append('</table>')
    if dataset:
        calcs = dataset['dft_calculations']
        parts.append(
            f'<h2>DFT calculations behind the final dataset ({len(calcs["from_dataset_sources"])})</h2>'
            '<p>UUIDs of the PwCalculation nodes whose labels entered the dataset; '
            '<code>verdi process show UUID</code> shows each one.</p>'
        )
        if 'from_provenance_query' in calcs:
            n_query = len(calcs['from_provenance_query'])
            traced = 'every label above among them' if calcs['sources_in_provenance'] else 'NOT every label above'
            extra = calcs['in_provenance_not_in_dataset']
            text = f'A provenance query finds {n_query} PwCalculation ancestors of the dataset, {traced}'
            if extra:
                text += f', and {len(extra)} whose labels are not in it (dropped, e.g. as exact duplicates on merging)'
            parts.append(f'<p>{html.escape(text)}.</p>')
        parts.append('<details><summary>list</summary><ul>')
        parts.extend(f'<li><code>{html.escape(uuid)}</code></li>' for uuid in calcs['from_dataset_sources'])
        parts.append('</ul></details>')
    parts.append(f'<p><a href="{html.escape(paths["summary"].name)}">summary.json</a></p>')
    parts.append('</body></html>')
    return '\n'.join(parts) + '\n'
