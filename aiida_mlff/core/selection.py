"""Active-learning selection: classify frames by committee force deviation, then pick diverse candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

__all__ = [
    'Classification',
    'classify',
    'farthest_point_order',
    'farthest_point_sampling',
    'fingerprints',
    'sane_prefix',
    'select_along_cv',
    'select_candidates',
]

ACCURATE, CANDIDATE, FAILED = 0, 1, 2


@dataclass
class Classification:
    """Frames sorted by the max committee force deviation (eV/Å).

    ``labels`` holds, per frame, 0 (accurate: deviation < lower), 1 (candidate: lower <= deviation < upper) or
    2 (failed: deviation >= upper); frames with no finite deviation (after a replica stopped) are left out.
    """

    labels: np.ndarray
    lower: float
    upper: float

    @property
    def n_frames(self) -> int:
        """Number of classified frames."""
        return len(self.labels)

    def fraction(self, label: int) -> float:
        """Fraction of frames with ``label`` (0 when there are no frames)."""
        return float(np.mean(self.labels == label)) if len(self.labels) else 0.0

    def as_dict(self) -> dict:
        """Counts and fractions as plain data."""
        return {
            'n_frames': self.n_frames,
            'accurate': self.fraction(ACCURATE),
            'candidate': self.fraction(CANDIDATE),
            'failed': self.fraction(FAILED),
            'trust_lower': self.lower,
            'trust_upper': self.upper,
        }


def classify(deviations: np.ndarray, lower: float, upper: float) -> Classification:
    """Classify finite deviations (eV/Å) against the trust levels ``lower < upper``."""
    if not 0 <= lower < upper:
        raise ValueError(f'trust levels must satisfy 0 <= lower < upper, got {lower} and {upper}')
    dev = np.asarray(deviations, dtype=float).ravel()
    dev = dev[np.isfinite(dev)]
    labels = np.where(dev < lower, ACCURATE, np.where(dev < upper, CANDIDATE, FAILED))
    return Classification(labels=labels, lower=lower, upper=upper)


def fingerprints(frames: Sequence[Atoms], cutoff: float = 4.0, chunk: int = 256) -> np.ndarray:
    """One vector per frame: per-element means and spreads of symmetry-function features (rotation invariant).

    One descriptor evaluates the frames in batches of ``chunk`` (thousands of MD frames take seconds).
    """
    import torch

    from .atoms import AtomsBatch, neighbor_list, pair_vectors
    from .descriptors import Descriptor, DescriptorSpec

    if not len(frames):
        return np.zeros((0, 0))
    elements = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    descriptor = Descriptor(DescriptorSpec(elements=elements, cutoff=cutoff, chiral=False)).double()
    n_el, n_feat = len(elements), descriptor.n_features
    rows = []
    for start in range(0, len(frames), chunk):
        batch = AtomsBatch.from_atoms(list(frames[start : start + chunk]), dtype=torch.float64)
        nbrs = neighbor_list(batch, cutoff)
        species = descriptor.element_index(batch.numbers)
        with torch.no_grad():
            features = descriptor(pair_vectors(batch, nbrs), nbrs.i, nbrs.j, species)
        # per system and element: mean and standard deviation of the features (zeros where the element is absent)
        group = batch.batch * n_el + species
        n_groups = batch.n_systems * n_el
        ones = torch.ones(group.shape[0], dtype=torch.float64)
        count = torch.zeros(n_groups, dtype=torch.float64).index_add(0, group, ones)
        total = torch.zeros(n_groups, n_feat, dtype=torch.float64).index_add(0, group, features)
        safe = count.clamp(min=1).unsqueeze(1)
        mean = total / safe
        centred = features - mean.index_select(0, group)  # two passes: no cancellation in the spread
        std = (torch.zeros(n_groups, n_feat, dtype=torch.float64).index_add(0, group, centred * centred) / safe).sqrt()
        both = torch.stack([mean, std], dim=1).reshape(batch.n_systems, n_el, 2 * n_feat)
        rows.append(both.reshape(batch.n_systems, -1).numpy())
    return np.concatenate(rows)


def farthest_point_sampling(points: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Indices of ``k`` points chosen greedily to be far from each other (standardised Euclidean distance)."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(range(n))
    scale = points.std(0)
    scale[scale == 0] = 1.0
    x = (points - points.mean(0)) / scale
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    distance = np.linalg.norm(x - x[chosen[0]], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(x - x[nxt], axis=1))
    return chosen


def select_candidates(
    frames: Sequence[Atoms],
    deviations: Sequence[float],
    lower: float,
    upper: float,
    k: int,
    seed: int = 0,
    fill_from_failed: bool = False,
) -> tuple[list[int], Classification]:
    """Return the indices of at most ``k`` diverse candidate frames, and the classification of all frames.

    With ``fill_from_failed``, an exploration with fewer than ``k`` candidates (a young committee that fails almost
    everywhere, as in a condensed phase whose largest per-atom deviation grows with the number of atoms) tops the
    selection up to ``k`` with diverse frames among the ``3 m`` failed ones with the smallest deviation (``m`` the
    number missing), so learning goes on at full pace instead of one frame per iteration.
    """
    deviations = np.asarray(deviations, dtype=float)
    if len(frames) != len(deviations):
        raise ValueError(f'{len(frames)} frames but {len(deviations)} deviations')
    finite = np.isfinite(deviations)
    classification = classify(deviations[finite], lower, upper)
    index = np.flatnonzero(finite)[classification.labels == CANDIDATE]
    picked = [int(index[i]) for i in farthest_point_sampling(fingerprints([frames[i] for i in index]), k, seed)]
    missing = k - len(picked)
    if missing > 0 and fill_from_failed:
        failed = np.flatnonzero(finite)[classification.labels == FAILED]
        least = failed[np.argsort(deviations[failed], kind='stable')[: 3 * missing]]
        chosen = farthest_point_sampling(fingerprints([frames[i] for i in least]), missing, seed)
        picked += [int(least[i]) for i in chosen]
    return sorted(picked), classification


def sane_prefix(deviations: np.ndarray, limit: float | None) -> int:
    """Number of leading frames of one replica before its deviation ran away (first frame > ``limit`` or NaN).

    A replica that blew up contributes only these frames: the collapsed geometries after the run-away teach the
    model nothing and fail in DFT. ``limit`` None keeps every frame up to the first NaN.
    """
    d = np.asarray(deviations, dtype=float).ravel()
    bad = ~np.isfinite(d)
    if limit is not None:
        bad |= d > limit
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else len(d)


def farthest_point_order(points: np.ndarray, first: int = 0) -> list[int]:
    """All indices of ``points`` in farthest-point order from ``first`` (standardised Euclidean distance)."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    if n == 0:
        return []
    scale = points.std(0) if n > 1 else np.ones(points.shape[1:])
    scale = np.where(scale == 0, 1.0, scale)
    x = (points - points.mean(0)) / scale
    order = [int(first)]
    distance = np.linalg.norm(x - x[first], axis=1)
    distance[first] = -1.0
    for _ in range(n - 1):
        nxt = int(np.argmax(distance))
        order.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(x - x[nxt], axis=1))
        distance[order] = -1.0
    return order


def _cv_bin(cv_values: np.ndarray, bins: int, period: float | None, span: tuple[float, float]) -> np.ndarray:
    """Bin index of each CV value: equal bins over the period (periodic CV) or over ``span``."""
    lo, hi = span
    if period is not None:
        lo, hi = lo, lo + period
        cv_values = lo + np.mod(cv_values - lo, period)
    width = (hi - lo) / bins if hi > lo else 1.0
    return np.clip(((cv_values - lo) / width).astype(int), 0, bins - 1)


def select_along_cv(
    frames: Sequence[Atoms],
    deviations: Sequence[float],
    cv_values: Sequence[float],
    lower: float,
    k: int,
    bins: int = 12,
    period: float | None = None,
) -> tuple[list[int], dict]:
    """At most ``k`` frames to label, spread along the CV, most uncertain CV bins first.

    Frames with a deviation >= ``lower`` (eV/Å, calibrated) are candidates. They are binned along the CV (``bins``
    equal bins over the sampled range, or over the period); bins are visited in order of their largest deviation
    and each visit takes one frame, so that labels go to every uncertain part of the CV before any part gets a
    second; within a bin, frames come in farthest-point order in descriptor space, starting at its most uncertain.
    Returns the chosen indices and per-bin counts (candidates, chosen) as plain data.
    """
    deviations = np.asarray(deviations, dtype=float)
    cv_values = np.asarray(cv_values, dtype=float)
    if not len(frames) == len(deviations) == len(cv_values):
        raise ValueError(f'{len(frames)} frames, {len(deviations)} deviations and {len(cv_values)} CV values')
    index = np.flatnonzero(np.isfinite(deviations) & (deviations >= lower) & np.isfinite(cv_values))
    if k <= 0 or not len(index):
        return [], {'n_candidates': len(index), 'bins': []}
    finite_cv = cv_values[np.isfinite(cv_values)]
    which = _cv_bin(cv_values[index], bins, period, (float(finite_cv.min()), float(finite_cv.max())))
    features = fingerprints([frames[i] for i in index])
    queues = []
    for b in np.unique(which):
        members = np.flatnonzero(which == b)
        first = int(np.argmax(deviations[index[members]]))
        order = farthest_point_order(features[members], first)
        queues.append((float(deviations[index[members]].max()), int(b), [int(index[members[o]]) for o in order]))
    queues.sort(key=lambda q: -q[0])
    chosen: list[int] = []
    taken = {b: 0 for _, b, _ in queues}
    while len(chosen) < k and any(queue for _, _, queue in queues):
        for _, b, queue in queues:
            if queue and len(chosen) < k:
                chosen.append(queue.pop(0))
                taken[b] += 1
    table = [
        {'bin': b, 'candidates': int(np.count_nonzero(which == b)), 'chosen': taken[b], 'max_deviation': top}
        for top, b, _ in sorted(queues, key=lambda q: q[1])
    ]
    return sorted(chosen), {'n_candidates': len(index), 'bins': table}
