"""Active-learning selection: trust-level classes, rotation-invariant fingerprints, diverse candidates."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from aiida_mlff.core.selection import (
    ACCURATE,
    CANDIDATE,
    FAILED,
    classify,
    farthest_point_sampling,
    fingerprints,
    select_candidates,
)


def water(r1: float, r2: float, angle_deg: float, seed: int | None = None) -> Atoms:
    """H2O with O-H distances r1, r2 [Å] and the H-O-H angle, randomly rotated when ``seed`` is given."""
    a = np.radians(angle_deg)
    pos = np.array([[0.0, 0.0, 0.0], [r1, 0.0, 0.0], [r2 * np.cos(a), r2 * np.sin(a), 0.0]])
    if seed is not None:
        pos = pos @ Rotation.random(random_state=seed).as_matrix().T
    return Atoms('OH2', positions=pos + 5.0, cell=[10.0] * 3, pbc=True)


def test_classify_uses_the_trust_levels():
    c = classify(np.array([0.05, 0.1, 0.3, 0.6, 2.0, np.nan]), 0.1, 0.6)
    assert c.labels.tolist() == [ACCURATE, CANDIDATE, CANDIDATE, FAILED, FAILED]  # NaN (stopped replica) left out
    with pytest.raises(ValueError, match='trust levels'):
        classify(np.array([0.1]), 0.6, 0.1)


def test_fingerprints_are_rotation_invariant_and_tell_geometries_apart():
    frames = [water(0.97, 0.97, 104.5, seed=s) for s in range(3)] + [water(1.1, 0.9, 95.0)]
    fp = fingerprints(frames)
    assert fp.shape[0] == 4
    assert np.allclose(fp[0], fp[1], atol=1e-10)
    assert np.allclose(fp[0], fp[2], atol=1e-10)
    assert np.linalg.norm(fp[3] - fp[0]) > 1e-2 * np.linalg.norm(fp[0])


def test_fingerprints_do_not_depend_on_the_batching():
    rng = np.random.default_rng(0)
    frames = [water(*rng.uniform([0.9, 0.9, 95.0], [1.1, 1.1, 115.0]), seed=k) for k in range(7)]
    frames.append(Atoms('H2', positions=[[5.0, 5.0, 5.0], [5.74, 5.0, 5.0]], cell=[10.0] * 3, pbc=True))  # no O
    assert np.allclose(fingerprints(frames, chunk=3), fingerprints(frames), atol=1e-12)
    assert np.allclose(fingerprints(frames)[3], fingerprints([frames[3]], chunk=1)[0], atol=1e-12)


def test_farthest_point_sampling_takes_one_frame_of_each_cluster():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + 0.1 * rng.normal(size=(20, 2)) for c in centres])
    picked = farthest_point_sampling(points, 3, seed=4)
    assert sorted(k // 20 for k in picked) == [0, 1, 2]
    assert farthest_point_sampling(points, 100) == list(range(60))


def test_candidates_come_from_the_trust_window_or_the_least_failed():
    frames = [water(0.9 + 0.01 * k, 0.97, 100.0 + k) for k in range(12)]
    deviations = [0.05, 0.2, 0.3, 0.4, 0.9, 1.5, 2.0, 0.01, 0.25, 3.0, np.nan, 0.5]
    picked, c = select_candidates(frames, deviations, 0.1, 0.6, k=3)
    assert len(picked) == 3
    assert all(0.1 <= deviations[i] < 0.6 for i in picked)
    assert c.n_frames == 11
    none, _ = select_candidates(frames, [0.9, 1.0, 2.0] + [5.0] * 9, 0.1, 0.6, k=2)
    assert none == []
    filled, _ = select_candidates(frames, [0.9, 1.0, 2.0] + [5.0] * 9, 0.1, 0.6, k=2, fill_from_failed=True)
    assert len(filled) == 2
    assert set(filled) <= set(range(6))
    # one candidate: it is kept, and the rest is topped up from the least-failed frames (3 per missing one)
    few = [0.3, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4] + [5.0] * 5
    topped, _ = select_candidates(frames, few, 0.1, 0.6, k=3, fill_from_failed=True)
    assert len(topped) == 3
    assert 0 in topped
    assert set(topped) - {0} <= {1, 2, 3, 4, 5, 6}
    only, _ = select_candidates(frames, few, 0.1, 0.6, k=3)
    assert only == [0]
    # enough candidates: no failed frame is taken
    plenty, _ = select_candidates(frames, deviations, 0.1, 0.6, k=3, fill_from_failed=True)
    assert all(0.1 <= deviations[i] < 0.6 for i in plenty)
