"""``simulate``: batched MD of many replicas (umbrella windows x committee x temperatures x systems) in one loop.

One potential evaluation per step covers every replica; neighbour lists are Verlet lists with a skin; harmonic
biases add forces by autograd of the collective variables; replicas that blow up or leave the committee's trust
region are frozen while the others go on. Units: Å, fs, K, eV, amu, radians.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_masses
from torch import Tensor

from ..atoms import AtomsBatch, pair_vectors
from ..colvars import CollectiveVariable, HarmonicBias, batch_offsets
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
        ``'nve'`` (velocity Verlet) or ``'langevin'`` (BAOAB, NVT).
    timestep
        fs.
    steps
        Number of steps.
    temperature
        K, scalar or one per replica: Langevin target and Maxwell-Boltzmann initial velocities.
    friction
        Langevin friction gamma in 1/fs, scalar or one per replica.
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

    Returns
    -------
    MDResult
        Arrays shaped (frames, replicas, ...), per-replica status and the final state.
    """
    if ensemble not in ('nve', 'langevin'):
        raise ValueError(f"ensemble must be 'nve' or 'langevin', got {ensemble!r}")
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
    vlist = VerletList(float(potential.cutoff), skin)
    last: dict[str, Tensor] = {}
    atom_index: dict[int, Tensor] = {}  # per CV: (B, A) flattened indices of its atoms

    def forces_fn(positions: Tensor) -> Tensor:
        # runaway atoms: keep their replica at the old positions so the neighbour list and the potential stay sane
        jumped = ((positions - batch.positions) ** 2).sum(-1) > max_step_displacement**2
        runaway = torch.zeros(n_rep, dtype=torch.bool, device=device).index_add_(0, batch.batch, jumped) > 0
        last['runaway'] = runaway
        positions = torch.where(runaway[batch.batch].unsqueeze(-1), batch.positions, positions)
        batch.positions = positions
        nbrs = vlist.update(batch)
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
    state.forces = forces_fn(batch.positions)
    state.energy, state.bias_energy = last['energy'], last['bias_energy']
    if not fresh and all(x is not None for x in saved):
        # the forces the interrupted run would have used next: a bias that changed at the last step (a hill) acts
        # from the following step on, exactly as in an uninterrupted run
        state.forces, state.energy, state.bias_energy = saved
    recorder = FrameRecorder(counts.cpu().numpy(), batch.numbers.cpu().numpy(), len(names), record_velocities)
    no_flags = torch.zeros(n_rep, dtype=torch.bool, device=device)

    close_pairs: list = [None, None]  # (Verlet list, its pairs that can come closer than min_distance before a rebuild)

    def min_distances() -> Tensor:
        nbrs = vlist.neighbors
        out = torch.full((n_rep,), float('inf'), dtype=dtype, device=device)
        if nbrs is None or nbrs.n_pairs == 0:
            return out
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
            state.stop(r, STATUS_BLOWN_UP, f'atoms closer than {min_distance} Å at step {state.step}')

    def record(v_kin: Tensor, flagged: Tensor) -> None:
        ke = kinetic_energy(v_kin, state.masses, batch.batch, n_rep)
        extra = [cv(batch.positions, batch.cell, batch.pbc, offsets) for cv in extra_cvs]
        cvs = torch.cat([last['cv'], *(e.unsqueeze(-1) for e in extra)], dim=-1) if extra else last['cv']
        recorder.record(
            state.step,
            state.step * timestep,
            valid=state.active | flagged,
            flagged=flagged,
            positions=batch.positions,
            velocities=v_kin,
            potential_energy=state.energy,
            bias_energy=state.bias_energy,
            kinetic_energy=ke,
            temperature=2.0 * ke / (dof * KB),
            colvars=cvs,
            max_force_deviation=last['max_force_deviation'],
            energy_std=last['energy_std'],
            walker=state.walker,
        )

    def check_deviation() -> Tensor:
        if max_force_deviation is None:
            return no_flags
        exceeded = state.active & (last['max_force_deviation'] > max_force_deviation)
        for r in torch.nonzero(exceeded).flatten().tolist():
            state.stop(
                r,
                STATUS_DEVIATION,
                f'max force deviation {float(last["max_force_deviation"][r]):.4g} eV/Å > '
                f'{max_force_deviation} eV/Å at step {state.step}',
            )
        return exceeded

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

    if fresh:
        check_distances()
        record(state.velocities, check_deviation())

    start = _time.perf_counter()
    for _ in range(steps):
        if not bool(state.active.any()):
            break
        old_pos, old_vel, old_energy = batch.positions, state.velocities, state.energy
        moving = state.active[batch.batch].unsqueeze(-1)
        if ensemble == 'nve':
            pos, vel, forces = velocity_verlet_step(
                old_pos, old_vel, state.forces, state.masses, timestep, forces_fn, moving
            )
            v_kin = vel
        else:
            pos, vel, forces, v_kin = baoab_step(
                old_pos,
                old_vel,
                state.forces,
                state.masses,
                timestep,
                forces_fn,
                moving,
                t_atoms,
                gamma_atoms,
                state.generator,
            )
        state.step += 1
        energy = last['energy']
        finite = torch.isfinite(energy) & torch.isfinite(last['bias_energy'])
        atom_ok = torch.isfinite(forces).all(-1) & torch.isfinite(pos).all(-1)
        finite &= torch.zeros_like(finite).index_add_(0, batch.batch, ~atom_ok) == 0
        jump = (energy - old_energy).abs() / counts > max_energy_jump
        blown = state.active & (~finite | jump | last['runaway'])
        exceeded = state.active & ~blown
        if max_force_deviation is not None:
            exceeded &= last['max_force_deviation'] > max_force_deviation
        else:
            exceeded &= False
        event = bool((blown | exceeded).any())
        if event and bool(blown.any()):
            back = blown[batch.batch].unsqueeze(-1)
            pos = torch.where(back, old_pos, pos)
            vel = torch.where(back, old_vel, vel)
            energy = torch.where(blown, old_energy, energy)
            for r in torch.nonzero(blown).flatten().tolist():
                if bool(last['runaway'][r]):
                    why = f'an atom moved more than {max_step_displacement} Å in one step'
                elif not bool(finite[r]):
                    why = 'non-finite energy or forces'
                else:
                    why = 'potential energy jump'
                state.stop(
                    r,
                    STATUS_BLOWN_UP,
                    f'{why} at step {state.step}: dE = {float(last["energy"][r] - old_energy[r]):.4g} eV; '
                    'kept the state of the step before',
                )
        batch.positions, state.velocities, state.forces = pos, vel, forces
        state.energy, state.bias_energy = energy, last['bias_energy']
        for b, values in zip(biases, last['cv_columns'], strict=True):
            if hasattr(b, 'update'):
                b.update(state.step, values, state.active)
        recorded = False
        if event and bool(exceeded.any()):
            exceeded = check_deviation()
            if state.step % stride:
                record(v_kin, exceeded)
                recorded = True
        if not recorded and state.step % stride == 0:
            check_distances()
            record(v_kin, exceeded if event else no_flags)
        if exchange is not None and state.step % exchange.every == 0:
            swap()
    wall = _time.perf_counter() - start
    state.bias_states = [b.state_dict() if hasattr(b, 'state_dict') else {} for b in biases]
    state.exchange_state = exchange.state_dict() if exchange is not None else {}
    return recorder.result(
        state, names, n_neighbor_builds=vlist.n_builds, wall_time=wall, exchange=_exchange_summary(exchange)
    )


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
