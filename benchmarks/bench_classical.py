"""MD speed: our Behler-Parrinello potential in ``simulate`` vs OpenMM flexible TIP3P-FB with PME, same boxes.

For each box size (atoms; water_box of atoms/3 molecules at 1 g/cm^3, O, H, H order) both codes run Langevin MD at
300 K with a 0.5 fs step on the CPU with the same number of threads, after an untimed equilibration, and the table
gives atom-steps per second (atoms x steps / wall s) and the ratio ours / OpenMM. OpenMM: ``amber14/tip3pfb.xml``,
``rigidWater=False``, no constraints, PME with a 9 Å and a 5 Å real-space cutoff (shortened, and labelled, where the
box is smaller than twice the cutoff), LangevinMiddleIntegrator (1/ps), platform CPU. Ours: the BP model of
``water_model.py`` (trained on FlexibleWater liquid frames, so that the box stays liquid; a replica stopped by the MD
guards makes its figure invalid, which the table says instead of a number). Optionally (``--nve-ps``) the energy
drift of NVE with our loop on the 768-atom box.

Usage: ``python benchmarks/bench_classical.py [--potential PATH] [--threads 2] [--steps 1000] [--sizes 96 768 6144]
[--quick] [--nve-ps 10] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from aiida_mlff.core.analytic import water_box
from aiida_mlff.core.md import simulate

HEADLINE_ATOMS = 768
CUTOFFS = (9.0, 5.0)  # Å, OpenMM PME real-space cutoffs
DEFAULT_TRAIN_SECONDS = 240.0  # s, training of the BP model when none is cached
TIMESTEP = 0.5  # fs
TEMPERATURE = 300.0  # K


def _load_potential(path: Path | None, threads: int, seconds: float):
    """The BP potential from ``path``, or ``water_model.stable_water_potential`` cached in the temp dir."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from water_model import cache_path, stable_water_potential

    if path is None:
        path = cache_path('flexible', seconds)
    return stable_water_potential(path, seconds=seconds, threads=threads), path


def time_ours(pot, box: Atoms, steps: int, equilibration: int, seed: int = 0) -> dict:
    """Atom-steps/s of Langevin MD (300 K, 0.5 fs, friction 0.01/fs) with ``simulate``, after ``equilibration``.

    The timed call includes its set-up (first neighbour list and forces). ``rate`` is None when a replica stopped.
    """
    kwargs = dict(ensemble='langevin', timestep=TIMESTEP, temperature=TEMPERATURE, friction=0.01, seed=seed)
    warm = simulate(pot, box, steps=equilibration, stride=max(equilibration, 1), **kwargs)
    if list(warm.status) != ['ok']:
        return {'rate': None, 'status': list(warm.status), 'why': f'equilibration: {warm.diagnostic[0]}'}
    start = time.perf_counter()
    result = simulate(pot, None, steps=steps, stride=steps, state=warm.final_state, **kwargs)
    wall = time.perf_counter() - start
    temperatures = np.asarray(result.temperature)  # K, (frames, 1): no frame when the replica stopped before one
    temperature = float(temperatures[-1, 0]) if len(temperatures) else float('nan')
    ok = list(result.status) == ['ok']
    done = int(result.final_state.step) - int(warm.final_state.step)  # the loop ends when its replica stops
    return {
        'rate': len(box) * steps / wall if ok else None,
        'rate_done': len(box) * done / wall if done > 0 else None,  # over the steps run, also when it stopped
        'steps_done': done,
        'wall_s': wall,
        'steps': steps,
        'status': list(result.status),
        'why': '' if ok else result.diagnostic[0],
        'temperature_K': temperature,
    }


def openmm_system(box: Atoms, cutoff: float):
    """OpenMM topology, system and positions [nm] of ``box`` with flexible TIP3P-FB and PME at ``cutoff`` [Å]."""
    from openmm import app, unit

    topology = app.Topology()
    chain = topology.addChain()
    elements = {'O': app.element.oxygen, 'H': app.element.hydrogen}
    for _ in range(len(box) // 3):
        residue = topology.addResidue('HOH', chain)
        o, h1, h2 = (topology.addAtom(n, elements[n[0]], residue) for n in ('O', 'H1', 'H2'))
        topology.addBond(o, h1)
        topology.addBond(o, h2)
    topology.setPeriodicBoxVectors(np.asarray(box.cell) * 0.1 * unit.nanometer)
    forcefield = app.ForceField('amber14/tip3pfb.xml')
    system = forcefield.createSystem(
        topology,
        nonbondedMethod=app.PME,
        nonbondedCutoff=cutoff * 0.1 * unit.nanometer,
        constraints=None,
        rigidWater=False,
    )
    return topology, system, box.positions * 0.1


def allowed_cutoff(cutoff: float, box: Atoms) -> float:
    """``cutoff`` [Å], or the largest 0.05 Å multiple below half the shortest box edge when it does not fit."""
    half = 0.5 * float(min(box.cell.lengths()))
    return cutoff if cutoff < half else float(np.floor((half - 1e-6) / 0.05) * 0.05)


def time_openmm(box: Atoms, cutoff: float, threads: int, steps: int, equilibration: int) -> dict:
    """Atom-steps/s of OpenMM flexible TIP3P-FB (PME, cutoff [Å]) Langevin MD at 300 K, 0.5 fs, on the CPU."""
    import openmm
    from openmm import unit

    _, system, positions = openmm_system(box, cutoff)
    integrator = openmm.LangevinMiddleIntegrator(
        TEMPERATURE * unit.kelvin, 1.0 / unit.picosecond, TIMESTEP * unit.femtosecond
    )
    integrator.setRandomNumberSeed(1)
    platform = openmm.Platform.getPlatformByName('CPU')
    context = openmm.Context(system, integrator, platform, {'Threads': str(threads)})
    context.setPositions(positions * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    context.setVelocitiesToTemperature(TEMPERATURE * unit.kelvin, 1)
    integrator.step(equilibration)
    context.getState(getEnergy=True)
    start = time.perf_counter()
    integrator.step(steps)
    state = context.getState(getEnergy=True)
    wall = time.perf_counter() - start
    kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    temperature = 2 * kinetic / ((3 * len(box) - 3) * 0.0083144626)  # R in kJ/mol/K; the COM motion is removed
    return {
        'rate': len(box) * steps / wall,
        'wall_s': wall,
        'steps': steps,
        'temperature_K': temperature,
        'threads': platform.getPropertyValue(context, 'Threads'),
    }


def nve_drift(pot, picoseconds: float, equilibration: int, n_molecules: int = HEADLINE_ATOMS // 3) -> dict:
    """Total-energy drift [eV/atom] of NVE (0.5 fs) with ``simulate`` after Langevin equilibration at 300 K.

    ``drift``: slope of a linear fit of E(t) times the run length, per atom; ``max_dev``: max |E(t) - E(0)| per atom.
    """
    box = water_box(n_molecules)
    langevin = dict(ensemble='langevin', temperature=TEMPERATURE, friction=0.01, seed=2)
    warm = simulate(pot, box, timestep=TIMESTEP, steps=equilibration, stride=max(equilibration, 1), **langevin)
    steps = round(picoseconds * 1000 / TIMESTEP)
    stride = max(1, steps // 400)
    start = time.perf_counter()
    result = simulate(pot, None, ensemble='nve', timestep=TIMESTEP, steps=steps, stride=stride, state=warm.final_state)
    wall = time.perf_counter() - start
    t = np.asarray(result.time) / 1000.0  # ps
    energy = np.asarray(result.total_energy)[:, 0] / len(box)
    ok = list(result.status) == ['ok'] and bool(np.isfinite(energy).all())
    slope = np.polyfit(t - t[0], energy, 1)[0] if ok else float('nan')
    return {
        'picoseconds': picoseconds,
        'atoms': len(box),
        'status': list(result.status),
        'drift_eV_per_atom': float(slope * (t[-1] - t[0])),
        'max_dev_eV_per_atom': float(np.nanmax(np.abs(energy - energy[0]))),
        'temperature_K': float(np.nanmean(np.asarray(result.temperature)[:, 0])),
        'wall_s': wall,
    }


def measure_size(pot, atoms: int, threads: int, steps: int, equilibration: int) -> dict:
    """Ours and OpenMM (each cutoff of ``CUTOFFS``) on a box of ``atoms`` atoms; rates in atom-steps/s."""
    box = water_box(atoms // 3)
    row = {'atoms': len(box), 'box_A': float(box.cell.lengths()[0]), 'ours': time_ours(pot, box, steps, equilibration)}
    row['openmm'] = {}
    for cutoff in CUTOFFS:
        used = allowed_cutoff(cutoff, box)
        try:
            result = time_openmm(box, used, threads, steps, equilibration)
        except Exception as error:  # a failed peer is reported, not fatal
            result = {'rate': None, 'why': f'{type(error).__name__}: {error}'}
        row['openmm'][f'{cutoff:g}'] = {**result, 'cutoff_A': used}
        ours = row['ours']['rate']
        row[f'ratio_{cutoff:g}'] = ours / result['rate'] if ours and result['rate'] else None
    return row


def _cell(value: float | None, why: str = 'invalid') -> str:
    return f'{value:12,.0f}' if value else f'{why:>12s}'


def print_table(rows: list[dict], threads: int) -> None:
    """One line per size: atom-steps/s of ours and OpenMM (9 Å, 5 Å cutoffs) and the ratios ours / OpenMM."""
    head = f'{"atoms":>6s} {"ours BP":>12s} {"OpenMM 9 Å":>12s} {"OpenMM 5 Å":>12s} {"ours/9 Å":>9s} {"ours/5 Å":>9s}'
    print(f'\nMD atom-steps/s, Langevin 300 K, 0.5 fs, {threads} threads (OpenMM: flexible TIP3P-FB, PME, CPU)')
    print(head)
    notes = []
    for row in rows:
        ours, omm = row['ours'], row['openmm']
        ratios = [f'{r:9.2f}' if r else f'{"-":>9s}' for r in (row['ratio_9'], row['ratio_5'])]
        cells = [_cell(ours['rate'], 'STOPPED'), _cell(omm['9']['rate'], 'failed'), _cell(omm['5']['rate'], 'failed')]
        print(f'{row["atoms"]:6d} {" ".join(cells)} {" ".join(ratios)}')
        for key, value in omm.items():
            if value['cutoff_A'] != float(key):
                notes.append(
                    f'{row["atoms"]} atoms: box {row["box_A"]:.2f} Å, OpenMM "{key} Å" ran at {value["cutoff_A"]:.2f} Å'
                )
            if value['rate'] is None:
                notes.append(f'{row["atoms"]} atoms: OpenMM {key} Å failed: {value["why"]}')
        if ours['rate'] is None:
            notes.append(f'{row["atoms"]} atoms: our replica stopped ({ours["status"]}): {ours["why"]}')
    for note in notes:
        print(f'  note: {note}')
    headline = next((r for r in rows if r['atoms'] == HEADLINE_ATOMS), None)
    if headline and headline['ratio_9']:
        met = 'yes' if headline['ratio_9'] >= 1.0 else 'NO'
        print(f'headline {HEADLINE_ATOMS} atoms: ours / OpenMM(9 Å) = {headline["ratio_9"]:.2f} (target >= 1.0: {met})')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--potential', type=Path, default=None, help='BP potential file (default: train and cache)')
    parser.add_argument('--train-seconds', type=float, default=None, help='training time when no file is cached')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--steps', type=int, default=None, help='timed steps per run (default 1000, quick 200)')
    parser.add_argument('--equilibration', type=int, default=None, help='untimed steps (default 200, quick 50)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[96, 768, 6144], help='atoms (multiples of 3)')
    parser.add_argument('--quick', action='store_true', help='fewer steps')
    parser.add_argument('--nve-ps', type=float, default=0.0, help='NVE drift run of this many ps (768 atoms)')
    parser.add_argument('--kernel', default=None, help="set Potential.kernel ('auto', 'torch', 'compiled')")
    parser.add_argument('--json', action='store_true', help='print one RESULT {json} line at the end')
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 1000)
    equilibration = args.equilibration if args.equilibration is not None else (50 if args.quick else 200)
    torch.set_num_threads(args.threads)
    seconds = args.train_seconds or DEFAULT_TRAIN_SECONDS
    t0 = time.perf_counter()
    pot, path = _load_potential(args.potential, args.threads, seconds)
    if args.kernel:
        pot.kernel = args.kernel
    print(f'potential {path} ({time.perf_counter() - t0:.0f} s); load average {os.getloadavg()[0]:.2f}', flush=True)
    rows = []
    for atoms in args.sizes:
        rows.append(measure_size(pot, atoms, args.threads, steps, equilibration))
        print(f'[{atoms} atoms done, {time.perf_counter() - t0:.0f} s]', flush=True)
    print_table(rows, args.threads)
    nve = nve_drift(pot, args.nve_ps, equilibration) if args.nve_ps > 0 else None
    if nve:
        print(
            f'NVE {nve["picoseconds"]:g} ps, {nve["atoms"]} atoms: drift {nve["drift_eV_per_atom"]:.2e} eV/atom, '
            f'max |E-E0| {nve["max_dev_eV_per_atom"]:.2e} eV/atom, <T> {nve["temperature_K"]:.0f} K, '
            f'status {nve["status"]} (target < 1e-4 eV/atom over 10 ps)'
        )
    load = os.getloadavg()[0]
    print(f'load average at the end {load:.2f}')
    if args.json:
        result = {
            'threads': args.threads,
            'steps': steps,
            'rows': rows,
            'nve': nve,
            'load': load,
            'potential': str(path),
        }
        print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
