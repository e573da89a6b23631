"""The campaign's stop rule (window trust, barrier errors, PMF change) and CV-aware selection, on exact cases."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from aiida_mlff.core.convergence import (
    Z95,
    barrier_errors_95,
    error_sources,
    judge,
    next_step,
    pmf_change,
    region_cap,
    round_score,
    window_trust,
)
from aiida_mlff.core.selection import farthest_point_order, sane_prefix, select_along_cv

TARGETS = {'barrier_error_kcal_mol': 0.3, 'untrusted_fraction': 0.1, 'pmf_change_kcal_mol': 0.3}


def test_window_trust_uses_a_quantile_not_the_worst_frame():
    calm_with_spike = np.r_[np.full(99, 0.1), 5.0]  # one bad frame in 100
    mostly_bad = np.r_[np.full(20, 0.1), np.full(80, 0.9)]
    trust = window_trust([calm_with_spike, mostly_bad], upper=0.6, quantile=0.9)
    assert trust.untrusted.tolist() == [False, True]
    assert trust.n_frames == 200
    assert trust.n_above == 81
    assert trust.fraction_above == pytest.approx(81 / 200)
    assert trust.quantile[0] == pytest.approx(0.1)


def test_window_trust_applies_the_calibration_and_counts_a_window_given_up_on():
    frames = np.full(10, 0.4)
    assert not window_trust([frames], upper=0.6).untrusted[0]
    scaled = window_trust([frames], upper=0.6, scale=2.0)  # the committee under-reports its error twofold
    assert scaled.untrusted[0]
    assert scaled.fraction_above == 1.0
    with_dropped = window_trust([frames, np.array([np.nan, np.nan])], upper=0.6)
    assert with_dropped.untrusted.tolist() == [False, True]
    assert with_dropped.n_frames == 20  # the empty window counts as a typical window's frames, all above
    assert with_dropped.n_above == 10


def test_barrier_errors_are_95_percent_half_widths_of_the_worse_direction():
    barriers = {
        'transitions': {
            'trans': {'forward_error_kcal_mol': 0.1, 'backward_error_kcal_mol': 0.05},
            'cis': {'forward_error_kcal_mol': 0.2, 'backward_error_kcal_mol': float('nan')},
        }
    }
    errors = barrier_errors_95(barriers)
    assert errors['trans'] == pytest.approx(Z95 * 0.1)
    assert errors['cis'] == np.inf  # an unknown error is not a small one


def test_pmf_change_ignores_the_offset_and_the_region_above_the_barriers():
    x = np.linspace(-np.pi, np.pi, 73)
    f = 3.0 * (1 + np.cos(2 * x))  # kcal/mol, tops at 6
    assert pmf_change((x, f), (x, f + 2.0)) == pytest.approx(0.0, abs=1e-12)
    bumped = f + 0.5 * np.exp(-(x**2) / 0.1)  # a change at the top only
    assert pmf_change((x, f), (x, bumped)) > 0.05
    assert pmf_change((x, f), (x, bumped), cap_kcal_mol=1.0) < 0.01  # the top lies outside the region
    barriers = {'states': {'A': {'kcal_mol': 0.5}}, 'transitions': {'t': {'from': 'A', 'forward_kcal_mol': 5.0}}}
    assert region_cap(barriers) == pytest.approx(6.5)
    assert region_cap({'transitions': {}}) is None
    shifted_grid = x[::2] + 0.01  # a different grid: interpolated onto the previous one
    assert pmf_change((x, f), (shifted_grid, 3.0 * (1 + np.cos(2 * shifted_grid)))) < 0.05


def test_judge_names_each_failed_criterion_and_the_first_round_cannot_converge():
    verdict = judge({'a': 0.2}, 0.05, None, TARGETS)
    assert verdict['failed'] == ['pmf_change']
    assert not verdict['converged']
    verdict = judge({'a': 0.2, 'b': 0.5}, 0.05, 0.1, TARGETS)
    assert verdict['failed'] == ['barrier_error']
    assert verdict['criteria']['barrier_error']['value'] == pytest.approx(0.5)
    assert verdict['criteria']['barrier_error']['per_barrier'] == {'a': 0.2, 'b': 0.5}
    assert judge({'a': 0.2}, 0.05, 0.1, TARGETS)['converged']
    assert round_score(verdict['criteria']) == pytest.approx(0.5 / 0.3)


def test_sane_prefix_stops_at_the_run_away():
    assert sane_prefix(np.array([0.1, 0.2, 3.0, 0.1]), limit=1.0) == 2
    assert sane_prefix(np.array([0.1, np.nan, 0.1]), limit=None) == 1
    assert sane_prefix(np.array([0.1, 0.2]), limit=1.0) == 2


def _frames(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule('H2O')
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        out.append(atoms)
    return out


def test_select_along_cv_spreads_labels_over_uncertain_bins_first():
    # 60 frames crowd CV bin 0 (mildly uncertain), 3 frames sit in each of bins 5 and 9 (more uncertain)
    cv = np.r_[np.full(60, 0.05), np.full(3, 5.5), np.full(3, 9.5), 0.0, 10.0]
    deviation = np.r_[np.full(60, 0.2), np.full(3, 0.5), np.full(3, 0.4), 0.01, 0.01]
    frames = _frames(len(cv), seed=0)
    picked, table = select_along_cv(frames, deviation, cv, lower=0.15, k=4, bins=10)
    chosen_bins = sorted(int(cv[i]) for i in picked)
    assert chosen_bins == [0, 5, 5, 9]  # every uncertain bin first, then the most uncertain one again
    assert table['n_candidates'] == 66
    assert {row['bin']: row['chosen'] for row in table['bins']} == {0: 1, 5: 2, 9: 1}
    picked_two, _ = select_along_cv(frames, deviation, cv, lower=0.15, k=2, bins=10)
    assert sorted(int(cv[i]) for i in picked_two) == [5, 9]  # frequent is not the same as uncertain
    assert select_along_cv(frames, deviation, cv, lower=0.9, k=4, bins=10)[0] == []


def test_select_along_cv_bins_a_periodic_cv_over_its_period():
    cv = np.array([-3.0, -3.0 + 2 * np.pi, 0.5, 0.6])  # the first two are the same angle, one period apart
    frames = _frames(4, seed=1)
    picked, table = select_along_cv(frames, np.full(4, 0.5), cv, lower=0.1, k=2, bins=4, period=2 * np.pi)
    assert [row['candidates'] for row in table['bins']] == [2, 2]
    assert sorted(int(cv[i] > 0 and cv[i] < 1) for i in picked) == [0, 1]  # one label from each occupied bin


def test_farthest_point_order_visits_every_point_once_from_the_given_start():
    points = np.array([[0.0], [1.0], [10.0], [5.0]])
    order = farthest_point_order(points, first=0)
    assert order[:2] == [0, 2]
    assert sorted(order) == [0, 1, 2, 3]


def test_error_sources_split_a_barrier_error_into_sampling_and_committee_parts():
    grid = np.array([-180.0, -90.0, 0.0, 90.0])
    barriers = {
        'states': {'a': {'minimum': -90.0}, 'b': {'minimum': 90.0}},
        'transitions': {'t': {'from': 'a', 'to': 'b', 'transition_state': 179.0}},  # -180 across the period
    }
    bootstrap = np.array([0.3, 0.4, 0.0, 0.1])
    spread = np.array([0.0, 0.0, 5.0, 0.2])
    parts = error_sources(barriers, grid, bootstrap, spread, period=360.0)['t']
    assert parts['sampling'] == pytest.approx(0.5)  # hypot(0.3, 0.4): top and the larger-error minimum
    assert parts['committee'] == pytest.approx(0.0)


def test_next_step_samples_longer_when_sampling_dominates_and_labels_when_the_committee_does():
    failing = judge({'t': 0.5}, 0.05, 0.1, TARGETS)
    by_sampling = next_step(failing, {'t': {'sampling': 0.2, 'committee': 0.05}})
    assert by_sampling['sample_more']
    assert not by_sampling['label']
    by_committee = next_step(failing, {'t': {'sampling': 0.05, 'committee': 0.2}})
    assert by_committee['label']
    assert not by_committee['sample_more']
    untrusted = next_step(judge({'t': 0.1}, 0.5, 0.1, TARGETS), {'t': {'sampling': 0.05, 'committee': 0.01}})
    assert untrusted['label']
    assert not untrusted['sample_more']
    assert 'untrusted' in untrusted['why']
