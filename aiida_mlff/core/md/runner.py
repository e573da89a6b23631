"""``simulate``: batched MD of many replicas (umbrella windows x committee x temperatures x systems) in one loop.

One potential evaluation per step covers every replica; neighbour lists are Verlet lists with a skin; harmonic
biases add forces by autograd of the collective variables; replicas that blow up or leave the committee's trust
region are frozen while the others go on. Units: Å, fs, K, eV, amu, radians.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_masses
from torch import Tensor

from ..atoms import AtomsBatch, pair_vectors
from ..colvars import CollectiveVariable, HarmonicBias, batch_offsets
from ..options import MD as MD_OPTIONS
from .barostat import BAR, cell_rescaling_step, init_cell_rescaling, pressure_tensor, volumes
from .exchange import ReplicaExchange
from .integrators import KB, baoab_step, kinetic_energy, maxwell_boltzmann, velocity_verlet_step
from .neighbors import VerletList
from .reporters import FrameRecorder, MDResult
from .state import STATUS_BLOWN_UP, STATUS_DEVIATION, MDState

__all__ = ['simulate']


def _per_replica(value, n: int, name: str, dtype, device) -> Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=float), dtype=dtype, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f'{name}: {t.numel()} values for {n} replicas')
    return t


def _initial_state(atoms_or_list, velocities, temperature_r, seed, dtype, device, remove_com) -> MDState:
    if isinstance(atoms_or_list, AtomsBatch):
        batch = atoms_or_list.to(device=device, dtype=dtype)
        masses = torch.as_tensor(atomic_masses[batch.numbers.cpu().numpy()], dtype=dtype, device=device)
    else:
        frames = [atoms_or_list] if isinstance(atoms_or_list, Atoms) else list(atoms_or_list)
        batch = AtomsBatch.from_atoms(frames, dtype=dtype, device=device)
        masses = torch.as_tensor(np.concatenate([f.get_masses() for f in frames]), dtype=dtype, device=device)
    batch = AtomsBatch(batch.positions.clone(), batch.numbers, batch.cell, batch.pbc, batch.batch)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    n = batch.n_systems
    if velocities is None:
        v = maxwell_boltzmann(masses, temperature_r, batch.batch, n, generator, remove_com=remove_com)
    else:
        if not isinstance(velocities, (np.ndarray, Tensor)):
            velocities = np.concatenate([np.asarray(v, dtype=float).reshape(-1, 3) for v in velocities])
        v = torch.as_tensor(np.asarray(velocities, dtype=float), dtype=dtype, device=device).reshape(-1, 3).clone()
        if v.shape != batch.positions.shape:
            raise ValueError(f'velocities of shape {tuple(v.shape)} for {batch.positions.shape[0]} atoms')
    return MDState(batch=batch, velocities=v, masses=masses, generator=generator)


def simulate(
    potential,
    atoms_or_list: Atoms | Sequence[Atoms] | AtomsBatch | None,
    ensemble: str = 'nve',
    timestep: float = 0.5,
    steps: int = 1000,
    temperature: float | Sequence[float] = 300.0,
    friction: float | Sequence[float] = 0.01,
    pressure: float | Sequence[float] = MD_OPTIONS['pressure'].default,
    compressibility: float | Sequence[float] = MD_OPTIONS['compressibility'].default,
    tau_p: float = MD_OPTIONS['tau_p'].default,
    barostat_mode: str = MD_OPTIONS['barostat_mode'].default,
    biases: Sequence[HarmonicBias] | None = None,
    exchange: ReplicaExchange | None = None,
    stride: int = 10,
    seed: int = 0,
    device: str | torch.device = 'cpu',
    dtype: torch.dtype | None = None,
    velocities=None,
    colvars: Sequence[CollectiveVariable] | None = None,
    skin: float = 1.0,
    max_force_deviation: float | None = None,
    min_distance: float = 0.5,
    max_energy_jump: float = 1.0,
    max_step_displacement: float = 1.0,
    remove_com: bool = True,
    record_velocities: bool = False,
    state: MDState | None = None,
) -> MDResult:
    """Run MD of every replica in one batch.

    Parameters
    ----------
    potential
        Anything with ``evaluate(batch, neighbors, forces=True)``, ``cutoff`` and ``committee_size``
        (``CONTRACT.md``): a :class:`~aiida_mlff.core.models.Potential` (committee included) or an analytic one.
    atoms_or_list
        One ``ase.Atoms``, a list of them (the replicas; sizes may differ) or an ``AtomsBatch``. Ignored when
        ``state`` is given.
    ensemble
        ``'nve'`` (velocity Verlet), ``'langevin'`` (BAOAB, NVT) or ``'npt'`` (BAOAB with stochastic cell rescaling,
        :mod:`~aiida_mlff.core.md.barostat`; every replica periodic in all directions, the potential gives stress).
    timestep
        fs.
    steps
        Number of steps.
    temperature
        K, scalar or one per replica: Langevin target and Maxwell-Boltzmann initial velocities.
    friction
        Langevin friction gamma in 1/fs, scalar or one per replica.
    pressure
        NPT target pressure, bar, scalar or one per replica.
    compressibility
        NPT: the barostat's guess of the isothermal compressibility, 1/bar (scalar or one per replica); it sets how
        fast the volume relaxes, not what is sampled.
    tau_p
        NPT barostat relaxation time, fs.
    barostat_mode
        ``'isotropic'`` (volume only) or ``'anisotropic'`` (each Cartesian axis on its own; no shear).
    biases
        Biases on collective variables: :class:`~aiida_mlff.core.colvars.HarmonicBias` (one centre per replica: all
        umbrella windows in one batch) or any object with the same call (``bias(positions, cell, pbc, offsets) ->
        (energy (B,) eV, CV values (B,) or (B, k))``) and ``cvs`` (the k CVs), e.g. a metadynamics bias. Optional
        methods: ``update(step, values, active)`` after every step (e.g. to deposit hills), ``energy_of(values,
        replicas)`` (needed by ``exchange``), ``state_dict()`` / ``load_state_dict(d)`` (saved in the MD state,
        so a continued run has the same bias).
    exchange
        Replica exchange (:class:`~aiida_mlff.core.md.exchange.ReplicaExchange`): every ``exchange.every`` steps
        neighbouring replicas try to swap configurations (Hamiltonian exchange between umbrella windows,
        temperature exchange between replicas of different temperatures, or both). Acceptance per pair is in
        ``result.exchange``; ``result.walker`` says which walker (starting replica) each replica holds per frame.
    stride
        Record every ``stride`` steps (plus the initial frame of a fresh run and the frame where a replica exceeds
        the deviation limit).
    seed
        Seed of the initial velocities and the thermostat noise.
    device
        ``'cpu'`` or ``'cuda'``.
    dtype
        Float type; default the potential's ``dtype`` if it has one, else float64.
    velocities
        Initial velocities, Å/fs: (N, 3) or one (n_i, 3) array per replica; default Maxwell-Boltzmann with zero
        centre-of-mass momentum.
    colvars
        Extra collective variables to record (the biased ones are always recorded).
    skin
        Verlet skin, Å.
    max_force_deviation
        eV/Å: a replica whose committee force deviation exceeds this is stopped; that frame is kept and flagged.
    min_distance
        Å: a replica with two atoms closer than this (checked on recorded frames) is stopped as blown up.
    max_energy_jump
        eV/atom: a replica whose potential energy changes more than this in one step, or becomes non-finite, is
        stopped as blown up and put back to the step before.
    max_step_displacement
        Å: a replica with an atom moving farther than this in one step is stopped as blown up (before the
        potential and the neighbour list see the runaway positions) and put back to the step before.
    remove_com
        Zero the centre-of-mass momentum of the initial velocities.
    record_velocities
        Also record velocities.
    state
        Continue from this state (e.g. ``result.final_state`` or ``MDState.load(path)``): positions, velocities,
        RNG, step count and per-replica status. The run parameters (ensemble, temperatures, friction, biases, ...)
        are not part of the state: pass them again. No initial frame is recorded, so the frames of the two runs
        concatenate without duplicates.

    Notes
    -----
    - Replicas are independent systems in one flattened batch; a committee potential drives every replica with
      its mean force and reports the members' spread (``max_force_deviation``).
    - Langevin kinetic energies and temperatures are measured on the mid-step velocities (right after the O step),
      which BAOAB samples exactly for harmonic modes; the full-step velocities (kept in the state) are narrower by
      about ``(omega dt)^2 / 4`` for a mode of angular frequency omega.
    - Positions are never wrapped into the cell.
    - Host syncs (what makes a GPU wait): a step reads the host once, in the Verlet-list check (rebuild needed? did
      a replica stop at the step before?). The checks of a step run on the device; a replica that stops there is
      put back and frozen on the device at once, its message and flagged frame follow at the next step's read, or
      at once on record, exchange and last steps. Results are those of reading every step at once.

    Returns
    -------
    MDResult
        Arrays shaped (frames, replicas, ...), per-replica status and the final state. ``result.extra`` holds
        ``'cell'`` (F, R, 3, 3) Å and ``'volume'`` (F, R) Å^3 per frame; NPT also ``'pressure'`` (F, R) bar, the
        instantaneous pressure ``-trace(stress) / 3 + 2 K / (3 V)`` with the kinetic energy of the recorded
        (for BAOAB the mid-step) velocities.
    """
    if ensemble not in ('nve', 'langevin', 'npt'):
        raise ValueError(f"ensemble must be 'nve', 'langevin' or 'npt', got {ensemble!r}")
    npt = ensemble == 'npt'
    if npt and exchange is not None:
        raise ValueError('replica exchange is not supported with ensemble npt')
    if steps < 0 or stride < 1:
        raise ValueError('steps must be >= 0 and stride >= 1')
    device = torch.device(device)
    if dtype is None:
        dtype = state.batch.dtype if state is not None else getattr(potential, 'dtype', None) or torch.float64
    if isinstance(potential, torch.nn.Module):
        potential = potential.to(device)

    if state is None:
        if atoms_or_list is None:
            raise ValueError('give atoms_or_list or state')
        n_rep = 1 if isinstance(atoms_or_list, Atoms) else None
        if n_rep is None:
            n_rep = atoms_or_list.n_systems if isinstance(atoms_or_list, AtomsBatch) else len(atoms_or_list)
        temperature_r = _per_replica(temperature, n_rep, 'temperature', dtype, device)
        state = _initial_state(atoms_or_list, velocities, temperature_r, seed, dtype, device, remove_com)
        fresh = True
    else:
        state = MDState.from_state_dict(state.state_dict(), device=device, dtype=dtype)
        fresh = False

    batch = state.batch
    n_rep = batch.n_systems
    counts = batch.counts
    temperature_r = _per_replica(temperature, n_rep, 'temperature', dtype, device)
    friction_r = _per_replica(friction, n_rep, 'friction', dtype, device)
    t_atoms = temperature_r[batch.batch]
    gamma_atoms = friction_r[batch.batch]
    offsets = batch_offsets(batch)
    biases = list(biases or [])
    for b in biases:
        centers = getattr(b, 'centers', None)
        if centers is not None and len(centers) not in (1, n_rep):
            raise ValueError(f'{b}: {len(centers)} centres for {n_rep} replicas')
    extra_cvs = list(colvars or [])
    names = [cv.name for b in biases for cv in _bias_cvs(b)] + [cv.name for cv in extra_cvs]
    _restore_extensions(state, biases, exchange, fresh, counts, offsets)
    dof = 3 * counts.to(dtype) - (3 if (ensemble == 'nve' and remove_com) else 0)
    dof = dof.clamp(min=1)
    vlist = VerletList(float(potential.cutoff), skin, variable_cell=npt)
    baro = None
    if npt:
        if not bool(batch.pbc.all()):  # one host read, at set-up
            raise ValueError('ensemble npt needs every replica periodic in all three directions')
        p0 = _per_replica(pressure, n_rep, 'pressure', dtype, device)
        beta_t = _per_replica(compressibility, n_rep, 'compressibility', dtype, device)
        baro = init_cell_rescaling(p0, beta_t, tau_p, temperature_r, barostat_mode)
    last: dict[str, Tensor] = {}
    atom_index: dict[int, Tensor] = {}  # per CV: (B, A) flattened indices of its atoms
    # Host syncs: the loop keeps per-replica decisions on the device and reads the host once a step, in the Verlet
    # check of forces_fn (rebuild needed? did a replica stop at the step before?). A step's stops are put on the
    # device at once (roll-back, `state.active`); their messages and flagged frame follow at that read, or at once
    # on record, exchange and last steps. `n_running` mirrors `state.active.sum()` on the host.
    n_running = int(state.active.sum())
    pending: _StepEvents | None = None  # events of the step before, not yet read

    def forces_fn(positions: Tensor) -> Tensor:
        nonlocal pending
        # runaway atoms: keep their replica at the old positions so the neighbour list and the potential stay sane
        jumped = ((positions - batch.positions) ** 2).sum(-1) > max_step_displacement**2
        runaway = torch.zeros(n_rep, dtype=torch.bool, device=device).index_add_(0, batch.batch, jumped) > 0
        last['runaway'] = runaway
        positions = torch.where(runaway[batch.batch].unsqueeze(-1), batch.positions, positions)
        batch.positions = positions
        events, pending = pending, None
        moved = vlist.moved_too_far(positions, batch.cell) if npt else vlist.moved_too_far(positions)
        rebuild, happened = _read_step_flags(moved, events)
        if happened:
            conclude(events, at_record=False, happened=True)
            if n_running == 0:  # every replica stopped at the step before: the caller drops this step
                last['aborted'] = True
                return state.forces
        nbrs = vlist.update(batch, rebuild=rebuild)
        if npt:
            out = potential.evaluate(batch, nbrs, forces=True, stress=True)
            last['stress'] = out['stress'].detach().to(dtype)
        else:
            out = potential.evaluate(batch, nbrs, forces=True)
        forces = out['forces'].detach().to(dtype)
        last['energy'] = out['energy'].detach().to(dtype)
        zeros = torch.zeros_like(last['energy'])
        last['max_force_deviation'] = out.get('max_force_deviation', zeros).detach().to(dtype)
        last['energy_std'] = out.get('energy_std', zeros).detach().to(dtype)
        if biases:
            e_bias, columns, bias_forces = _bias_terms(biases, positions, batch.cell, batch.pbc, offsets, atom_index)
            forces = forces + bias_forces
            last['bias_energy'] = e_bias
            last['cv_columns'] = columns
            last['cv'] = torch.cat(columns, dim=-1)
        else:
            last['bias_energy'] = zeros
            last['cv_columns'] = []
            last['cv'] = zeros.new_zeros(n_rep, 0)
        return forces

    saved = (state.forces, state.energy, state.bias_energy)
    saved_stress = state.stress
    state.forces = forces_fn(batch.positions)
    state.energy, state.bias_energy = last['energy'], last['bias_energy']
    state.stress = last.get('stress')
    if not fresh and all(x is not None for x in saved):
        # the forces the interrupted run would have used next: a bias that changed at the last step (a hill) acts
        # from the following step on, exactly as in an uninterrupted run
        state.forces, state.energy, state.bias_energy = saved
        if npt and saved_stress is not None:
            state.stress = saved_stress
    recorder = FrameRecorder(counts.cpu().numpy(), batch.numbers.cpu().numpy(), len(names), record_velocities)
    cells: list[np.ndarray] = []  # NPT: per recorded frame (R, 3, 3) Å, valid mask (R,), pressure (R,) bar
    valid_frames: list[np.ndarray] = []
    pressures: list[np.ndarray] = []

    close_pairs: list = [None, None]  # (Verlet list, its pairs that can come closer than min_distance before a rebuild)

    def stop(replica: int, status: str, message: str) -> None:
        nonlocal n_running
        state.stop(replica, status, message)
        n_running -= 1

    def min_distances() -> Tensor:
        nbrs = vlist.neighbors
        out = torch.full((n_rep,), float('inf'), dtype=dtype, device=device)
        if nbrs is None or nbrs.n_pairs == 0:
            return out
        if npt:  # the cell deforms between builds: no cached pre-selection
            d = pair_vectors(batch, nbrs).norm(dim=-1)
            return out.scatter_reduce(0, batch.batch[nbrs.i], d, reduce='amin', include_self=True)
        if close_pairs[0] is not nbrs:
            # atoms move less than skin / 2 between builds, so pairs now farther than min_distance + skin stay out
            d = pair_vectors(batch, nbrs).norm(dim=-1)
            close_pairs[0], close_pairs[1] = nbrs, nbrs.select(d < min_distance + skin)
        pairs = close_pairs[1]
        if pairs.n_pairs == 0:
            return out
        d = pair_vectors(batch, pairs).norm(dim=-1)
        return out.scatter_reduce(0, batch.batch[pairs.i], d, reduce='amin', include_self=True)

    def check_distances() -> None:
        close = state.active & (min_distances() < min_distance)
        for r in torch.nonzero(close).flatten().tolist():
            stop(r, STATUS_BLOWN_UP, f'atoms closer than {min_distance} Å at step {state.step}')

    def frame(v_kin: Tensor) -> dict:
        """What a frame of the current step records, by reference.

        The loop replaces these tensors and never changes them in place, except ``state.active``, which takes the
        stops of its own step.
        """
        return {
            'step': state.step,
            'positions': batch.positions,
            'velocities': v_kin,
            'potential_energy': state.energy,
            'bias_energy': state.bias_energy,
            'cv': last['cv'],
            'max_force_deviation': last['max_force_deviation'],
            'energy_std': last['energy_std'],
            'walker': state.walker,
            'active': state.active,
            'cell': batch.cell,
            'stress': state.stress,
        }

    def record(fr: dict, flagged: Tensor) -> None:
        ke = kinetic_energy(fr['velocities'], state.masses, batch.batch, n_rep)
        extra = [cv(fr['positions'], batch.cell, batch.pbc, offsets) for cv in extra_cvs]
        cvs = torch.cat([fr['cv'], *(e.unsqueeze(-1) for e in extra)], dim=-1) if extra else fr['cv']
        recorder.record(
            fr['step'],
            fr['step'] * timestep,
            valid=fr['active'] | flagged,
            flagged=flagged,
            positions=fr['positions'],
            velocities=fr['velocities'],
            potential_energy=fr['potential_energy'],
            bias_energy=fr['bias_energy'],
            kinetic_energy=ke,
            temperature=2.0 * ke / (dof * KB),
            colvars=cvs,
            max_force_deviation=fr['max_force_deviation'],
            energy_std=fr['energy_std'],
            walker=fr['walker'],
        )
        if npt:
            cells.append(fr['cell'].detach().cpu().double().numpy().copy())
            valid_frames.append((fr['active'] | flagged).cpu().numpy().copy())
            p_int = pressure_tensor(fr['stress'], fr['velocities'], state.masses, batch.batch, fr['cell'])
            pressures.append((p_int.diagonal(dim1=-2, dim2=-1).mean(-1) / BAR).detach().cpu().double().numpy())

    def check_deviation() -> Tensor:
        """Stop the replicas over the force-deviation limit now (the initial frame); their (B,) mask."""
        if max_force_deviation is None:
            return torch.zeros(n_rep, dtype=torch.bool, device=device)
        exceeded = state.active & (last['max_force_deviation'] > max_force_deviation)
        for r in torch.nonzero(exceeded).flatten().tolist():
            message = _deviation_message(last['max_force_deviation'], r, max_force_deviation, state.step)
            stop(r, STATUS_DEVIATION, message)
        return exceeded

    def conclude(events: _StepEvents, at_record: bool, happened: bool | None = None) -> None:
        """Host side of a step: stop its replicas with their messages and record its frame if due.

        The frame is due on record steps and when a replica exceeded the deviation limit. ``happened``: whether any
        replica stopped at the step (None: read it now, one host sync).
        """
        if happened is None:
            (happened,) = _read_flags(events.any)
        flagged = False
        if happened:
            for r in torch.nonzero(events.blown).flatten().tolist():
                stop(r, STATUS_BLOWN_UP, _blown_message(events, r, max_step_displacement))
            for r in torch.nonzero(events.exceeded).flatten().tolist():
                stop(r, STATUS_DEVIATION, _deviation_message(events.deviation, r, max_force_deviation, events.step))
                flagged = True
        if at_record:
            check_distances()
        if at_record or flagged:
            record(events.frame, events.exceeded)

    beta_r = 1.0 / (KB * temperature_r)
    local = torch.arange(batch.positions.shape[0], device=device) - offsets[batch.batch]
    identity = torch.arange(n_rep, device=device)

    def swap() -> None:
        perm = exchange.propose(state.active, beta_r, state.energy, biases, last['cv_columns'], state.generator)
        if not bool((perm != identity).any()):  # one host sync per exchange attempt
            return
        atom_perm = offsets[perm][batch.batch] + local
        scale = torch.sqrt(temperature_r / temperature_r[perm])[batch.batch].unsqueeze(-1)
        batch.positions = batch.positions[atom_perm]
        state.velocities = state.velocities[atom_perm] * scale
        state.walker = state.walker[perm]
        state.forces = forces_fn(batch.positions)
        state.energy, state.bias_energy = last['energy'], last['bias_energy']

    def rescale(positions: Tensor, velocities: Tensor) -> tuple[Tensor, Tensor]:
        """The barostat move inside BAOAB (after the first half kick): scales positions, velocities and cells."""
        p_int = pressure_tensor(state.stress, velocities, state.masses, batch.batch, batch.cell)
        positions, velocities, batch.cell = cell_rescaling_step(
            baro, positions, velocities, batch.cell, batch.batch, p_int, timestep, state.generator, state.active
        )
        batch.positions = positions  # the runaway check of forces_fn compares with the scaled positions
        return positions, velocities

    def integrate(positions: Tensor, velocities: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step of every active replica: positions Å, velocities Å/fs, forces eV/Å, kinetic velocities Å/fs."""
        moving = state.active[batch.batch].unsqueeze(-1)
        if ensemble == 'nve':
            pos, vel, forces = velocity_verlet_step(
                positions, velocities, state.forces, state.masses, timestep, forces_fn, moving
            )
            return pos, vel, forces, vel
        return baoab_step(
            positions,
            velocities,
            state.forces,
            state.masses,
            timestep,
            forces_fn,
            moving,
            t_atoms,
            gamma_atoms,
            state.generator,
            rescale if npt else None,
        )

    limits = (max_energy_jump, max_force_deviation)
    if fresh:
        check_distances()
        record(frame(state.velocities), check_deviation())

    start = _time.perf_counter()
    for i in range(steps):
        if n_running == 0:
            break
        rng = state.generator.get_state() if ensemble != 'nve' else None
        old_pos, old_vel, old_energy, old_cell = batch.positions, state.velocities, state.energy, batch.cell
        pos, vel, forces, v_kin = integrate(old_pos, old_vel)
        if last.pop('aborted', False):  # every replica stopped at the step before: undo this step's start
            batch.positions, batch.cell = old_pos, old_cell
            if rng is not None:
                state.generator.set_state(rng)
            break
        state.step += 1
        events = _detect_events(state, last, old_energy, pos, forces, counts, limits)
        back = events.blown[batch.batch].unsqueeze(-1)  # blown up: put back to the step before
        batch.positions = torch.where(back, old_pos, pos)
        state.velocities = torch.where(back, old_vel, vel)
        if npt:
            batch.cell = torch.where(events.blown.view(-1, 1, 1), old_cell, batch.cell)
            state.stress = last['stress']
        state.forces = forces
        state.energy = torch.where(events.blown, old_energy, last['energy'])
        state.bias_energy = last['bias_energy']
        state.active = state.active & ~(events.blown | events.exceeded)
        for b, values in zip(biases, last['cv_columns'], strict=True):
            if hasattr(b, 'update'):
                b.update(state.step, values, state.active)
        events.frame = frame(v_kin)
        at_record = state.step % stride == 0
        at_exchange = exchange is not None and state.step % exchange.every == 0
        if at_record or at_exchange or i == steps - 1:
            conclude(events, at_record)
        else:
            pending = events  # read with the next step's Verlet check
        if at_exchange:
            swap()
    if pending is not None:  # not reached: the last step concludes at once
        conclude(pending, at_record=False)
    wall = _time.perf_counter() - start
    state.bias_states = [b.state_dict() if hasattr(b, 'state_dict') else {} for b in biases]
    state.exchange_state = exchange.state_dict() if exchange is not None else {}
    extra = _cell_arrays(cells, valid_frames, pressures, batch.cell, len(recorder.frames['time']))
    return recorder.result(
        state,
        names,
        n_neighbor_builds=vlist.n_builds,
        wall_time=wall,
        exchange=_exchange_summary(exchange),
        extra=extra,
    )


def _cell_arrays(cells: list, valid: list, pressures: list, cell: Tensor, n_frames: int) -> dict[str, np.ndarray]:
    """``cell`` (F, R, 3, 3) Å, ``volume`` (F, R) Å^3 and (NPT) ``pressure`` (F, R) bar (NPT: NaN where not valid).

    ``cells``: per frame (R, 3, 3) arrays, empty for a fixed cell (then ``cell`` (R, 3, 3) is every frame's).
    """
    if not cells:
        fixed = cell.detach().cpu().double().numpy()
        frames = np.broadcast_to(fixed, (n_frames, *fixed.shape)).copy()
        return {'cell': frames, 'volume': np.abs(np.linalg.det(frames)) if n_frames else np.zeros((0, len(fixed)))}
    frames = np.stack(cells)
    mask = ~np.stack(valid)
    frames[mask] = np.nan
    volume = volumes(torch.from_numpy(frames.reshape(-1, 3, 3))).numpy().reshape(mask.shape)
    pressure = np.stack(pressures)
    pressure[mask] = np.nan
    return {'cell': frames, 'volume': volume, 'pressure': pressure}


@dataclass
class _StepEvents:
    """The replicas that stopped at one step, held on the device until the host reads :attr:`any`.

    Attributes
    ----------
    step
        The step.
    any
        0-d bool: did any replica stop.
    blown, exceeded
        (B,) bool: blown up (put back to the step before) and over the force-deviation limit (kept, flagged).
    runaway, finite
        (B,) bool: an atom moved too far in the step; energies, forces and positions are finite.
    energy_change
        (B,) eV, potential energy of the step minus the one before (before any roll-back).
    deviation
        (B,) eV/Å, committee force deviation of the step.
    frame
        What the step's frame records (filled in by the loop).
    """

    step: int
    any: Tensor
    blown: Tensor
    exceeded: Tensor
    runaway: Tensor
    finite: Tensor
    energy_change: Tensor
    deviation: Tensor
    frame: dict = field(default_factory=dict)


def _detect_events(
    state: MDState, last: dict, old_energy: Tensor, positions: Tensor, forces: Tensor, counts: Tensor, limits: tuple
) -> _StepEvents:
    """Which active replicas blew up or exceeded the deviation limit at this step, on the device (no host read).

    Parameters
    ----------
    state
        After the step (``state.step`` counted; ``state.active`` before its stops).
    last
        The step's ``energy`` (B,) eV, ``bias_energy`` (B,) eV, ``runaway`` (B,) and ``max_force_deviation`` (B,) eV/Å.
    old_energy
        (B,) eV, potential energy of the step before.
    positions, forces
        (N, 3) Å and eV/Å of the step.
    counts
        (B,) atoms per replica.
    limits
        (``max_energy_jump`` eV/atom, ``max_force_deviation`` eV/Å or None).
    """
    max_energy_jump, max_force_deviation = limits
    energy, batch_index = last['energy'], state.batch.batch
    finite = torch.isfinite(energy) & torch.isfinite(last['bias_energy'])
    atom_ok = torch.isfinite(forces).all(-1) & torch.isfinite(positions).all(-1)
    finite &= torch.zeros_like(finite).index_add_(0, batch_index, ~atom_ok) == 0
    change = energy - old_energy
    jump = change.abs() / counts > max_energy_jump
    blown = state.active & (~finite | jump | last['runaway'])
    exceeded = state.active & ~blown
    if max_force_deviation is not None:
        exceeded &= last['max_force_deviation'] > max_force_deviation
    else:
        exceeded &= False
    return _StepEvents(
        step=state.step,
        any=(blown | exceeded).any(),
        blown=blown,
        exceeded=exceeded,
        runaway=last['runaway'],
        finite=finite,
        energy_change=change,
        deviation=last['max_force_deviation'],
    )


def _read_flags(*flags: Tensor) -> list[bool]:
    """Read 0-d bool device tensors on the host with one synchronisation (packed into the bits of one integer)."""
    if not flags:
        return []
    bits = torch.stack([f.reshape(()) for f in flags]).to(torch.int64)
    packed = int((bits << torch.arange(len(flags), device=bits.device)).sum().item())
    return [bool(packed >> k & 1) for k in range(len(flags))]


def _read_step_flags(moved: Tensor | None, events: _StepEvents | None) -> tuple[bool, bool]:
    """The one host read of a step: (rebuild the Verlet list, did a replica stop at the step before).

    ``moved`` is :meth:`~.neighbors.VerletList.moved_too_far` (None: rebuild anyway); ``events`` the unread events of
    the step before, if any.
    """
    flags = [f for f in (moved, None if events is None else events.any) if f is not None]
    values = _read_flags(*flags)
    rebuild = True if moved is None else values.pop(0)
    happened = False if events is None else values.pop(0)
    return rebuild, happened


def _blown_message(events: _StepEvents, replica: int, max_step_displacement: float) -> str:
    """Why a replica blew up at ``events.step`` (a few host reads; only on such a step)."""
    if bool(events.runaway[replica]):
        why = f'an atom moved more than {max_step_displacement} Å in one step'
    elif not bool(events.finite[replica]):
        why = 'non-finite energy or forces'
    else:
        why = 'potential energy jump'
    return (
        f'{why} at step {events.step}: dE = {float(events.energy_change[replica]):.4g} eV; '
        'kept the state of the step before'
    )


def _deviation_message(deviation: Tensor, replica: int, limit: float, step: int) -> str:
    """A replica's force deviation (B,) eV/Å over the limit at ``step``."""
    return f'max force deviation {float(deviation[replica]):.4g} eV/Å > {limit} eV/Å at step {step}'


def _bias_terms(biases, positions: Tensor, cell, pbc, offsets: Tensor, atom_index: dict) -> tuple:
    """Bias energy (B,) eV, each bias's CV values (B, k) and the bias forces (N, 3) eV/Å.

    A bias with ``energy_from_cv`` gets its forces by the chain rule: ``dE/ds`` (``energy_and_derivative`` where the
    bias has it, else autograd on the few CV values) times each CV's own gradient
    (:meth:`~aiida_mlff.core.colvars.CollectiveVariable.value_and_gradient`, closed form for the common CVs), so no
    autograd graph of the CVs is built per step; any other bias is differentiated through its call.
    """
    forces = torch.zeros_like(positions)
    energy = positions.new_zeros(len(offsets))
    columns = []
    for bias in biases:
        cvs = _bias_cvs(bias)
        if not hasattr(bias, 'energy_from_cv'):
            with torch.enable_grad():
                pos = positions.detach().requires_grad_(True)
                e, values = bias(pos, cell, pbc, offsets)
                (grad,) = torch.autograd.grad(e.sum(), pos, allow_unused=True)
            if grad is not None:
                forces = forces - grad
            energy = energy + e.detach()
            columns.append(values.detach().reshape(len(offsets), -1))
            continue
        values, grads = zip(*(cv.value_and_gradient(positions, cell, pbc, offsets) for cv in cvs), strict=True)
        s = torch.stack(values, dim=-1).detach()
        if hasattr(bias, 'energy_and_derivative'):
            e, de_ds = bias.energy_and_derivative(s)
        else:
            with torch.enable_grad():
                s_var = s.clone().requires_grad_(True)
                e = bias.energy_from_cv(s_var[:, 0] if len(cvs) == 1 else s_var)
                (de_ds,) = torch.autograd.grad(e.sum(), s_var)
        for c, (cv, grad) in enumerate(zip(cvs, grads, strict=True)):
            if id(cv) not in atom_index:
                atoms = torch.as_tensor(cv.atoms, device=offsets.device)
                atom_index[id(cv)] = (offsets.unsqueeze(1) + atoms.unsqueeze(0)).reshape(-1)
            forces.index_add_(0, atom_index[id(cv)], (-de_ds[:, c, None, None] * grad).reshape(-1, 3).to(forces))
        energy = energy + e.detach()
        columns.append(s.detach())
    return energy, columns, forces


def _bias_cvs(bias) -> list[CollectiveVariable]:
    """The CVs a bias acts on (``bias.cvs``, or the one ``bias.cv`` of a harmonic bias)."""
    cvs = getattr(bias, 'cvs', None)
    return list(cvs) if cvs is not None else [bias.cv]


def _restore_extensions(state: MDState, biases, exchange, fresh: bool, counts: Tensor, offsets: Tensor) -> None:
    """Check the exchange pairs; a continued run takes back its biases' state (hills) and exchange counts.

    A fresh run starts its exchange counts from zero; a bias keeps what it holds (e.g. hills given on purpose).
    """
    if exchange is not None:
        exchange.check(counts, state.batch.numbers, offsets)
    if fresh:
        if exchange is not None:
            exchange.reset()  # counts belong to one run; a continued run takes them from its state
        return
    if state.bias_states and len(state.bias_states) != len(biases):
        raise ValueError(f'the state holds {len(state.bias_states)} bias states for {len(biases)} biases')
    for b, saved in zip(biases, state.bias_states, strict=False):
        if saved:
            if not hasattr(b, 'load_state_dict'):
                raise ValueError(f'the state holds a saved state for {b}, which cannot load one')
            b.load_state_dict(saved)
    if exchange is not None and state.exchange_state:
        exchange.load_state_dict(state.exchange_state)


def _exchange_summary(exchange: ReplicaExchange | None) -> dict | None:
    if exchange is None:
        return None
    saved = exchange.state_dict()
    return {**saved, 'acceptance': exchange.acceptance(), 'every': exchange.every}
