"""States and transitions of analytic PMFs whose minima, maxima and barriers are known exactly on the grid."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlff.core.states import _auto_name, compare_barriers, find_states, find_transitions, in_range
from aiida_mlff.core.wham import KB_EV, tst_rate

T = 300.0
KT = KB_EV * T
TWO_PI = 2 * np.pi


def knots(x: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """A smooth profile through the extrema ``(position, value)``: half cosines between consecutive ones."""
    px, pv = np.array(points).T
    k = np.clip(np.searchsorted(px, x, side='right') - 1, 0, len(px) - 2)
    t = (x - px[k]) / (px[k + 1] - px[k])
    return pv[k] + (pv[k + 1] - pv[k]) * (1 - np.cos(np.pi * t)) / 2


def degrees_grid() -> np.ndarray:
    """A dihedral grid, 1° apart, from -180° to 179° (radians)."""
    return np.radians(np.arange(-180.0, 180.0, 1.0))


def h2o2(grid: np.ndarray) -> np.ndarray:
    """H2O2-like: minima 0 eV at ±112°, a 0.05 eV barrier at 180° and a 0.3 eV one at 0°."""
    d = np.degrees(grid)
    return knots(d, [(-180, 0.05), (-112, 0.0), (0, 0.3), (112, 0.0), (180, 0.05)])


def butane(grid: np.ndarray) -> np.ndarray:
    """Butane-like: anti 0 eV at 180°, gauche 0.04 eV at ±60°, barriers 0.15 eV at ±120° and 0.25 eV at 0°."""
    d = np.degrees(grid)
    return knots(d, [(-180, 0.0), (-120, 0.15), (-60, 0.04), (0, 0.25), (60, 0.04), (120, 0.15), (180, 0.0)])


OPEN = np.linspace(0.0, 6.0, 121)  # 0.05 apart: every knot below is a grid point
THREE = [(0, 0.3), (1, 0.0), (2, 0.5), (3, 0.1), (4, 0.4), (5, 0.2), (6, 0.6)]


def test_one_basin_has_no_transition():
    f = knots(OPEN, [(0, 0.4), (2.5, 0.0), (6, 0.3)])
    (state,) = find_states(OPEN, f, temperature=T)
    assert (state.name, state.minimum, state.free_energy, state.edge) == ('A', 2.5, 0.0, False)
    assert (state.lo, state.hi) == (0.0, 6.0)
    assert find_transitions(OPEN, f, None, [state], temperature=T) == []


def test_double_well_barriers_exact():
    f = knots(OPEN, [(0, 0.3), (2, 0.0), (3, 0.25), (4, 0.1), (6, 0.4)])
    error = 0.01 + 0.002 * OPEN
    states = find_states(OPEN, f, temperature=T, error=error)
    assert [(s.name, s.minimum) for s in states] == [('A', 2.0), ('B', 4.0)]
    assert states[1].free_energy == pytest.approx(0.1)
    assert states[1].error == pytest.approx(0.018)
    assert (states[0].lo, states[0].hi, states[1].lo, states[1].hi) == (0.0, 3.0, 3.0, 6.0)
    (t,) = find_transitions(OPEN, f, error, states, temperature=T)
    assert (t.name, t.initial, t.final, t.transition_state) == ('A->B', 'A', 'B', 3.0)
    assert t.forward == pytest.approx(0.25)
    assert t.backward == pytest.approx(0.15)
    assert t.forward_error == pytest.approx(np.hypot(0.016, 0.014))
    assert t.backward_error == pytest.approx(np.hypot(0.016, 0.018))
    assert t.rate_forward == tst_rate(t.forward, T)
    assert t.rate_backward == tst_rate(t.backward, T)
    assert not t.unsampled


def test_three_basins_open():
    f = knots(OPEN, THREE)
    states = find_states(OPEN, f, temperature=T)
    assert [(s.name, s.minimum) for s in states] == [('A', 1.0), ('B', 3.0), ('C', 5.0)]
    assert [s.free_energy for s in states] == pytest.approx([0.0, 0.1, 0.2])
    transitions = find_transitions(OPEN, f, None, states, temperature=T)
    assert [(t.name, t.transition_state) for t in transitions] == [('A->B', 2.0), ('B->C', 4.0)]
    assert [(t.forward, t.backward) for t in transitions] == [
        pytest.approx((0.5, 0.4)),
        pytest.approx((0.3, 0.2)),
    ]
    assert np.isnan(transitions[0].forward_error)  # no error given


def test_periodic_two_basins_have_two_transitions():
    grid = degrees_grid()
    f = h2o2(grid)
    states = find_states(grid, f, period=TWO_PI, temperature=T)
    assert [(s.name, round(np.degrees(s.minimum))) for s in states] == [('A', -112), ('B', 112)]
    a, b = states
    assert (round(np.degrees(a.lo)), round(np.degrees(a.hi))) == (-180, 0)  # to the maxima on either side
    assert (round(np.degrees(b.lo)), round(np.degrees(b.hi))) == (0, -180)  # wraps through 180°
    transitions = find_transitions(grid, f, None, states, period=TWO_PI, temperature=T)
    assert len(transitions) == 2
    by_ts = {round(np.degrees(t.transition_state)): t for t in transitions}
    assert set(by_ts) == {0, -180}
    assert by_ts[0].forward == pytest.approx(0.3)
    assert by_ts[0].backward == pytest.approx(0.3)
    assert by_ts[-180].forward == pytest.approx(0.05)
    assert all((t.initial, t.final) == ('A', 'B') for t in transitions)
    assert sorted(t.name for t in transitions) == ['A->B @ -3,142', 'A->B @ 0']  # same pair: told apart by the TS
    # named ranges name the barriers, as the H2O2 demo's trans (through 180°) and cis (through 0°)
    named = {'trans': np.radians([150.0, -150.0]), 'cis': np.radians([-30.0, 30.0])}
    transitions = find_transitions(grid, f, None, states, period=TWO_PI, temperature=T, named=named)
    names = {t.name: t for t in transitions}
    assert set(names) == {'trans', 'cis'}
    assert names['trans'].forward == pytest.approx(0.05)
    assert names['cis'].forward == pytest.approx(0.3)
    assert all(t.named for t in transitions)
    # the default position format can be replaced, e.g. by degrees
    transitions = find_transitions(
        grid, f, None, states, period=TWO_PI, temperature=T, format_position=lambda x: f'{np.degrees(x):.0f}°'
    )
    assert sorted(t.name for t in transitions) == ['A->B @ -180°', 'A->B @ 0°']


def test_periodic_three_basins_wrap():
    grid = degrees_grid()
    f = butane(grid)
    states = find_states(grid, f, period=TWO_PI, temperature=T)
    assert [(s.name, round(np.degrees(s.minimum))) for s in states] == [('A', -180), ('B', -60), ('C', 60)]
    anti = states[0]
    assert (round(np.degrees(anti.lo)), round(np.degrees(anti.hi))) == (120, -120)
    assert in_range(np.radians(179.0), anti.lo, anti.hi, TWO_PI)
    assert not in_range(0.0, anti.lo, anti.hi, TWO_PI)
    assert [s.free_energy for s in states] == pytest.approx([0.0, 0.04, 0.04])
    transitions = find_transitions(grid, f, None, states, period=TWO_PI, temperature=T)
    got = [(t.name, round(np.degrees(t.transition_state)), t.forward, t.backward) for t in transitions]
    assert got == [
        ('A->B', -120, pytest.approx(0.15), pytest.approx(0.11)),
        ('B->C', 0, pytest.approx(0.21), pytest.approx(0.21)),
        ('C->A', 120, pytest.approx(0.11), pytest.approx(0.15)),
    ]


def test_noise_below_min_depth_makes_no_state():
    f = knots(OPEN, [(0, 0.3), (2, 0.0), (3, 0.25), (4, 0.1), (6, 0.4)])
    noisy = f + np.random.default_rng(0).uniform(-0.2, 0.2, f.shape) * KT
    assert len(find_states(OPEN, noisy, min_depth=0.0)) > 10  # the noise does make local minima
    states = find_states(OPEN, noisy, temperature=T)  # default min_depth 1 kT
    assert [s.minimum for s in states] == pytest.approx([2.0, 4.0], abs=0.3)
    # an explicit depth above the shallower basin's barrier (0.15 eV) merges it
    (state,) = find_states(OPEN, f, min_depth=0.2)
    assert state.minimum == 2.0
    with pytest.raises(ValueError, match='min_depth'):
        find_states(OPEN, f)


def test_named_states_including_one_through_the_period_boundary():
    grid = degrees_grid()
    f = butane(grid)
    named = {
        'g+': np.radians([0.0, 120.0]),
        'anti': np.radians([120.0, -120.0]),  # wraps through ±180°
        'g-': np.radians([-120.0, 0.0]),
    }
    states = find_states(grid, f, period=TWO_PI, named=named)
    assert [s.name for s in states] == ['anti', 'g-', 'g+']  # in CV order of their minima
    assert all(s.named for s in states)
    assert [round(np.degrees(s.minimum)) for s in states] == [-180, -60, 60]
    transitions = find_transitions(grid, f, None, states, period=TWO_PI, temperature=T)
    assert [t.name for t in transitions] == ['anti->g-', 'g-->g+', 'g+->anti']
    assert transitions[2].forward == pytest.approx(0.11)
    with pytest.raises(ValueError, match=r"'anti'.*'g-'.*overlap"):
        find_states(grid, f, period=TWO_PI, named={'anti': np.radians([120.0, -100.0]), 'g-': named['g-']})


def test_named_state_outside_the_data_is_refused_by_name():
    f = knots(OPEN, THREE)
    with pytest.raises(ValueError, match=r"state 'far'.*outside the sampled windows"):
        find_states(OPEN, f, named={'near': (0.5, 1.5), 'far': (7.0, 8.0)})
    f[OPEN > 4.5] = np.nan  # sampled, but not there
    with pytest.raises(ValueError, match="state 'C'"):
        find_states(OPEN, f, named={'C': (4.6, 5.5)})
    with pytest.raises(ValueError, match=r"state 'C': range .* lo > hi on a non-periodic CV"):
        find_states(OPEN, f, named={'C': (5.5, 4.6)})


def test_unsampled_bins_are_ignored_and_flagged():
    f = knots(OPEN, THREE)
    holes = f.copy()
    holes[[3, 30, 50, 70]] = np.nan  # away from every extremum
    error = np.full_like(f, 0.01)
    error[[3, 30, 50, 70]] = np.nan
    states = find_states(OPEN, holes, temperature=T, error=error)
    assert [s.minimum for s in states] == [1.0, 3.0, 5.0]
    transitions = find_transitions(OPEN, holes, error, states, temperature=T)
    assert [(t.forward, t.backward) for t in transitions] == [pytest.approx((0.5, 0.4)), pytest.approx((0.3, 0.2))]
    assert [t.unsampled for t in transitions] == [True, True]  # 30, 50 lie between 1.0 and 3.0; 70 between 3 and 5
    assert transitions[0].forward_error == pytest.approx(0.01 * np.sqrt(2))
    # the TS itself unsampled: the barrier is the highest sampled point, a lower bound
    holes[40] = np.nan
    (first, _) = find_transitions(OPEN, holes, None, states, temperature=T)
    assert first.forward < 0.5
    assert first.unsampled


def test_minima_at_the_border_of_the_sampled_range_are_flagged():
    # a distance-like CV: a bound well, then the PMF still falls where the windows stop
    f = knots(OPEN, [(0, 0.5), (1.5, 0.0), (3.0, 0.2), (6.0, 0.05)])
    a, b = find_states(OPEN, f, temperature=T)
    assert (a.edge, b.edge, b.minimum, b.hi) == (False, True, 6.0, 6.0)
    # a periodic CV sampled on part of the circle only: no state, nor transition, through the unsampled arc
    grid = degrees_grid()
    g = h2o2(grid)
    g[(np.degrees(grid) > 130) | (np.degrees(grid) < -130)] = np.nan
    states = find_states(grid, g, period=TWO_PI, temperature=T)
    assert [(round(np.degrees(s.minimum)), s.edge) for s in states] == [(-112, False), (112, False)]
    assert (round(np.degrees(states[0].lo)), round(np.degrees(states[1].hi))) == (-130, 130)
    (cis,) = find_transitions(grid, g, None, states, period=TWO_PI, temperature=T)
    assert (round(np.degrees(cis.transition_state)), cis.unsampled) == (0, False)
    # the unsampled run that is cut may cross the period boundary: the sampled arc (40°, -40°) wraps through 180°
    g = h2o2(grid)
    g[np.abs(np.degrees(grid)) < 40] = np.nan
    states = find_states(grid, g, period=TWO_PI, temperature=T)
    assert [round(np.degrees(s.minimum)) for s in states] == [112, -112]  # in order along the sampled arc
    assert (round(np.degrees(states[0].lo)), round(np.degrees(states[1].hi))) == (40, -40)
    (trans,) = find_transitions(grid, g, None, states, period=TWO_PI, temperature=T)
    assert trans.forward == pytest.approx(0.05)


def test_in_range_and_names():
    assert in_range(np.radians(-179.0), np.radians(150.0), np.radians(-150.0), TWO_PI)
    assert not in_range(0.0, np.radians(150.0), np.radians(-150.0), TWO_PI)
    assert in_range(np.pi, -np.pi, np.pi, TWO_PI)  # the whole circle
    assert list(in_range(np.array([0.5, 2.5]), 0.0, 1.0)) == [True, False]
    assert [_auto_name(k) for k in (0, 1, 25, 26, 27)] == ['A', 'B', 'Z', 'AA', 'AB']


def test_compare_barriers_by_name_with_independent_errors():
    here = {
        'transitions': {
            'trans': {'forward_kcal_mol': 1.5, 'forward_error_kcal_mol': 0.3, 'backward_kcal_mol': 1.4},
            'only_in_solution': {'forward_kcal_mol': 2.0, 'forward_error_kcal_mol': 0.1},
        },
        'states': {'A': {'kcal_mol': 0.5, 'error_kcal_mol': 0.12}},
    }
    there = {
        'transitions': {
            'trans': {
                'forward_kcal_mol': 1.1,
                'forward_error_kcal_mol': 0.4,
                'backward_kcal_mol': 1.0,
                'backward_error_kcal_mol': 0.1,
            },
            'cis': {'forward_kcal_mol': 7.0},
        },
        'states': {'A': {'kcal_mol': 0.0, 'error_kcal_mol': 0.05}},
    }
    out = compare_barriers(here, there)
    forward = out['transitions']['trans']['forward']
    assert forward['difference'] == pytest.approx(0.4)
    assert forward['difference_error'] == pytest.approx(0.5)  # sqrt(0.3^2 + 0.4^2)
    assert forward['z'] == pytest.approx(0.8)
    backward = out['transitions']['trans']['backward']
    assert backward['difference'] == pytest.approx(0.4)
    assert backward['difference_error'] is None
    assert backward['z'] is None
    assert out['states']['A']['free_energy']['difference_error'] == pytest.approx(0.13)
    assert out['only_here'] == ['transitions.only_in_solution']
    assert out['only_there'] == ['transitions.cis']
    # antisymmetric
    back = compare_barriers(there, here)['transitions']['trans']['forward']
    assert back['difference'] == pytest.approx(-0.4)
    assert back['difference_error'] == pytest.approx(0.5)
