"""Fine-tuning against training from scratch: labels saved for the same torsion-scan accuracy (H2O -> H2O2).

The parent is a Behler-Parrinello potential trained on the pw.x water frames of ``tests/data/h2o_pbe_30ry.extxyz``.
H2O2 is labelled here with the same pw.x settings (PBE, 30 Ry, the same pseudopotentials, Gamma point in a 10 Å box;
``scripts/make_h2o_dataset.py`` runs it; results cached under ``--workdir``, so a rerun costs no DFT):

- a pool of rattled H2O2 geometries at random torsions (``--pool``), the training labels in a fixed order;
- the held-out rigid torsion scan (-180 to 180 degrees in 30-degree steps), never trained on.

For every label count n in ``--labels``, the same n pool frames train a model from scratch and fine-tune the parent
(same architecture, same wall-time budget each), and fine-tunes it with rehearsal (``replay_fraction``: as many of the
parent's water frames as new training frames, drawn afresh every epoch, their forces in the loss). Printed: the scan's
energy RMSE relative to its minimum [meV] and force MAE [meV/Å] on the scan, and the parent's water error (its replay
set) before and after fine-tuning. "Labels saved" compares the fewest labels each way needs to reach a scan energy
RMSE (``--target`` meV, default: what fine-tuning reaches with the fewest labels).

Usage: ``python benchmarks/bench_finetune.py [--labels 4 8 16 32] [--budget 60] [--workdir /tmp/mlff_h2o2_pw]``;
about 12 s of one core per H2O2 pw.x frame the first time.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlff.core.models import Potential
from aiida_mlff.core.training import evaluate_metrics, train

ROOT = Path(__file__).resolve().parents[1]
SCAN_DEGREES = np.arange(-180.0, 180.1, 30.0)
MODEL = dict(cutoff=5.0, angular_cutoff=3.5, hidden=(32, 32))  # train_h2o's configuration
#: every run spends its whole budget (no early stop: a handful of labels leaves one validation frame); the best
#: weights on the validation split are kept
SCRATCH = dict(learning_rate=1e-2, energy_weight=100.0, patience=10**6, lr_patience=30, polish_steps=300)
FINE = dict(SCRATCH, learning_rate=2e-3)
REPLAY_FRACTION = 1.0  # 'rehearsal': water frames per new training frame in every epoch (train's replay_fraction)
METHODS = ('scratch', 'fine-tune', 'rehearsal')


def _pw_module():
    spec = importlib.util.spec_from_file_location('make_h2o_dataset', ROOT / 'scripts' / 'make_h2o_dataset.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def h2o2(torsion: float, rattle: float, rng: np.random.Generator) -> Atoms:
    """H2O2 at an H-O-O-H torsion [degrees], atoms displaced by Gaussian noise of ``rattle`` Å, in a 10 Å box."""
    atoms = molecule('H2O2')
    atoms.set_dihedral(2, 0, 1, 3, torsion, indices=[3])
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape) if rattle else 0.0
    atoms.set_cell([10.0] * 3)
    atoms.center()
    atoms.pbc = True
    return atoms


def _label(job: tuple[Atoms, Path]) -> Atoms:
    atoms, workdir = job
    labelled = _pw_module().run_pw(atoms, workdir, conv_thr=1e-8)
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=labelled.get_potential_energy(), forces=labelled.get_forces())
    return frame


def label_h2o2(workdir: Path, pool: int, seed: int, processes: int) -> tuple[list[Atoms], list[Atoms]]:
    """(pool frames, scan frames) labelled by pw.x, cached in ``workdir``."""
    rng = np.random.default_rng(seed)
    geometries = [h2o2(rng.uniform(-180, 180), 0.06, rng) for _ in range(pool)]
    scan = [h2o2(t, 0.0, rng) for t in SCAN_DEGREES]
    jobs = [(a, workdir / f'pool_{k:03d}') for k, a in enumerate(geometries)]
    jobs += [(a, workdir / f'scan_{k:03d}') for k, a in enumerate(scan)]
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    with multiprocessing.Pool(processes) as workers:
        frames = workers.map(_label, jobs)
    return frames[:pool], frames[pool:]


def scan_errors(pot, scan: list[Atoms]) -> dict[str, float]:
    """Energy RMSE of the scan relative to each curve's minimum [meV] and force MAE on it [meV/Å]."""
    metrics = evaluate_metrics(pot, scan)
    calc = pot.calculator()
    predicted = []
    for atoms in scan:
        atoms = atoms.copy()
        atoms.calc = calc
        predicted.append(atoms.get_potential_energy())
    reference = np.array([a.get_potential_energy() for a in scan])
    predicted = np.array(predicted)
    error = (predicted - predicted.min()) - (reference - reference.min())
    return {'scan_rmse_meV': 1000 * float(np.sqrt(np.mean(error**2))), 'force_mae': metrics['force_mae_meV_per_A']}


def parent_potential(water: list[Atoms], budget: float, path: Path) -> Potential:
    """The water model (cached at ``path``)."""
    if path.exists():
        return Potential.load(path)
    pot = Potential.build(['H', 'O'], seed=0, **MODEL)
    train(pot, water, epochs=100000, time_budget=budget, seed=0, **SCRATCH)
    pot.save(path)
    return pot


def run_one(method: str, n: int, pool: list[Atoms], parent_path: Path, water: list[Atoms], budget: float) -> dict:
    """Train (scratch) or fine-tune on the first ``n`` pool frames; the report's numbers."""
    frames = pool[:n]
    start = time.perf_counter()
    if method == 'scratch':
        pot = Potential.build(['H', 'O'], seed=1, **MODEL)
        report = train(pot, frames, epochs=100000, time_budget=budget, seed=1, validation_fraction=0.1, **SCRATCH)
    else:
        pot = Potential.load(parent_path)
        fraction = REPLAY_FRACTION if method == 'rehearsal' else 0.0
        report = train(
            pot,
            frames,
            epochs=100000,
            time_budget=budget,
            seed=1,
            validation_fraction=0.1,
            replay=water,
            replay_fraction=fraction,
            **FINE,
        )
    row = {'method': method, 'labels': n, 'seconds': time.perf_counter() - start, 'statistics': report['statistics']}
    if 'replay' in report:
        row['water_before'] = report['replay']['before']['force_mae_meV_per_A']
        row['water_after'] = report['replay']['after']['force_mae_meV_per_A']
    return row, pot


def _fewest(rows: list[dict], method: str, target: float) -> int | None:
    hits = [r['labels'] for r in rows if r['method'] == method and r['scan_rmse_meV'] <= target]
    return min(hits) if hits else None


def print_table(rows: list[dict], target: float) -> None:
    header = f'{"method":9s} {"labels":>6s} {"scan RMSE meV":>14s} {"scan F MAE":>11s}'
    print(f'\n{header} {"water F MAE before/after":>25s}')
    for r in rows:
        water = f'{r["water_before"]:.1f} / {r["water_after"]:.1f}' if 'water_before' in r else '-'
        print(
            f'{r["method"]:9s} {r["labels"]:6d} {r["scan_rmse_meV"]:14.1f} {r["force_mae"]:11.1f} {water:>25s}'
            f'   ({r["seconds"]:.0f} s, statistics {r["statistics"]})'
        )
    fine, scratch = _fewest(rows, 'fine-tune', target), _fewest(rows, 'scratch', target)
    print(f'\nscan RMSE target {target:.1f} meV: fine-tuning needs {fine} labels, scratch {scratch}', end='')
    if fine and scratch:
        print(f' -> {scratch - fine} labels saved ({scratch / fine:.1f}x)')
    else:
        print(' (scratch never reached it in the label counts tried)' if fine else '')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--labels', type=int, nargs='+', default=[4, 8, 16, 32])
    parser.add_argument('--pool', type=int, default=32, help='pw.x-labelled H2O2 training geometries')
    parser.add_argument('--budget', type=float, default=60.0, help='training wall time per model [s]')
    parser.add_argument('--parent-budget', type=float, default=200.0, help='training time of the water model [s]')
    parser.add_argument('--target', type=float, default=None, help='scan energy RMSE to reach [meV]')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--workdir', type=Path, default=Path('/tmp/mlff_h2o2_pw'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f'machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; training budget {args.budget:.0f} s')
    started = time.perf_counter()
    pool, scan = label_h2o2(args.workdir, max(args.pool, max(args.labels)), args.seed, args.threads)
    print(f'pw.x labels: {len(pool)} pool + {len(scan)} scan frames ({time.perf_counter() - started:.0f} s)')
    water = ase.io.read(ROOT / 'tests' / 'data' / 'h2o_pbe_30ry.extxyz', index=':')
    parent_path = args.workdir / 'parent_water.pt'
    parent = parent_potential(water, args.parent_budget, parent_path)
    rows = [{'method': 'parent', 'labels': 0, 'seconds': 0.0, 'statistics': '-', **scan_errors(parent, scan)}]
    for n in args.labels:
        for method in METHODS:
            row, pot = run_one(method, n, pool, parent_path, water, args.budget)
            rows.append({**row, **scan_errors(pot, scan)})
            print(rows[-1], flush=True)
    fine_first = next(r for r in rows if r['method'] == 'fine-tune')
    print_table(rows, args.target if args.target is not None else fine_first['scan_rmse_meV'])


if __name__ == '__main__':
    main()
