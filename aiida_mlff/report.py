"""Plots and the campaign report: parity, learning curve, active-learning history, PMF; HTML page and JSON summary.

All figures are drawn with matplotlib's Agg backend (no display needed). The report is built from the outputs of a
``mlff.campaign`` work chain, or from any mapping of output label to node with the same contract:

``dataset`` (TrainingSetData), ``potential`` (PotentialData), ``learning_curve`` (ArrayData: epoch, train_loss,
validation_loss, learning_rate, time_s), ``history`` (Dict: ``iterations`` and ``stop_reason``), ``pmf`` (XyData:
x the CV in its file unit (degrees, Å), y ``free_energy`` and ``error`` in eV, optional ``member_<m>`` in eV),
``barriers`` (Dict of :func:`aiida_mlff.calculations.states.pmf_states`: ``unit``, ``states`` and ``transitions`` by
name, ``experiment_kcal_mol``, ``warnings``), ``rates`` (Dict: transition name -> ``forward``/``backward`` in s^-1),
``scan`` (ArrayData: ``value`` in the CV's file unit, ``mlff`` and ``dft`` in kcal/mol relative to their minimum),
``convergence`` (Dict: the verdict, see :func:`convergence_lines`) and ``comparison`` (Dict of
:func:`aiida_mlff.calculations.states.compare_campaigns`: the barriers against another campaign's, by name). The
PMF's ``estimator`` attribute (``'wham'``, ``'mbar'`` or ``'metadynamics'``; absent means WHAM) is named in the
report. Outputs that are missing are skipped and
named in the report. A ``barriers`` Dict of the older form (one ``{'eV', 'kcal_mol', 'error_kcal_mol'}`` entry per
barrier, e.g. ``trans`` and ``cis``) is read as forward barriers.

Parity plots use only frames no training saw (:func:`validation_frames`, :func:`held_out_dataset`).
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
    'comparison_lines',
    'convergence_lines',
    'criterion_text',
    'failed_criteria_text',
    'held_out_dataset',
    'parity_data',
    'plot_history',
    'plot_learning_curve',
    'plot_parity',
    'plot_parity_sets',
    'plot_pmf',
    'pmf_estimator',
    'potential_metrics',
    'validation_frames',
    'write_campaign_report',
]

#: kcal/mol per eV.
EV_TO_KCAL_MOL = 23.060547830619
_DPI = 110
#: how the report names each PMF estimator (the PMF's ``estimator`` attribute)
_ESTIMATORS = {'wham': 'WHAM', 'mbar': 'MBAR', 'metadynamics': 'well-tempered metadynamics (reweighted)'}


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


# ----------------------------------------------------------------------------------------------- frames for parity
#: link label of the campaign's pw.x labelling of the relaxed-scan geometries (the held-out check frames)
SCAN_LABEL_LINK = 'label_scan'


def _training_options(potential) -> dict[str, Any] | None:
    """The ``training.options`` of a potential: its ``training`` attribute when set, else the file's metadata."""
    training = potential.base.attributes.get('training', None)
    if not isinstance(training, Mapping):
        training = potential.load_potential().metadata.get('training')
    options = (training or {}).get('options') if isinstance(training, Mapping) else None
    return dict(options) if isinstance(options, Mapping) else None


def _training_splits(potential) -> list[tuple[Any, dict[str, Any], bool]]:
    """``(dataset, training options, started from a parent potential)`` of every training behind ``potential``.

    A potential made by a training job (an input ``dataset``) gives one; a committee combined from members (a
    calcfunction with potential inputs) gives one per member; anything else (an imported file) gives none.
    """
    from aiida.common.links import LinkType

    from aiida_mlff.data.potential import PotentialData

    creator = getattr(potential, 'creator', None)
    if creator is None:
        return []
    links = creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
    inputs = {link.link_label: link.node for link in links}
    if 'dataset' in inputs:
        options = _training_options(potential)
        parent = 'parent_potential' in inputs
        return [(inputs['dataset'], options, parent)] if options is not None else []
    splits: list[tuple[Any, dict[str, Any], bool]] = []
    for label in sorted(inputs):
        if isinstance(inputs[label], PotentialData):
            splits.extend(_training_splits(inputs[label]))
    return splits


def validation_frames(potential) -> tuple[list | None, dict[str, Any]]:
    """The frames of the training dataset that no training behind ``potential`` used, and where they come from.

    The split is recomputed with :func:`aiida_mlff.core.training.split_indices` from the ``validation_fraction`` and
    ``seed`` of each training (a committee of separately trained members keeps only the frames every member held
    out).

    Returns
    -------
    tuple
        ``(frames, info)``: ``frames`` a list of ``ase.Atoms`` (None when the split cannot be recovered) and ``info``
        with ``dataset`` (its identity), ``indices``, ``n_trainings`` and a ``note``; or only a ``reason``.
    """
    from aiida_mlff.core.training import split_indices

    splits = _training_splits(potential)
    if not splits:
        return None, {'reason': 'the training job and its options behind the potential were not found'}
    datasets = {dataset.uuid for dataset, _, _ in splits}
    if len(datasets) != 1:
        return None, {'reason': 'the committee members were trained on different datasets'}
    dataset = splits[0][0]
    n_frames = int(dataset.n_structures)
    held: set[int] | None = None
    for _, options, _ in splits:
        _, val = split_indices(n_frames, float(options.get('validation_fraction', 0.0)), int(options.get('seed', 0)))
        held = set(val.tolist()) if held is None else held & set(val.tolist())
    indices = sorted(held or ())
    if not indices:
        return None, {'reason': 'no frame of the training dataset was held out from every training'}
    frames = dataset.to_atoms()
    info = {
        'dataset': _identity(dataset),
        'indices': indices,
        'n_trainings': len(splits),
        'note': f'validation split of the training dataset: {len(indices)} of {n_frames} frames, never trained on',
    }
    if any(parent for _, _, parent in splits):
        info['note'] += ' (by this training: it started from a parent potential, which may have seen them)'
    return [frames[k] for k in indices], info


def held_out_dataset(node_or_outputs: Any) -> tuple[Any, dict[str, Any]]:
    """The pw.x labels of the campaign's relaxed-scan check (``label_scan``): frames no training ever saw.

    Returns
    -------
    tuple
        ``(dataset, info)``: the ``dataset`` output of the campaign's latest finished ``label_scan`` work chain (None
        when there is none, e.g. for a mapping of outputs) and ``info`` with a ``note`` or a ``reason``.
    """
    from aiida import orm

    if not isinstance(node_or_outputs, orm.ProcessNode):
        return None, {'reason': 'not a campaign node: its relaxed-scan labels cannot be looked up'}
    from aiida.common.links import LinkType

    links = node_or_outputs.base.links.get_outgoing(
        link_type=LinkType.CALL_WORK, link_label_filter=SCAN_LABEL_LINK
    ).all()
    done = [link.node for link in links if link.node.is_finished_ok and 'dataset' in link.node.outputs]
    if not done:
        return None, {'reason': 'the campaign has no finished relaxed-scan labelling (label_scan)'}
    labels = max(done, key=lambda node: node.ctime)
    dataset = labels.outputs.dataset
    note = f'held-out pw.x labels of the relaxed-scan check geometries: {dataset.n_structures} frames, never trained on'
    return dataset, {'dataset': _identity(dataset), 'labelled_by': _identity(labels), 'note': note}


# ------------------------------------------------------------------------------------------------------------ plots
def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches='tight', facecolor='white')
    plt.close(fig)
    return path


def _errors(reference: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE) of ``predicted`` against ``reference``, in their unit."""
    error = np.asarray(predicted, dtype=float) - np.asarray(reference, dtype=float)
    return float(np.sqrt(np.mean(error**2))), float(np.mean(np.abs(error)))


def plot_parity_sets(
    sets: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, quantity: str, unit: str, title: str = ''
) -> Path:
    """Parity plot of several sets of frames, each in its own colour with its RMSE and MAE in the legend.

    Parameters
    ----------
    sets
        ``(reference, predicted)`` values in ``unit`` by the name shown in the legend (e.g. ``'validation, 12
        frames'``); an empty name draws one set without a legend.
    path
        PNG file to write.
    quantity
        Axis name, e.g. ``'Energy per atom'``.
    unit
        Unit of the values, e.g. ``'eV/atom'``.
    title
        Figure title (default: the RMSE and MAE of a single unnamed set, else ``quantity``).
    """
    values = {name: (np.asarray(r, dtype=float), np.asarray(p, dtype=float)) for name, (r, p) in sets.items()}
    every = np.concatenate([np.concatenate(pair) for pair in values.values()])
    lo, hi = float(every.min()), float(every.max())
    pad = 0.05 * (hi - lo or 1.0)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color='0.5', lw=1, ls='--', zorder=1)
    colors = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red')
    for k, (name, (reference, predicted)) in enumerate(values.items()):
        rmse, mae = _errors(reference, predicted)
        label = f'{name}\nRMSE {rmse:.3g}, MAE {mae:.3g} {unit}' if name else None
        marker = 'o' if k == 0 else '^'
        ax.scatter(reference, predicted, s=10, alpha=0.6, color=colors[k % 4], marker=marker, lw=0, label=label)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect('equal')
    ax.set_xlabel(f'{quantity}, DFT ({unit})')
    ax.set_ylabel(f'{quantity}, MLFF ({unit})')
    if any(values):
        ax.legend(fontsize=7, loc='upper left')
    if not title:
        single = len(values) == 1 and not next(iter(values))
        title = (
            'RMSE {:.3g}, MAE {:.3g} {}'.format(*_errors(*next(iter(values.values()))), unit) if single else quantity
        )
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


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
    return plot_parity_sets({'': (reference, predicted)}, path, quantity, unit)


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


def _difference_text(d: Mapping[str, Any]) -> str:
    """``'1.40 ± 0.12 (gas phase 1.12 ± 0.09): +0.28 ± 0.15'`` of one compared quantity (kcal/mol)."""
    if d.get('difference') is None:
        return f'{_pm(d.get("value"), d.get("error"))} against {_pm(d.get("reference"), d.get("reference_error"))}'
    change = f'{d["difference"]:+.2f}' + (
        f' ± {d["difference_error"]:.2f} ({d["z"]:.1f} sigma)' if d.get('difference_error') else ''
    )
    return f'{_pm(d["value"], d.get("error"))} against {_pm(d["reference"], d.get("reference_error"))}: {change}'


def comparison_lines(comparison: Mapping[str, Any]) -> list[str]:
    """Lines of text of a campaign's ``comparison`` (its barriers minus another campaign's, by name; kcal/mol)."""
    label = comparison.get('label', 'reference')
    lines = [f'Compared with {label} (this - {label}, kcal/mol; errors of independent runs added in quadrature):']
    for name, entry in (comparison.get('transitions') or {}).items():
        lines.extend(f'  {name} {direction}: {_difference_text(d)}' for direction, d in entry.items())
    for name, entry in (comparison.get('states') or {}).items():
        lines.append(f'  state {name}: {_difference_text(entry["free_energy"])}')
    for key, where in (('only_here', 'this campaign'), ('only_there', label)):
        if comparison.get(key):
            lines.append(f'  only in {where}: {", ".join(comparison[key])}')
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


def _mark_states(ax, states: Mapping[str, dict], transitions: Mapping[str, dict]) -> None:
    """Mark and name every state minimum and transition state on the PMF axes (kcal/mol)."""
    marks = [(name, st['minimum'], st['kcal_mol'], 'o') for name, st in states.items()]
    marks += [
        (name, t['transition_state'], states[t['from']]['kcal_mol'] + t['forward_kcal_mol'], '^')
        for name, t in transitions.items()
        if t.get('transition_state') is not None and t.get('from') in states
    ]
    for name, position, value, marker in marks:
        ax.plot([position], [value], marker, color='black', ms=5, zorder=5)
        ax.annotate(name, xy=(position, value), xytext=(0, 6), textcoords='offset points', ha='center', fontsize=8)


def _draw_references(ax, x: np.ndarray, scan: Any, barriers: Mapping[str, Any] | None) -> None:
    """Draw the relaxed-scan points (DFT, MLFF) and the experimental barriers as horizontal lines."""
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
    estimator = _ESTIMATORS.get(pmf_estimator(pmf), pmf_estimator(pmf).upper())
    label = f'PMF ({estimator})' if pmf_estimator(pmf) == 'metadynamics' else f'PMF (umbrella sampling + {estimator})'
    states, transitions = barrier_tables(barriers)
    if transitions:
        both = any(t.get('backward_kcal_mol') is not None for t in transitions.values())
        label += '\nbarriers' + (', forward / backward' if both else '') + ' (kcal/mol):'
    for name, t in transitions.items():
        label += f'\n  {name}: {_pm(t.get("forward_kcal_mol"), t.get("forward_error_kcal_mol"))}'
        if t.get('backward_kcal_mol') is not None:
            label += f' / {_pm(t["backward_kcal_mol"], t.get("backward_error_kcal_mol"))}'
    ax.plot(x, free, color='tab:blue', lw=2, label=label, zorder=3)
    _mark_states(ax, states, transitions)
    _draw_references(ax, x, scan, barriers)
    ax.set_xlabel(f'{x_name} ({unit})' if unit else x_name)
    ax.set_ylabel('free energy (kcal/mol)')
    ax.set_xlim(x.min(), x.max())
    ax.legend(fontsize=8, loc='best')
    ax.set_title(f'Potential of mean force ({estimator})', fontsize=11)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------ convergence
def _number_text(value: Any, unit: str = '') -> str:
    """``'0.62 kcal/mol'``, ``'0.04'``, or ``'-'`` for None."""
    if value is None:
        return '-'
    text = f'{float(value):.3g}' if isinstance(value, int | float) else str(value)
    return f'{text} {unit}'.rstrip()


def criterion_text(name: str, criterion: Mapping[str, Any]) -> str:
    """``'barrier_error 0.62 kcal/mol, target <= 0.3 kcal/mol: FAIL (trans 0.2, cis 0.62)'`` of one criterion."""
    unit = criterion.get('unit') or ''
    value = criterion.get('value')
    text = f'{name} {_number_text(value, unit)}, target <= {_number_text(criterion.get("target"), unit)}: '
    text += 'pass' if criterion.get('passed') else 'FAIL'
    if value is None:
        text += ' (not measurable yet: needs two rounds)' if name == 'pmf_change' else ' (not measured)'
    per = criterion.get('per_barrier') or {}
    if per:
        text += ' (' + ', '.join(f'{key} {_number_text(val)}' for key, val in sorted(per.items())) + ')'
    return text


def failed_criteria_text(convergence: Mapping[str, Any]) -> str:
    """``'barrier_error 0.62 > 0.3 kcal/mol; pmf_change ...'``: every failed criterion with value and target."""
    criteria = convergence.get('criteria') or {}
    parts = []
    for name in convergence.get('failed') or []:
        c = criteria.get(name, {})
        unit = c.get('unit') or ''
        parts.append(f'{name} {_number_text(c.get("value"))} > {_number_text(c.get("target"), unit)}')
    return '; '.join(parts)


def _budget_text(convergence: Mapping[str, Any]) -> str:
    """``'labels used 52 of a budget of 60'`` (or ``'... (no budget)'``)."""
    budget = convergence.get('label_budget')
    used = convergence.get('labels_used', '?')
    return f'labels used {used} of a budget of {budget}' if budget is not None else f'labels used {used} (no budget)'


def convergence_lines(convergence: Mapping[str, Any]) -> list[str]:
    """The verdict of a campaign's ``convergence`` output as lines of text, the verdict first.

    Parameters
    ----------
    convergence
        The ``convergence`` Dict's contents: ``converged``, ``reason``, ``failed``, ``criteria`` (by name:
        ``value``, ``target``, ``passed``, ``unit``, optional ``per_barrier``), ``labels_used``, ``label_budget``,
        ``rounds_run``, ``max_rounds``, ``best_round``, ``final_round``, ``worse_rounds``.
    """
    converged = bool(convergence.get('converged'))
    lines = [f'Converged: {"yes" if converged else "NO"} ({convergence.get("reason") or "no reason given"})']
    criteria = convergence.get('criteria') or {}
    lines.extend(f'  {criterion_text(name, c)}' for name, c in sorted(criteria.items()))
    lines.append(
        f'  {_budget_text(convergence)}; rounds run {convergence.get("rounds_run", "?")} of at most '
        f'{convergence.get("max_rounds", "?")}'
    )
    worse = convergence.get('worse_rounds') or []
    lines.append(
        f'  best round {convergence.get("best_round", "?")}, final round {convergence.get("final_round", "?")}'
        + (f'; rounds worse than the best: {", ".join(str(r) for r in worse)}' if worse else '')
    )
    return lines


# ------------------------------------------------------------------------------------------------------------ report
def potential_metrics(metrics: Mapping[str, Any] | None) -> tuple[str | None, dict[str, float]]:
    """The scalar errors of a potential's ``metrics`` attribute and the split they were measured on.

    The attribute is ``{'train': {...}, 'validation': {...}}`` (either may be None); the validation errors are
    preferred. The older flat form (the errors themselves) is read as validation errors.

    Returns
    -------
    tuple
        ``(split, errors)``: ``'validation'``, ``'train'`` or None (no errors), and the numbers by name (e.g.
        ``energy_rmse_meV_per_atom``, ``force_mae_meV_per_A``, ``n_structures``).
    """
    metrics = metrics or {}

    def scalars(values: Mapping[str, Any]) -> dict[str, float]:
        return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    for split in ('validation', 'train'):
        if isinstance(metrics.get(split), Mapping) and scalars(metrics[split]):
            return split, scalars(metrics[split])
    flat = scalars(metrics)
    return ('validation' if flat else None), flat


def pmf_estimator(pmf: Any) -> str:
    """The estimator that produced a PMF node (attribute ``estimator``: wham, mbar or metadynamics; default WHAM)."""
    attributes = getattr(getattr(pmf, 'base', None), 'attributes', None)
    return str(attributes.get('estimator', 'wham') if attributes is not None else 'wham').lower()


def _parity_errors(parity: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Energy (meV/atom) and force (meV/Å) RMSE and MAE of :func:`parity_data`'s arrays."""
    e_rmse, e_mae = _errors(parity['energy_ref'], parity['energy_pred'])
    f_rmse, f_mae = _errors(parity['forces_ref'], parity['forces_pred'])
    return {
        'energy_rmse_meV_per_atom': 1000 * e_rmse,
        'energy_mae_meV_per_atom': 1000 * e_mae,
        'force_rmse_meV_per_A': 1000 * f_rmse,
        'force_mae_meV_per_A': 1000 * f_mae,
    }


def _parity_section(node_or_outputs: Any, potential, directory: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Parity plots on the validation frames and the held-out relaxed-scan frames (never on the training set).

    Returns the paths written (``parity_energy``, ``parity_forces``; none when neither set of frames is found) and,
    by set (``validation``, ``held_out``), what each plot uses: a ``note``, the frame count and the errors, or the
    ``reason`` it is missing.
    """
    frames, validation = validation_frames(potential)
    held_out, held_info = held_out_dataset(node_or_outputs)
    found = {'validation': (frames, validation), 'held_out': (held_out, held_info)}
    loaded = potential.load_potential()
    sets, info = {}, {}
    for key, (source, entry) in found.items():
        info[key] = dict(entry)
        if source is None:
            continue
        parity = parity_data(loaded, source)
        info[key].update(n_structures=len(parity['natoms']), plots=['parity_energy', 'parity_forces'])
        info[key].update(_parity_errors(parity))
        name = f'{"validation" if key == "validation" else "held-out pw.x (relaxed scan)"}, {len(parity["natoms"])}'
        sets[name + ' frames'] = parity
    paths: dict[str, Path] = {}
    if sets:
        for quantity, unit, array, label in (
            ('energy', 'eV/atom', 'energy', 'Energy per atom'),
            ('forces', 'eV/Å', 'forces', 'Force component'),
        ):
            pairs = {name: (p[f'{array}_ref'], p[f'{array}_pred']) for name, p in sets.items()}
            title = f'{label}: frames never trained on'
            paths[f'parity_{quantity}'] = plot_parity_sets(
                pairs, directory / f'parity_{quantity}.png', label, unit, title
            )
    return paths, info


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


REPLAY_WHEN = ('before', 'after')


def _potential_summary(potential) -> dict[str, Any]:
    """Identity, architecture, errors (validation preferred) and calibration of a ``PotentialData``."""
    attributes = potential.base.attributes
    split, errors = potential_metrics(attributes.get('metrics', {}))
    summary = {
        **_identity(potential),
        'architecture': attributes.get('architecture', None),
        'committee_size': attributes.get('committee_size', None),
        'cutoff_A': attributes.get('cutoff', None),
        'metrics_split': split,
        'metrics': errors,
    }
    calibration = attributes.get('calibration', None)
    if isinstance(calibration, Mapping):
        summary['calibration'] = dict(calibration)
    replay = attributes.get('replay', None)
    if isinstance(replay, Mapping):
        summary['replay'] = {when: potential_metrics({'validation': replay.get(when)})[1] for when in REPLAY_WHEN}
    return summary


def _history_summary(history_node) -> dict[str, Any]:
    """Iterations and stop reason of the active-learning ``history`` Dict."""
    history = history_node.get_dict()
    return {
        **_identity(history_node),
        'n_iterations': len(history.get('iterations', [])),
        'stop_reason': history.get('stop_reason'),
        'final_iteration': (history.get('iterations') or [None])[-1],
    }


def _model_section(node_or_outputs: Any, outputs: Mapping[str, Any], directory: Path, summary: dict) -> dict:
    """Parity plots, dataset and potential entries of the summary; return the paths written."""
    dataset, potential = outputs.get('dataset'), outputs.get('potential')
    paths: dict[str, Path] = {}
    if potential is not None:
        paths, summary['parity'] = _parity_section(node_or_outputs, potential, directory)
        summary['potential'] = _potential_summary(potential)
    if not paths:
        reasons = [v['reason'] for v in summary.get('parity', {}).values() if 'reason' in v] or ['no potential']
        summary['missing'].append(f'parity plots ({"; ".join(reasons)})')
    if dataset is not None:
        summary['dataset'] = {
            **_identity(dataset),
            'n_structures': int(dataset.n_structures),
            'elements': list(dataset.elements),
            'dft_calculations': _dft_sources(dataset),
        }
    return paths


def _process_section(outputs: Mapping[str, Any], directory: Path, summary: dict) -> dict[str, Path]:
    """Learning curve, history, PMF, barriers, rates and scan entries of the summary; return the paths written."""
    paths: dict[str, Path] = {}
    if 'learning_curve' in outputs:
        paths['learning_curve'] = plot_learning_curve(outputs['learning_curve'], directory / 'learning_curve.png')
    else:
        summary['missing'].append('learning curve')
    if 'history' in outputs:
        paths['history'] = plot_history(outputs['history'].get_dict(), directory / 'history.png')
        summary['history'] = _history_summary(outputs['history'])
    else:
        summary['missing'].append('active-learning history')
    barriers = outputs['barriers'].get_dict() if 'barriers' in outputs else None
    if 'pmf' in outputs:
        paths['pmf'] = plot_pmf(outputs['pmf'], directory / 'pmf.png', barriers=barriers, scan=outputs.get('scan'))
        summary['pmf'] = {**_identity(outputs['pmf']), 'estimator': pmf_estimator(outputs['pmf'])}
    else:
        summary['missing'].append('PMF')
    if barriers is not None:
        summary['barriers'] = {**_identity(outputs['barriers']), **barriers}
    if 'rates' in outputs:
        summary['rates_per_s'] = {**_identity(outputs['rates']), **outputs['rates'].get_dict()}
    if 'scan' in outputs:
        summary['scan'] = _identity(outputs['scan'])
    if 'comparison' in outputs:
        summary['comparison'] = {**_identity(outputs['comparison']), **outputs['comparison'].get_dict()}
    return paths


def write_campaign_report(node_or_outputs: Any, directory: str | Path) -> dict[str, Path]:
    """Write the figures, ``summary.json`` and ``index.html`` of a campaign into ``directory``.

    The convergence verdict comes first (``convergence`` in the summary, a banner on the page). Parity plots use
    only frames no training saw: the validation split of the potential's training dataset and, for a campaign
    node, the pw.x labels of its relaxed-scan check (``label_scan``); ``parity`` in the summary says which.

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
    summary: dict[str, Any] = {'outputs': {label: _identity(node) for label, node in sorted(outputs.items())}}
    summary['missing'] = []
    if 'convergence' in outputs:
        summary['convergence'] = {**_identity(outputs['convergence']), **outputs['convergence'].get_dict()}
    else:
        summary['missing'].append('convergence verdict')
    if not isinstance(node_or_outputs, Mapping):
        summary['campaign'] = _identity(node_or_outputs)
    paths = _model_section(node_or_outputs, outputs, directory, summary)
    paths.update(_process_section(outputs, directory, summary))
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
.banner { padding: 0.6em 1em; margin: 1em 0; border-left: 6px solid; }
.banner.ok { background: #e8f5e9; border-color: #2e7d32; }
.banner.fail { background: #fdecea; border-color: #c62828; }
.fail-cell { color: #c62828; font-weight: bold; }
"""

#: columns of the per-round table of the convergence verdict: (key in a round's row, heading)
_ROUND_COLUMNS = (
    ('labels_used', 'labels used'),
    ('barrier_error', 'barrier error'),
    ('untrusted_fraction', 'untrusted fraction'),
    ('pmf_change', 'PMF change'),
)


def _node_cell(info: Mapping[str, Any] | None) -> str:
    if not info or info.get('pk') is None:
        return '-'
    return f'{html.escape(str(info["type"]))}&lt;{info["pk"]}&gt;<br><code>{html.escape(str(info["uuid"]))}</code>'


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f'{value:.{digits}g}'
    return html.escape(str(value))


def _criteria_table(convergence: Mapping[str, Any]) -> list[str]:
    """The criteria of the verdict as an HTML table: value, target, pass/FAIL."""
    parts = ['<table><tr><th>criterion</th><th>value</th><th>target (&le;)</th><th>result</th></tr>']
    for name, c in sorted((convergence.get('criteria') or {}).items()):
        unit = c.get('unit') or ''
        value = _number_text(c.get('value'), unit)
        per = c.get('per_barrier') or {}
        if per:
            value += ' (' + ', '.join(f'{k} {_number_text(v)}' for k, v in sorted(per.items())) + ')'
        result = 'pass' if c.get('passed') else '<span class="fail-cell">FAIL</span>'
        parts.append(
            f'<tr><td>{html.escape(name)}</td><td>{html.escape(value)}</td>'
            f'<td>{html.escape(_number_text(c.get("target"), unit))}</td><td>{result}</td></tr>'
        )
    parts.append('</table>')
    return parts


def _then_text(row: Mapping[str, Any]) -> str:
    """What the round after this one did (labels and a refit, longer sampling) and why; empty for the last."""
    step = row.get('next') or {}
    if row.get('converged') or not step:
        return ''
    what = [w for w, on in (('labels + refit', step.get('label')), ('longer sampling', step.get('sample_more'))) if on]
    return f'{" and ".join(what) or "nothing"}: {step.get("why", "")}'


def _rounds_table(convergence: Mapping[str, Any]) -> list[str]:
    """The per-round table of the verdict (the best and the worse rounds marked)."""
    rounds = convergence.get('rounds') or []
    if not rounds:
        return []
    best, worse = convergence.get('best_round'), set(convergence.get('worse_rounds') or [])
    criteria = convergence.get('criteria') or {}
    units = {key: (criteria.get(key) or {}).get('unit') for key, _ in _ROUND_COLUMNS}
    heads = ''.join(
        f'<th>{head}{f" ({html.escape(units[key])})" if units[key] else ""}</th>' for key, head in _ROUND_COLUMNS
    )
    parts = [
        f'<table><tr><th>round</th>{heads}<th>windows (walkers) untrusted</th><th>production</th><th>converged</th>'
        '<th>then</th><th>note</th></tr>'
    ]
    for row in sorted(rounds, key=lambda r: r.get('round', 0)):
        number = row.get('round')
        cells = ''.join(f'<td>{html.escape(_number_text(row.get(key)))}</td>' for key, _ in _ROUND_COLUMNS)
        windows = f'{_number_text(row.get("windows_untrusted"))} of {_number_text(row.get("n_windows"))}'
        note = 'best' if number == best else 'worse than the best' if number in worse else ''
        production = f'{row.get("sampling_factor", 1)}x'
        parts.append(
            f'<tr><td>{_fmt(number)}</td>{cells}<td>{windows}</td><td>{production}</td>'
            f'<td>{"yes" if row.get("converged") else "no"}</td><td>{html.escape(_then_text(row))}</td>'
            f'<td>{note}</td></tr>'
        )
    parts.append('</table>')
    return parts


def _convergence_html(convergence: Mapping[str, Any] | None) -> list[str]:
    """The verdict banner (converged / NOT converged, the failed criteria), its criteria and per-round tables."""
    if not convergence:
        return [
            '<div class="banner fail"><strong>No convergence verdict</strong>: this campaign has no '
            '<code>convergence</code> output.</div>'
        ]
    converged = bool(convergence.get('converged'))
    reason = html.escape(str(convergence.get('reason') or ''))
    head = 'Converged' if converged else 'NOT converged'
    banner = f'<div class="banner {"ok" if converged else "fail"}"><strong>{head}</strong>: {reason}'
    if not converged and convergence.get('failed'):
        banner += f'<br>Failed: {html.escape(failed_criteria_text(convergence))}'
    worse = convergence.get('worse_rounds') or []
    banner += (
        f'<br>{html.escape(_budget_text(convergence))}; best round {_fmt(convergence.get("best_round", "?"))}, '
        f'final round {_fmt(convergence.get("final_round", "?"))}'
        + (f'; rounds worse than the best: {html.escape(", ".join(map(str, worse)))}' if worse else '')
        + f'<br><small>verdict: {_node_cell(convergence)}</small></div>'
    )
    return [banner, '<h2>Convergence</h2>', *_criteria_table(convergence), *_rounds_table(convergence)]


def _model_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Key-number rows of the dataset, the potential (errors, calibration) and the parity frames."""
    rows: list[tuple[str, str, str]] = []
    dataset, potential = summary.get('dataset'), summary.get('potential')
    if dataset:
        sources = dataset['dft_calculations']['from_dataset_sources']
        rows.append(('structures in the final dataset', _fmt(dataset['n_structures']), _node_cell(dataset)))
        rows.append(('DFT calculations behind it', _fmt(len(sources)), _node_cell(dataset)))
    if potential:
        rows.append(('committee size', _fmt(potential['committee_size']), _node_cell(potential)))
        split = potential.get('metrics_split') or 'validation'
        for key, value in sorted(potential.get('metrics', {}).items()):
            rows.append((f'{split} {key} (training job)', _fmt(float(value)), _node_cell(potential)))
        for key, value in sorted((potential.get('calibration') or {}).items()):
            if isinstance(value, int | float):
                rows.append((f'calibration {key}', _fmt(float(value)), _node_cell(potential)))
        for when in REPLAY_WHEN:  # fine-tuned: the parent's own data, before and after (forgetting shown)
            for key in ('energy_mae_meV_per_atom', 'force_mae_meV_per_A'):
                value = ((potential.get('replay') or {}).get(when) or {}).get(key)
                if value is not None:
                    rows.append((f'replay set {when} fine-tuning: {key}', _fmt(float(value)), _node_cell(potential)))
    for key, entry in (summary.get('parity') or {}).items():
        name = 'validation frames' if key == 'validation' else 'held-out pw.x frames'
        if 'reason' in entry:
            rows.append((name, f'not plotted: {html.escape(entry["reason"])}', '-'))
            continue
        rows.append((name, html.escape(entry['note']), _node_cell(entry.get('dataset'))))
        for metric in ('energy_rmse_meV_per_atom', 'force_mae_meV_per_A'):
            rows.append((f'{name}: {metric}', _fmt(entry[metric]), _node_cell(potential)))
    return rows


def _state_rows(barriers: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Key-number rows of the states of a ``barriers`` summary."""
    states, _ = barrier_tables(barriers)
    unit = html.escape(barriers.get('unit', ''))
    experiment = barriers.get('experiment_kcal_mol', {}) or {}
    rows = []
    for name, st in states.items():
        text = (
            f'{_pm(st["kcal_mol"], st.get("error_kcal_mol"))} kcal/mol, minimum at {st["minimum"]:.4g} {unit}, '
            f'range [{st["range"][0]:.4g}, {st["range"][1]:.4g}] {unit}'
        )
        if name in experiment:
            text += f'; experiment {float(experiment[name]):.3g} kcal/mol'
        rows.append((f'state {html.escape(name)}', text, _node_cell(barriers)))
    return rows


def _transition_rows(barriers: Mapping[str, Any], rates: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """Key-number rows of the transitions (barriers and TST rates) of a ``barriers`` summary."""
    _, transitions = barrier_tables(barriers)
    unit = html.escape(barriers.get('unit', ''))
    experiment = barriers.get('experiment_kcal_mol', {}) or {}
    rows = []
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
    return rows


def _free_energy_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Key-number rows of the PMF (its estimator), states, transitions, warnings and the active-learning history."""
    rows: list[tuple[str, str, str]] = []
    pmf = summary.get('pmf')
    if pmf:
        estimator = _ESTIMATORS.get(pmf['estimator'], html.escape(pmf['estimator'].upper()))
        rows.append(('PMF estimator', estimator, _node_cell(pmf)))
    barriers = summary.get('barriers')
    if barriers:
        rows.extend(_state_rows(barriers))
        rows.extend(_transition_rows(barriers, summary.get('rates_per_s')))
        rows.extend(('warning', html.escape(w), _node_cell(barriers)) for w in barriers.get('warnings') or [])
    comparison = summary.get('comparison')
    if comparison:
        label = html.escape(str(comparison.get('label', 'reference')))
        for name, entry in (comparison.get('transitions') or {}).items():
            for direction, d in entry.items():
                rows.append(
                    (
                        f'{html.escape(name)} {direction}, this &minus; {label}',
                        html.escape(_difference_text(d)),
                        _node_cell(comparison),
                    )
                )
        for key in ('only_here', 'only_there'):
            if comparison.get(key):
                rows.append((f'not compared ({key})', html.escape(', '.join(comparison[key])), _node_cell(comparison)))
    history = summary.get('history')
    if history:
        rows.append(('active-learning iterations', _fmt(history['n_iterations']), _node_cell(history)))
        rows.append(('stop reason', _fmt(history['stop_reason']), _node_cell(history)))
    return rows


def _captions(summary: Mapping[str, Any]) -> dict[str, str]:
    """Figure captions by name; the parity captions name the frames they use, the PMF caption its estimator."""
    parity = summary.get('parity') or {}
    used = [entry['note'] for entry in parity.values() if 'note' in entry and 'plots' in entry]
    frames = '; '.join(used) or 'no frames'
    estimator = _ESTIMATORS.get((summary.get('pmf') or {}).get('estimator', 'wham'), 'WHAM')
    return {
        'parity_energy': f'Energy per atom, MLFF against DFT, on frames never trained on ({frames})',
        'parity_forces': f'Force components, MLFF against DFT, on frames never trained on ({frames})',
        'learning_curve': 'Learning curve of the final training',
        'history': 'Active-learning history',
        'pmf': f'Potential of mean force ({estimator}) with its error band, relaxed-scan points and experimental '
        'barriers',
    }


def _figures_html(summary: Mapping[str, Any], paths: Mapping[str, Path]) -> list[str]:
    """The figures with their captions, and what is missing from the report."""
    parts = ['<h2>Figures</h2>']
    for name, caption in _captions(summary).items():
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
    return parts


def _dft_html(dataset: Mapping[str, Any] | None) -> list[str]:
    """The DFT calculations behind the final dataset: counts, the provenance check and the list of UUIDs."""
    if not dataset:
        return []
    calcs = dataset['dft_calculations']
    parts = [
        f'<h2>DFT calculations behind the final dataset ({len(calcs["from_dataset_sources"])})</h2>'
        '<p>UUIDs of the PwCalculation nodes whose labels entered the dataset; '
        '<code>verdi process show UUID</code> shows each one.</p>'
    ]
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
    return parts


def _html(summary: Mapping[str, Any], paths: Mapping[str, Path]) -> str:
    """The report page: verdict banner, key numbers with their nodes, figures, outputs and DFT calculations."""
    parts = [
        '<!DOCTYPE html>',
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        '<title>aiida-mlff campaign report</title>',
        f'<style>{_CSS}</style></head><body>',
        '<h1>aiida-mlff campaign report</h1>',
    ]
    if summary.get('campaign'):
        parts.append(f'<p>Campaign: {_node_cell(summary["campaign"])}</p>')
    parts.extend(_convergence_html(summary.get('convergence')))
    parts.append('<h2>Key numbers</h2>')
    parts.append('<table><tr><th>quantity</th><th>value</th><th>node (PK, UUID)</th></tr>')
    rows = _model_rows(summary) + _free_energy_rows(summary)
    parts.extend(f'<tr><td>{q}</td><td>{v}</td><td>{n}</td></tr>' for q, v, n in rows)
    parts.append('</table>')
    parts.extend(_figures_html(summary, paths))
    parts.append('<h2>Outputs</h2><table><tr><th>output</th><th>node (PK, UUID)</th></tr>')
    parts.extend(
        f'<tr><td>{html.escape(label)}</td><td>{_node_cell(info)}</td></tr>'
        for label, info in summary.get('outputs', {}).items()
    )
    parts.append('</table>')
    parts.extend(_dft_html(summary.get('dataset')))
    parts.append(f'<p><a href="{html.escape(paths["summary"].name)}">summary.json</a></p>')
    parts.append('</body></html>')
    return '\n'.join(parts) + '\n'
