"""``pmf_states``: the states of a PMF, the transitions between them, their barriers and TST rates, in file units.

A thin calcfunction over :mod:`aiida_mlff.core.states`; the CV's units come from its spec
(:func:`aiida_mlff.core.colvars.cv_from_spec`), so a dihedral's PMF comes back in degrees and a distance's in Å.
"""

from __future__ import annotations

import functools

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.calculations.wham import EV_TO_KCAL_MOL
from aiida_mlff.core.colvars import CollectiveVariable, cv_from_spec
from aiida_mlff.core.states import State, Transition, compare_barriers, find_states, find_transitions, in_range
from aiida_mlff.core.wham import KB_EV

__all__ = ['compare_campaigns', 'pmf_states']


def _number(value: float) -> float | None:
    """A float for a Dict: None where it is not finite (an unknown error)."""
    return float(value) if np.isfinite(value) else None


def _in_file_units(cv: CollectiveVariable, value: float) -> float:
    """A CV value from the CV's internal units (Å, or radians for angles and dihedrals) to file units (Å, degrees)."""
    return float(cv.to_file(float(value)))


def _position(cv: CollectiveVariable, value: float) -> str:
    """A CV value (internal units) for a message: in file units, with the unit, e.g. ``'120 deg'``."""
    return f'{_in_file_units(cv, value) + 0.0:.4g} {cv.file_unit}'.rstrip()


def _ranges(cv: CollectiveVariable, named: dict | None) -> dict[str, tuple[float, float]] | None:
    """Name -> ``[lo, hi]`` in file units (Å, degrees) to name -> ``(lo, hi)`` in internal units (Å, radians)."""
    return {name: tuple(cv.to_internal([float(v) for v in r])) for name, r in named.items()} if named else None


def _read_pmf(pmf: orm.XyData) -> tuple[np.ndarray, list[tuple[str, np.ndarray, str]]]:
    """The PMF's grid (CV internal units) and its columns ``(name, values, unit)`` (free energies in eV)."""
    _, grid, _ = pmf.get_x()
    y = pmf.get_y()
    arrays = {name: np.asarray(values, dtype=float) for name, values, _ in y}
    return np.asarray(grid, dtype=float), [(name, arrays[name], unit) for name, _, unit in y]


def _pmf_in_file_units(
    pmf: orm.XyData, cv: CollectiveVariable, grid: np.ndarray, columns: list[tuple[str, np.ndarray, str]]
) -> orm.XyData:
    """The PMF with x in file units (Å, degrees), the same columns, and ``pmf``'s ``temperature`` and ``kT_eV``."""
    out = orm.XyData()
    out.set_x(np.asarray(cv.to_file(grid), dtype=float), cv.name, cv.file_unit)
    out.set_y([values for _, values, _ in columns], [name for name, _, _ in columns], [u for _, _, u in columns])
    for key in ('temperature', 'kT_eV', 'estimator'):
        value = pmf.base.attributes.get(key, None)
        if value is not None:
            out.base.attributes.set(key, value)
    return out


def _state_table(states: list[State], cv: CollectiveVariable) -> dict[str, dict]:
    """Name -> ``range`` and ``minimum`` (file units), ``kcal_mol`` and ``error_kcal_mol`` (None when unknown)."""
    return {
        state.name: {
            'range': [_in_file_units(cv, state.lo), _in_file_units(cv, state.hi)],
            'minimum': _in_file_units(cv, state.minimum),
            'kcal_mol': state.free_energy * EV_TO_KCAL_MOL,
            'error_kcal_mol': _number(state.error * EV_TO_KCAL_MOL),
            'named': state.named,
        }
        for state in states
    }


def _transition_table(transitions: list[Transition], cv: CollectiveVariable) -> dict[str, dict]:
    """Name -> states, TS (file units), barriers (kcal/mol with errors, None when unknown; eV) and rates (s^-1)."""
    return {
        t.name: {
            'from': t.initial,
            'to': t.final,
            'transition_state': _in_file_units(cv, t.transition_state),
            'forward_kcal_mol': t.forward * EV_TO_KCAL_MOL,
            'forward_error_kcal_mol': _number(t.forward_error * EV_TO_KCAL_MOL),
            'backward_kcal_mol': t.backward * EV_TO_KCAL_MOL,
            'backward_error_kcal_mol': _number(t.backward_error * EV_TO_KCAL_MOL),
            'forward_eV': t.forward,
            'backward_eV': t.backward,
            'rate_forward': t.rate_forward,
            'rate_backward': t.rate_backward,
        }
        for t in transitions
    }


def _warnings(
    cv: CollectiveVariable,
    states: list[State],
    transitions: list[Transition],
    named_transitions: dict[str, tuple[float, float]] | None,
    table_names: list[str],
    experiment: dict[str, float],
) -> list[str]:
    """What the reader should know: edge states, unsampled paths, missing transitions, unmatched references.

    Parameters
    ----------
    cv
        The CV (its file units write the positions).
    states, transitions
        From :func:`~aiida_mlff.core.states.find_states` and :func:`~aiida_mlff.core.states.find_transitions`.
    named_transitions
        Name -> ``(lo, hi)`` range in internal units (Å, radians), or None.
    table_names
        Names of the transitions and states in the tables.
    experiment
        Name -> reference value (kcal/mol).
    """
    warnings = [
        f'state {state.name}: its minimum at {_position(cv, state.minimum)} lies at the border of the sampled '
        'range, so its free energy and barriers are bounds: extend the windows beyond it'
        for state in states
        if state.edge
    ]
    warnings += [
        f'transition {t.name}: bins between {t.initial} and {t.final} were not sampled, so its transition '
        'state and barriers are lower bounds'
        for t in transitions
        if t.unsampled
    ]
    if len(states) == 1:
        warnings.append(f'the PMF has one state ({states[0].name}) only, so no transition')
    for name, (lo, hi) in (named_transitions or {}).items():
        if not any(in_range(t.transition_state, lo, hi, cv.period) for t in transitions):
            warnings.append(
                f'transition {name}: no transition state in its range ({_position(cv, lo)}, {_position(cv, hi)})'
            )
    warnings += [
        f'experiment {name}: no transition or state of that name to compare with'
        for name in experiment
        if name not in table_names
    ]
    return warnings


@calcfunction
def pmf_states(pmf: orm.XyData, settings: orm.Dict) -> dict:
    """States, transitions, barriers (kcal/mol and eV) and TST rates (s^-1) of a PMF.

    ``pmf``: the WHAM output, x in the CV's internal units (radians for angles and dihedrals, Å for distances), y
    ``free_energy`` and ``error`` (and any others) in eV. ``settings``: ``cv`` (spec, e.g. ``{'type': 'dihedral',
    'atoms': [2, 0, 1, 3]}``), ``temperature`` (K), and optional ``states`` and ``transitions`` (name -> ``[lo, hi]``
    in file units: degrees for angles and dihedrals, Å for distances; ``lo > hi`` wraps through the period boundary
    of a periodic CV), ``min_depth_kcal_mol`` (basins shallower than this are merged; default
    :data:`aiida_mlff.core.states.DEFAULT_MIN_DEPTH_KT` kT) and ``experiment_kcal_mol`` (name -> reference value,
    for reports).

    Returns ``pmf`` (the same arrays, x in file units), ``barriers`` (Dict: ``unit``, ``temperature``,
    ``kT_kcal_mol``, ``cv``, ``states``, ``transitions``, ``experiment_kcal_mol``, ``warnings``; every CV value in
    file units) and ``rates`` (Dict: transition name -> ``{'forward': k, 'backward': k}`` in s^-1).
    """
    s = settings.get_dict()
    cv = cv_from_spec(s['cv'])
    temperature = float(s['temperature'])
    grid, columns = _read_pmf(pmf)
    arrays = {name: values for name, values, _ in columns}
    free, error = arrays['free_energy'], arrays.get('error')
    position = functools.partial(_position, cv)
    named_transitions = _ranges(cv, s.get('transitions'))
    min_depth = s.get('min_depth_kcal_mol')
    states = find_states(
        grid,
        free,
        period=cv.period,
        named=_ranges(cv, s.get('states')),
        min_depth=None if min_depth is None else float(min_depth) / EV_TO_KCAL_MOL,
        temperature=temperature,
        error=error,
        format_position=position,
    )
    transitions = find_transitions(
        grid,
        free,
        error,
        states,
        temperature=temperature,
        period=cv.period,
        named=named_transitions,
        format_position=position,
    )
    state_table, transition_table = _state_table(states, cv), _transition_table(transitions, cv)
    experiment = dict(s.get('experiment_kcal_mol') or {})
    warnings = _warnings(cv, states, transitions, named_transitions, [*transition_table, *state_table], experiment)
    barriers = {
        'unit': cv.file_unit,
        'temperature': temperature,
        'kT_kcal_mol': KB_EV * temperature * EV_TO_KCAL_MOL,
        'cv': cv.spec,
        'states': state_table,
        'transitions': transition_table,
        'experiment_kcal_mol': experiment,
        'warnings': warnings,
    }
    rates = {t.name: {'forward': t.rate_forward, 'backward': t.rate_backward} for t in transitions}
    return {'pmf': _pmf_in_file_units(pmf, cv, grid, columns), 'barriers': orm.Dict(barriers), 'rates': orm.Dict(rates)}


@calcfunction
def compare_campaigns(barriers: orm.Dict, reference: orm.Dict, label: orm.Str) -> orm.Dict:
    """Barriers of this campaign against another's (``reference``, e.g. the gas phase), transition by transition.

    :func:`aiida_mlff.core.states.compare_barriers` of the two tables, with ``label`` (how reports name the
    reference) and the reference's own ``unit`` and temperature beside them. kcal/mol.
    """
    other = reference.get_dict()
    out = compare_barriers(barriers.get_dict(), other)
    out['label'] = label.value
    out['temperature'] = barriers.get('temperature')
    out['reference_temperature'] = other.get('temperature')
    return orm.Dict(out)
