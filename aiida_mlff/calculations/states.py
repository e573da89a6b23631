"""``pmf_states``: the states of a PMF, the transitions between them, their barriers and TST rates, in file units.

A thin calcfunction over :mod:`aiida_mlff.core.states`; the CV's units come from its spec
(:func:`aiida_mlff.core.colvars.cv_from_spec`), so a dihedral's PMF comes back in degrees and a distance's in Å.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlff.calculations.wham import EV_TO_KCAL_MOL
from aiida_mlff.core.colvars import cv_from_spec
from aiida_mlff.core.states import find_states, find_transitions, in_range
from aiida_mlff.core.wham import KB_EV

__all__ = ['pmf_states']


def _number(value: float) -> float | None:
    """A float for a Dict: None where it is not finite (an unknown error)."""
    return float(value) if np.isfinite(value) else None


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
    unit = cv.file_unit
    temperature = float(s['temperature'])
    _, grid, _ = pmf.get_x()
    grid = np.asarray(grid, dtype=float)
    y = pmf.get_y()
    arrays = {name: np.asarray(values, dtype=float) for name, values, _ in y}
    free, error = arrays['free_energy'], arrays.get('error')

    def in_file_units(value: float) -> float:
        return float(cv.to_file(float(value)))

    def position(value: float) -> str:
        return f'{in_file_units(value) + 0.0:.4g} {unit}'.rstrip()

    def ranges(key: str) -> dict[str, tuple[float, float]] | None:
        named = s.get(key)
        return {name: tuple(cv.to_internal([float(v) for v in r])) for name, r in named.items()} if named else None

    named_transitions = ranges('transitions')
    min_depth = s.get('min_depth_kcal_mol')
    states = find_states(
        grid,
        free,
        period=cv.period,
        named=ranges('states'),
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

    warnings: list[str] = []
    state_table = {}
    for state in states:
        state_table[state.name] = {
            'range': [in_file_units(state.lo), in_file_units(state.hi)],
            'minimum': in_file_units(state.minimum),
            'kcal_mol': state.free_energy * EV_TO_KCAL_MOL,
            'error_kcal_mol': _number(state.error * EV_TO_KCAL_MOL),
            'named': state.named,
        }
        if state.edge:
            warnings.append(
                f'state {state.name}: its minimum at {position(state.minimum)} lies at the border of the sampled '
                'range, so its free energy and barriers are bounds: extend the windows beyond it'
            )
    transition_table, rates = {}, {}
    for t in transitions:
        transition_table[t.name] = {
            'from': t.initial,
            'to': t.final,
            'transition_state': in_file_units(t.transition_state),
            'forward_kcal_mol': t.forward * EV_TO_KCAL_MOL,
            'forward_error_kcal_mol': _number(t.forward_error * EV_TO_KCAL_MOL),
            'backward_kcal_mol': t.backward * EV_TO_KCAL_MOL,
            'backward_error_kcal_mol': _number(t.backward_error * EV_TO_KCAL_MOL),
            'forward_eV': t.forward,
            'backward_eV': t.backward,
            'rate_forward': t.rate_forward,
            'rate_backward': t.rate_backward,
        }
        rates[t.name] = {'forward': t.rate_forward, 'backward': t.rate_backward}
        if t.unsampled:
            warnings.append(
                f'transition {t.name}: bins between {t.initial} and {t.final} were not sampled, so its transition '
                'state and barriers are lower bounds'
            )
    if len(states) == 1:
        warnings.append(f'the PMF has one state ({states[0].name}) only, so no transition')
    for name, (lo, hi) in (named_transitions or {}).items():
        if not any(in_range(t.transition_state, lo, hi, cv.period) for t in transitions):
            warnings.append(f'transition {name}: no transition state in its range ({position(lo)}, {position(hi)})')
    experiment = dict(s.get('experiment_kcal_mol') or {})
    for name in experiment:
        if name not in transition_table and name not in state_table:
            warnings.append(f'experiment {name}: no transition or state of that name to compare with')

    out = orm.XyData()
    out.set_x(np.asarray(cv.to_file(grid), dtype=float), cv.name, unit)
    out.set_y([arrays[name] for name, _, _ in y], [name for name, _, _ in y], [u for _, _, u in y])
    for key in ('temperature', 'kT_eV'):
        value = pmf.base.attributes.get(key, None)
        if value is not None:
            out.base.attributes.set(key, value)
    barriers = {
        'unit': unit,
        'temperature': temperature,
        'kT_kcal_mol': KB_EV * temperature * EV_TO_KCAL_MOL,
        'cv': cv.spec,
        'states': state_table,
        'transitions': transition_table,
        'experiment_kcal_mol': experiment,
        'warnings': warnings,
    }
    return {'pmf': out, 'barriers': orm.Dict(barriers), 'rates': orm.Dict(rates)}
