"""Starting structures of umbrella windows, pulled to their CV values by restrained MD from equilibrated neighbours.

:func:`steered_starts` never edits a geometry: from the start structure, two walkers (one below and one above the
start value of the CV) advance window by window, each window starting from the final structure of the previous one
on its side. A harmonic bias drags the CV from the previous centre to the next one (centre moving linearly, in a
staircase of short :func:`~aiida_mlff.core.md.simulate` chunks), then holds it there while the structure
equilibrates. The two walkers run as one batch of two replicas. Works for any CV of :mod:`aiida_mlff.core.colvars`
and any potential that the MD engine accepts.

Units: Å, fs, K, eV, amu; CV values and ``kappa`` in internal CV units (Å, radians; eV per unit squared).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms

from .colvars import CollectiveVariable, HarmonicBias
from .md import MDResult, maxwell_boltzmann, simulate
from .md.state import STATUS_OK
from .restraints import cv_value, scan_order

__all__ = ['MovingHarmonicBias', 'steered_starts']


class MovingHarmonicBias(HarmonicBias):
    """A :class:`HarmonicBias` whose centres move linearly from ``start`` to ``end``, one pair per replica.

    ``simulate`` reads ``centers`` at every force evaluation; :meth:`move_to` sets them between chunks of a run.

    Parameters
    ----------
    cv
        The collective variable.
    start, end
        (B,) centres at fraction 0 and 1, internal CV units (not wrapped: a periodic CV's bias takes the minimum
        image of ``s - center`` anyway, so ``end`` may lie beyond the principal range).
    kappa
        eV per CV unit squared, scalar or (B,).
    """

    def __init__(self, cv: CollectiveVariable, start, end, kappa) -> None:
        super().__init__(cv, start, kappa)
        self.start = self.centers.clone()
        self.end = torch.as_tensor(np.asarray(end, dtype=float), dtype=torch.float64).reshape(-1)
        if self.end.shape != self.start.shape:
            raise ValueError(f'{len(self.start)} start centres for {len(self.end)} end centres')

    def move_to(self, fraction: float) -> None:
        """Put the centres at ``start + fraction * (end - start)``."""
        self.centers = self.start + float(fraction) * (self.end - self.start)


@dataclass
class _Walker:
    """One direction of the walk: its queue of windows and where it stands."""

    queue: list[int]
    atoms: Atoms
    center: float  # unwrapped, internal units
    source: int = -1  # window whose structure ``atoms`` is (-1: the start structure)
    velocities: np.ndarray | None = None
    done: list[int] = field(default_factory=list)


def _mean_and_std(cv: CollectiveVariable, values: np.ndarray, center: float) -> tuple[float, float]:
    """Mean (wrapped to the principal range for a periodic CV) and standard deviation of CV samples."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float('nan'), float('nan')
    d = np.asarray(cv.difference(values, center), dtype=float)
    mean = center + float(d.mean())
    if cv.period is not None:
        mean = float(cv.difference(mean, 0.0))
    return mean, float(d.std())


def steered_starts(
    model,
    atoms: Atoms,
    cv: CollectiveVariable,
    centers: Sequence[float],
    *,
    kappa: float,
    temperature: float,
    timestep: float,
    steps_per_window: int,
    hold_steps: int | None = None,
    chunks: int = 20,
    friction: float = 0.01,
    min_distance: float = 0.5,
    seed: int = 0,
    device: str | torch.device = 'cpu',
    dtype: torch.dtype = torch.float64,
) -> tuple[list[Atoms], dict]:
    """Pull a structure to every window centre by restrained Langevin MD, each window from its nearest neighbour.

    Centres are sorted by their distance from the CV value of ``atoms`` (minimum image for periodic CVs) into the
    ones below and the ones above it (:func:`~aiida_mlff.core.restraints.scan_order`: the centre nearest the start
    opens the upward walk). On each side, window k starts from the final structure of window k-1 (the first one from
    ``atoms``): a bias ``0.5 kappa (s - c)^2`` whose centre c moves linearly from the previous centre to the target
    over ``steps_per_window`` steps (in ``chunks`` equal stairs), then holds at the target for ``hold_steps``. The
    two sides advance together as one batch of (up to) two replicas; velocities carry over from window to window.

    A window whose replica the engine stops (blown up: atoms too close, energy jump, runaway atom, non-finite
    forces) falls back to the structure of its nearest good neighbour on the same side (or ``atoms``) and is
    flagged; the walk on that side goes on from that structure with fresh Maxwell-Boltzmann velocities.

    Parameters
    ----------
    model
        Anything :func:`~aiida_mlff.core.md.simulate` accepts (a ``Potential``, ``HarmonicBonds``, ...).
    atoms
        Start structure (open or periodic).
    cv
        The collective variable.
    centers
        Window centres, internal CV units (Å, radians), any order.
    kappa
        eV per CV unit squared.
    temperature
        K.
    timestep
        fs.
    steps_per_window
        Steps over which the centre moves from one window to the next.
    hold_steps
        Steps at the target after the pull (default ``steps_per_window // 2``, at least 1); the achieved value is
        the mean over this hold (recorded every ``max(1, hold_steps // 20)`` steps).
    chunks
        Number of stairs of the moving centre per window (at most ``steps_per_window``).
    friction
        Langevin friction, 1/fs.
    min_distance
        Å, passed to ``simulate``: a replica with two atoms closer than this is stopped as blown up.
    seed
        Seed of the velocities and the thermostat noise.
    device, dtype
        Where and in what precision the MD runs.

    Returns
    -------
    tuple[list[Atoms], dict]
        One structure per centre, in the order of ``centers`` (positions unwrapped; final velocities set, in ASE
        units). ``info``: ``start_value`` (CV of ``atoms``); arrays in the order of ``centers``: ``center``,
        ``value`` (mean CV over the hold; for a blown-up window the CV of the fallback structure), ``std`` (its
        standard deviation, NaN when blown up), ``blown_up`` (bool), ``started_from`` (index of the window whose
        structure the pull started from, -1 for ``atoms``); ``diagnostic``: the engine's message per window ('' when
        fine).
    """
    hold = _hold_steps(steps_per_window, hold_steps)
    centers = np.asarray(centers, dtype=float).reshape(-1)
    start_value = cv_value(cv, atoms)
    offsets = np.asarray(cv.difference(centers, start_value), dtype=float)  # minimum image from the start
    down, up = scan_order(cv, start_value, centers)
    walkers = [_Walker(queue, atoms, start_value) for queue in (down, up) if queue]

    record = _Record.empty(len(centers))
    masses = torch.as_tensor(atoms.get_masses(), dtype=dtype, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    bounds = np.unique(np.linspace(0, steps_per_window, min(chunks, steps_per_window) + 1).round().astype(int))
    md = {'ensemble': 'langevin', 'timestep': timestep, 'temperature': temperature, 'friction': friction}
    md.update(min_distance=min_distance, device=device, dtype=dtype)
    pull = _Pull(model, cv, kappa, steps_per_window, bounds, hold, seed, md)

    for stage in range(max((len(w.queue) for w in walkers), default=0)):
        active = [w for w in walkers if stage < len(w.queue)]
        windows = [w.queue[stage] for w in active]
        targets = [start_value + offsets[k] for k in windows]  # unwrapped: monotone along each side
        velocities = [_velocities(w, masses, temperature, generator) for w in active]
        result = pull.run(active, velocities, targets, stage)
        _record_stage(record, atoms, cv, active, windows, targets, result)
    return record.structures, record.info(start_value, centers)


def _hold_steps(steps_per_window: int, hold_steps: int | None) -> int:
    """Steps of the hold at each target (default ``steps_per_window // 2``, at least 1); raise on bad numbers."""
    if steps_per_window < 1:
        raise ValueError(f'steps_per_window must be >= 1, got {steps_per_window}')
    hold = max(1, steps_per_window // 2) if hold_steps is None else int(hold_steps)
    if hold < 1:
        raise ValueError(f'hold_steps must be >= 1, got {hold_steps}')
    return hold


def _velocities(walker: _Walker, masses: torch.Tensor, temperature: float, generator: torch.Generator) -> np.ndarray:
    """The walker's velocities (Å/fs), drawn from Maxwell-Boltzmann at ``temperature`` (K) when it has none."""
    if walker.velocities is None:
        batch = torch.zeros(len(walker.atoms), dtype=torch.long, device=masses.device)
        t = torch.full((1,), float(temperature), dtype=masses.dtype, device=masses.device)
        walker.velocities = maxwell_boltzmann(masses, t, batch, 1, generator).cpu().numpy()
    return walker.velocities


@dataclass(frozen=True)
class _Pull:
    """How every window is pulled: a staircase of the moving centre over ``steps`` MD steps, then a hold.

    ``bounds`` are the step counts at the ends of the stairs (from 0 to ``steps``), ``hold`` the steps at the
    target and ``md`` the keywords of :func:`~aiida_mlff.core.md.simulate` common to every chunk; ``kappa`` in eV
    per CV unit squared.
    """

    model: Any
    cv: CollectiveVariable
    kappa: float
    steps: int
    bounds: np.ndarray
    hold: int
    seed: int
    md: dict

    def run(self, walkers: list[_Walker], velocities: list[np.ndarray], targets: list[float], stage: int) -> MDResult:
        """Pull each walker from its centre to its target (internal CV units) and hold; the result of the hold."""
        bias = MovingHarmonicBias(self.cv, [w.center for w in walkers], targets, self.kappa)
        state = None
        for a, b in itertools.pairwise(self.bounds):
            bias.move_to(b / self.steps)
            result = simulate(
                self.model,
                [w.atoms for w in walkers] if state is None else None,
                steps=int(b - a),
                stride=int(b - a),
                biases=[bias],
                seed=self.seed + 1000 * (stage + 1),
                velocities=velocities if state is None else None,
                state=state,
                **self.md,
            )
            state = result.final_state
        bias.move_to(1.0)
        stride = max(1, self.hold // 20)
        return simulate(self.model, None, steps=self.hold, stride=stride, biases=[bias], state=state, **self.md)


@dataclass
class _Record:
    """What :func:`steered_starts` gives back per window, in the order of the centres (see its ``info``)."""

    structures: list
    value: np.ndarray
    std: np.ndarray
    blown_up: np.ndarray
    started_from: np.ndarray
    diagnostic: list[str]

    @classmethod
    def empty(cls, n: int) -> _Record:
        """Records of ``n`` windows before any pull: NaN values, nothing blown up, all started from the start."""
        nan = np.full(n, np.nan)
        return cls([None] * n, nan, nan.copy(), np.zeros(n, dtype=bool), np.full(n, -1, dtype=int), [''] * n)

    def info(self, start_value: float, centers: np.ndarray) -> dict:
        """The ``info`` of :func:`steered_starts`."""
        return {
            'start_value': start_value,
            'center': centers.copy(),
            'value': self.value,
            'std': self.std,
            'blown_up': self.blown_up,
            'started_from': self.started_from,
            'diagnostic': self.diagnostic,
        }


def _record_stage(
    record: _Record,
    atoms: Atoms,
    cv: CollectiveVariable,
    active: list[_Walker],
    windows: list[int],
    targets: list[float],
    result: MDResult,
) -> None:
    """Record the windows of one stage and move each walker on: to its new structure, or past a blown-up window."""
    state = result.final_state
    finals = state.batch.to_atoms()
    counts = state.batch.counts.cpu().numpy()
    v_all = state.velocities.detach().cpu().double().numpy()
    v_split = np.split(v_all, np.cumsum(counts)[:-1])
    for r, (w, k) in enumerate(zip(active, windows, strict=True)):
        record.started_from[k] = w.source
        if result.status[r] == STATUS_OK:
            new = _arrived(atoms, finals[r].positions, v_split[r])
            record.value[k], record.std[k] = _mean_and_std(cv, result.colvars[:, r, 0], targets[r])
            w.atoms, w.center, w.source, w.velocities = new, targets[r], k, v_split[r]
        else:
            new = _fall_back(record, k, w, cv, result.diagnostic[r])
        record.structures[k] = new


def _arrived(atoms: Atoms, positions: np.ndarray, velocities: np.ndarray) -> Atoms:
    """A copy of ``atoms`` without calculator at ``positions`` (Å) with ``velocities`` (Å/fs)."""
    from ase.units import fs as ase_fs

    new = atoms.copy()
    new.calc = None
    new.positions = positions
    new.set_velocities(velocities / ase_fs)  # Å/fs -> ASE velocity units
    return new


def _fall_back(record: _Record, k: int, walker: _Walker, cv: CollectiveVariable, diagnostic: str) -> Atoms:
    """Flag window ``k`` as blown up; its structure is the walker's last good one, from which the walk goes on."""
    record.blown_up[k] = True
    record.diagnostic[k] = diagnostic
    new = walker.atoms.copy()  # the nearest good neighbour on this side (or the start structure)
    record.value[k] = cv_value(cv, new)
    walker.velocities = None  # the walk goes on from ``new`` with fresh velocities and the old centre
    return new
