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

import numpy as np
import torch
from ase import Atoms

from .colvars import CollectiveVariable, HarmonicBias
from .md import maxwell_boltzmann, simulate
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
    from ase.units import fs as ase_fs

    if steps_per_window < 1:
        raise ValueError(f'steps_per_window must be >= 1, got {steps_per_window}')
    hold = max(1, steps_per_window // 2) if hold_steps is None else int(hold_steps)
    if hold < 1:
        raise ValueError(f'hold_steps must be >= 1, got {hold_steps}')
    centers = np.asarray(centers, dtype=float).reshape(-1)
    start_value = cv_value(cv, atoms)
    offsets = np.asarray(cv.difference(centers, start_value), dtype=float)  # minimum image from the start
    down, up = scan_order(cv, start_value, centers)
    walkers = [_Walker(queue, atoms, start_value) for queue in (down, up) if queue]

    n = len(centers)
    structures: list = [None] * n
    value = np.full(n, np.nan)
    std = np.full(n, np.nan)
    blown = np.zeros(n, dtype=bool)
    started_from = np.full(n, -1, dtype=int)
    diagnostic = [''] * n
    masses = torch.as_tensor(atoms.get_masses(), dtype=dtype, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    bounds = np.unique(np.linspace(0, steps_per_window, min(chunks, steps_per_window) + 1).round().astype(int))
    stride_hold = max(1, hold // 20)
    common = {'ensemble': 'langevin', 'timestep': timestep, 'temperature': temperature, 'friction': friction}
    common.update(min_distance=min_distance, device=device, dtype=dtype)

    for stage in range(max((len(w.queue) for w in walkers), default=0)):
        active = [w for w in walkers if stage < len(w.queue)]
        windows = [w.queue[stage] for w in active]
        targets = [start_value + offsets[k] for k in windows]  # unwrapped: monotone along each side
        velocities = []
        for w in active:
            if w.velocities is None:
                batch = torch.zeros(len(w.atoms), dtype=torch.long, device=device)
                t = torch.full((1,), float(temperature), dtype=dtype, device=device)
                w.velocities = maxwell_boltzmann(masses, t, batch, 1, generator).cpu().numpy()
            velocities.append(w.velocities)
        bias = MovingHarmonicBias(cv, [w.center for w in active], targets, kappa)
        state = None
        for a, b in itertools.pairwise(bounds):
            bias.move_to(b / steps_per_window)
            result = simulate(
                model,
                [w.atoms for w in active] if state is None else None,
                steps=int(b - a),
                stride=int(b - a),
                biases=[bias],
                seed=seed + 1000 * (stage + 1),
                velocities=velocities if state is None else None,
                state=state,
                **common,
            )
            state = result.final_state
        bias.move_to(1.0)
        result = simulate(model, None, steps=hold, stride=stride_hold, biases=[bias], state=state, **common)
        state = result.final_state
        finals = state.batch.to_atoms()
        counts = state.batch.counts.cpu().numpy()
        v_all = state.velocities.detach().cpu().double().numpy()
        v_split = np.split(v_all, np.cumsum(counts)[:-1])
        for r, (w, k) in enumerate(zip(active, windows, strict=True)):
            started_from[k] = w.source
            if result.status[r] == STATUS_OK:
                new = atoms.copy()
                new.calc = None
                new.positions = finals[r].positions
                new.set_velocities(v_split[r] / ase_fs)  # Å/fs -> ASE velocity units
                value[k], std[k] = _mean_and_std(cv, result.colvars[:, r, 0], targets[r])
                w.atoms, w.center, w.source, w.velocities = new, targets[r], k, v_split[r]
            else:
                blown[k] = True
                diagnostic[k] = result.diagnostic[r]
                new = w.atoms.copy()  # the nearest good neighbour on this side (or the start structure)
                value[k] = cv_value(cv, new)
                w.velocities = None  # the walk goes on from ``new`` with fresh velocities and the old centre
            structures[k] = new
    info = {
        'start_value': start_value,
        'center': centers.copy(),
        'value': value,
        'std': std,
        'blown_up': blown,
        'started_from': started_from,
        'diagnostic': diagnostic,
    }
    return structures, info
