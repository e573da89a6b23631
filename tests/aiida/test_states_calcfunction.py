"""``pmf_states`` on analytic PMFs: the ``barriers`` contract, file units, names, rates and warnings."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_mlff.calculations.states import pmf_states
from aiida_mlff.calculations.wham import EV_TO_KCAL_MOL
from aiida_mlff.core.wham import KB_EV, tst_rate

DIHEDRAL = {'type': 'dihedral', 'atoms': [2, 0, 1, 3]}


def knots(x: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """A smooth profile through the extrema ``(position, value)``: half cosines between consecutive ones."""
    px, pv = np.array(points).T
    k = np.clip(np.searchsorted(px, x, side='right') - 1, 0, len(px) - 2)
    t = (x - px[k]) / (px[k + 1] - px[k])
    return pv[k] + (pv[k + 1] - pv[k]) * (1 - np.cos(np.pi * t)) / 2


def xy(grid: np.ndarray, free: np.ndarray, error: np.ndarray, unit: str) -> orm.XyData:
    """A PMF node as ``wham_pmf`` writes it: x in internal units, y in eV."""
    node = orm.XyData()
    node.set_x(grid, 'cv', unit)
    node.set_y([free, error, free + 0.001], ['free_energy', 'error', 'member_0'], ['eV', 'eV', 'eV'])
    node.base.attributes.set('temperature', 300.0)
    node.base.attributes.set('kT_eV', KB_EV * 300.0)
    return node


@pytest.fixture
def h2o2(aiida_profile):
    """H2O2-like PMF in radians: minima at ±112°, 0.05 eV barrier at 180° (trans), 0.3 eV at 0° (cis)."""
    degrees = np.arange(-180.0, 180.0, 1.0)
    free = knots(degrees, [(-180, 0.05), (-112, 0.0), (0, 0.3), (112, 0.0), (180, 0.05)])
    return xy(np.radians(degrees), free, 0.002 + 0.00001 * np.abs(degrees), 'rad')


def test_h2o2_barriers_by_name(h2o2):
    settings = {
        'cv': DIHEDRAL,
        'temperature': 300.0,
        'transitions': {'trans': [150.0, -150.0], 'cis': [-30.0, 30.0]},
        'experiment_kcal_mol': {'trans': 1.1, 'cis': 7.0, 'torsion': 3.0},
    }
    result = pmf_states(h2o2, orm.Dict(settings))
    barriers = result['barriers'].get_dict()
    assert set(barriers) == {
        'unit',
        'temperature',
        'kT_kcal_mol',
        'cv',
        'states',
        'transitions',
        'experiment_kcal_mol',
        'warnings',
    }
    assert barriers['unit'] == 'deg'
    assert barriers['temperature'] == 300.0
    assert barriers['kT_kcal_mol'] == pytest.approx(0.596, abs=1e-3)
    assert barriers['cv'] == DIHEDRAL
    assert barriers['experiment_kcal_mol'] == settings['experiment_kcal_mol']
    a, b = barriers['states']['A'], barriers['states']['B']
    assert a == {
        'range': pytest.approx([-180.0, 0.0]),
        'minimum': pytest.approx(-112.0),
        'kcal_mol': 0.0,
        'error_kcal_mol': pytest.approx((0.002 + 0.00112) * EV_TO_KCAL_MOL),
        'named': False,
    }
    assert b['range'] == pytest.approx([0.0, -180.0])  # wraps through 180°
    assert set(barriers['transitions']) == {'trans', 'cis'}
    trans, cis = barriers['transitions']['trans'], barriers['transitions']['cis']
    assert set(trans) == {
        'from',
        'to',
        'transition_state',
        'forward_kcal_mol',
        'forward_error_kcal_mol',
        'backward_kcal_mol',
        'backward_error_kcal_mol',
        'forward_eV',
        'backward_eV',
        'rate_forward',
        'rate_backward',
    }
    assert (trans['from'], trans['to'], trans['transition_state']) == ('A', 'B', pytest.approx(-180.0))
    assert trans['forward_eV'] == pytest.approx(0.05)
    assert trans['forward_kcal_mol'] == pytest.approx(0.05 * EV_TO_KCAL_MOL)
    assert trans['forward_error_kcal_mol'] == pytest.approx(np.hypot(0.0038, 0.00312) * EV_TO_KCAL_MOL)
    assert cis['transition_state'] == pytest.approx(0.0)
    assert cis['backward_kcal_mol'] == pytest.approx(0.3 * EV_TO_KCAL_MOL)
    assert cis['rate_forward'] == pytest.approx(tst_rate(0.3, 300.0))
    rates = result['rates'].get_dict()
    assert rates == {
        'trans': {'forward': trans['rate_forward'], 'backward': trans['rate_backward']},
        'cis': {'forward': cis['rate_forward'], 'backward': cis['rate_backward']},
    }
    assert barriers['warnings'] == ['experiment torsion: no transition or state of that name to compare with']
    pmf = result['pmf']
    name, x, unit = pmf.get_x()
    assert (name, unit) == ('dihedral(2,0,1,3)', 'deg')
    np.testing.assert_allclose(x, np.arange(-180.0, 180.0, 1.0), atol=1e-9)
    assert [n for n, _, _ in pmf.get_y()] == ['free_energy', 'error', 'member_0']
    np.testing.assert_array_equal(pmf.get_y()[0][1], h2o2.get_y()[0][1])
    assert pmf.base.attributes.get('temperature') == 300.0
    assert pmf.creator.process_label == 'pmf_states'


def test_without_names_the_two_arcs_are_told_apart_in_file_units(h2o2):
    barriers = pmf_states(h2o2, orm.Dict({'cv': DIHEDRAL, 'temperature': 300.0}))['barriers'].get_dict()
    assert sorted(barriers['transitions']) == ['A->B @ -180 deg', 'A->B @ 0 deg']
    assert barriers['experiment_kcal_mol'] == {}
    assert barriers['warnings'] == []


def test_names_told_apart_at_fractional_positions_are_valid_keys(aiida_profile):
    # the barrier tops at -57.5 and 122.5 degrees, between the same two basins, with names that hold neither
    degrees = np.arange(-180.0, 180.0, 2.5)
    free = knots(degrees, [(-180, 0.0), (-57.5, 0.2), (30, 0.02), (122.5, 0.1), (180, 0.0)])
    pmf = xy(np.radians(degrees), free, np.full(degrees.shape, 0.002), 'rad')
    result = pmf_states(pmf, orm.Dict({'cv': DIHEDRAL, 'temperature': 300.0}))
    names = sorted(result['barriers']['transitions'])
    assert names == ['A->B @ -57,5 deg', 'A->B @ 122,5 deg']
    assert sorted(result['rates'].get_dict()) == names  # stored: no dot in a key


def test_distance_cv_with_named_states(aiida_profile):
    r = np.linspace(1.0, 5.0, 81)  # Å, 0.05 apart
    free = knots(r, [(1.0, 0.5), (1.5, 0.0), (2.5, 0.4), (4.0, 0.1), (5.0, 0.05)])
    settings = {
        'cv': {'type': 'distance', 'atoms': [0, 1]},
        'temperature': 300.0,
        'states': {'bound': [1.0, 2.5], 'free': [2.5, 5.0]},
        'experiment_kcal_mol': {'bound->free': 9.0},
    }
    barriers = pmf_states(xy(r, free, np.zeros_like(r), 'Å'), orm.Dict(settings))['barriers'].get_dict()
    assert barriers['unit'] == 'Å'
    assert barriers['states']['free'] == {
        'range': [2.5, 5.0],
        'minimum': pytest.approx(5.0),  # the PMF still falls where the windows stop
        'kcal_mol': pytest.approx(0.05 * EV_TO_KCAL_MOL),
        'error_kcal_mol': 0.0,
        'named': True,
    }
    (transition,) = barriers['transitions'].values()
    assert (transition['from'], transition['to'], transition['transition_state']) == ('bound', 'free', 2.5)
    assert transition['forward_eV'] == pytest.approx(0.4)
    assert transition['backward_eV'] == pytest.approx(0.35)
    assert len(barriers['warnings']) == 1
    assert barriers['warnings'][0].startswith('state free: its minimum at 5 Å lies at the border of the sampled range')


def test_a_state_outside_the_sampled_range_is_named_in_degrees(h2o2):
    settings = {'cv': DIHEDRAL, 'temperature': 300.0, 'states': {'gauche': [-150.0, -60.0], 'nowhere': [400, 410]}}
    values = h2o2.get_y()[0][1].copy()
    values[np.degrees(h2o2.get_x()[1]) > 30] = np.nan
    partial = xy(h2o2.get_x()[1], values, values * 0, 'rad')
    with pytest.raises(ValueError, match=r"state 'nowhere': no sampled PMF point in its range \(400 deg, 410 deg\)"):
        pmf_states(partial, orm.Dict(settings))
