"""Accuracy on real DFT: train on 80% of the pw.x water data within a time limit, test on the other 20%.

Prints a table: energy and force errors on the held-out 20%, training time, and the harmonic frequencies of H2O
from the potential's autograd Hessian against central finite differences of the same DFT
(``tests/data/h2o_pbe_30ry_frequencies.json``), at the DFT minimum and at the potential's own minimum.
Targets: force MAE <= 40 meV/Å, energy MAE <= 2 meV/atom, frequencies within 3%.

Usage: ``python benchmarks/train_h2o.py [--max-time 280] [--threads 2] [--output /tmp/h2o.pt]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.optimize import BFGS

from aiida_mlff.core.models import Potential
from aiida_mlff.core.training import evaluate_metrics, split_indices, train
from aiida_mlff.core.vibrations import frequencies

DATA = Path(__file__).resolve().parents[1] / 'tests' / 'data'
#: training options of this benchmark (also used by water_model.py); patience: early stopping, the best weights on
#: the validation split are kept
RECIPE = dict(
    epochs=100000,
    batch_size=16,
    learning_rate=1e-2,
    energy_weight=100.0,
    forces_weight=1.0,
    validation_fraction=0.1,
    patience=300,
    lr_patience=30,
    min_learning_rate=1e-5,
    polish_steps=1000,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--max-time', type=float, default=280.0, help='training wall time limit [s]')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--committee', type=int, default=1)
    parser.add_argument('--hidden', type=int, nargs='+', default=[32, 32], help='hidden layer widths')
    parser.add_argument('--load', type=Path, default=None, help='evaluate this potential file instead of training')
    parser.add_argument('--output', type=Path, default=Path('/tmp/aiida_mlff_h2o.pt'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    frames = ase.io.read(DATA / 'h2o_pbe_30ry.extxyz', index=':')
    train_idx, test_idx = split_indices(len(frames), 0.2, seed=args.seed)
    train_frames = [frames[k] for k in train_idx]
    test_frames = [frames[k] for k in test_idx]

    if args.load:  # evaluate a potential written by an earlier run of this script
        pot = Potential.load(args.load)
        report = {
            'epochs_run': pot.metadata['training']['epochs_run'],
            'best_epoch': pot.metadata['training']['best_epoch'],
        }
        elapsed = float(pot.metadata.get('training_time_s', float('nan')))
        args.output = args.load
    else:
        pot, report, elapsed = _train(args, train_frames)
    test = evaluate_metrics(pot, test_frames)
    pot.metadata['metrics']['test'] = test
    if not args.load:
        pot.save(args.output)
    _print_results(args, pot, report, elapsed, frames, train_frames, test_frames, test)


def _train(args, train_frames):
    pot = Potential.build(['H', 'O'], committee=args.committee, seed=args.seed, hidden=tuple(args.hidden))
    start = time.perf_counter()
    report = train(pot, train_frames, **RECIPE, time_budget=args.max_time, seed=args.seed)
    elapsed = time.perf_counter() - start
    pot.metadata['training_time_s'] = elapsed
    return pot, report, elapsed


def _print_results(args, pot, report, elapsed, frames, train_frames, test_frames, test) -> None:

    ref = json.loads((DATA / 'h2o_pbe_30ry_frequencies.json').read_text())
    dft_min = Atoms(ref['symbols'], positions=ref['positions'])
    f_ref = np.array(ref['frequencies_cm-1'])
    f_at_dft = frequencies(pot, dft_min)
    own_min = dft_min.copy()
    pot64 = Potential.load(args.output).to(torch.float64)  # relax in float64: float32 forces are too noisy
    own_min.calc = pot64.calculator()
    BFGS(own_min, logfile=None).run(fmax=1e-3, steps=200)
    f_at_own = frequencies(pot, own_min)

    n_train, n_test = len(train_frames), len(test_frames)
    print(f'\ndata: {len(frames)} pw.x frames; train {n_train} (of which 10% validation), test {n_test}')
    print(
        f'training: {report["epochs_run"]} epochs in {elapsed:.0f} s wall ({args.threads} threads), '
        f'best epoch {report["best_epoch"]}'
    )
    print(f'{"metric (test 20%)":38s} {"value":>10s} {"target":>10s}')
    rows = [
        ('energy MAE [meV/atom]', test['energy_mae_meV_per_atom'], '<= 2'),
        ('energy RMSE [meV/atom]', test['energy_rmse_meV_per_atom'], ''),
        ('force MAE [meV/Å]', test['force_mae_meV_per_A'], '<= 40'),
        ('force RMSE [meV/Å]', test['force_rmse_meV_per_A'], ''),
    ]
    for element, values in test['per_element'].items():
        rows.append((f'force MAE {element} [meV/Å]', values['force_mae_meV_per_A'], ''))
    for name, value, target in rows:
        print(f'{name:38s} {value:10.2f} {target:>10s}')
    header = f'{"DFT FD":>9s} {"at DFT min":>11s} {"err %":>7s} {"at own min":>11s} {"err %":>7s}'
    print(f'\n{"frequencies [cm^-1]":20s} {header}')
    for k, name in enumerate(['bend', 'sym. stretch', 'asym. stretch']):
        e1 = 100 * (f_at_dft[k] - f_ref[k]) / f_ref[k]
        e2 = 100 * (f_at_own[k] - f_ref[k]) / f_ref[k]
        print(f'{name:20s} {f_ref[k]:9.1f} {f_at_dft[k]:11.1f} {e1:7.2f} {f_at_own[k]:11.1f} {e2:7.2f}')
    print(f'\npotential written to {args.output}')


if __name__ == '__main__':
    main()
