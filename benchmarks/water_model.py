"""A Behler-Parrinello water potential that is stable in a periodic liquid box, for MD speed benchmarks and NPT.

The model of ``train_h2o.py`` (H, O; one member; hidden (32, 32); default descriptor: 5 Å radial, 3.5 Å angular
cutoff, float32) fitted to condensed-phase labels of :class:`aiida_mlff.core.analytic.FlexibleWater` (SPC/Fw bonds
and angle, O-O Lennard-Jones, no charges): frames of Langevin MD of 96-atom periodic boxes at 300-600 K, and hot
compressed boxes, so that thermal distortions and close intermolecular contacts are covered. A model trained on
isolated molecules, or an untrained one, may collapse a liquid box; timing MD with it measures nothing.

``reference='charged'`` trains the same recipe on :class:`aiida_mlff.core.analytic.ChargedFlexibleWater` (SPC/Fw with
its charges, damped shifted force Coulomb: a liquid at 1 bar) instead, with stress labels (the loss gets the virial
term, ``stress_weight`` 1 by default), from that referee's own Langevin MD of 32-molecule boxes over 0.9-1.1 g/cm^3 at
300-450 K plus hot and hot compressed boxes (``CHARGED_CONDITIONS``), so that compressed and expanded liquid are both
in the data: the model for ``bench_npt.py``. The default (``'flexible'``) is unchanged.

Usage: ``python benchmarks/water_model.py [--reference flexible|charged] [--output /tmp/water_bp.pt] [--seconds 240]
[--threads 2] [--check-steps 2000] [--check-molecules 256]`` trains (or loads, if the file exists), prints the
held-out errors against the referee and checks stability: Langevin MD at 300 K of a periodic box (256 molecules,
768 atoms, by default) must finish with status ok and a sane temperature.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from aiida_mlff.core.analytic import ChargedFlexibleWater, FlexibleWater, water_box
from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.md import simulate
from aiida_mlff.core.models import Potential
from aiida_mlff.core.training import evaluate_metrics, split_indices, train

#: (temperature [K], density [g/cm^3]) of the FlexibleWater MD runs that generate training frames: the liquid at
#: 300-600 K, and hot compressed boxes so that close intermolecular contacts (which the model must learn to repel)
#: are in the data
CONDITIONS = ((300.0, 1.0), (450.0, 1.0), (600.0, 1.0), (600.0, 1.2), (900.0, 1.2))

#: the same for the charged referee (``reference='charged'``): compressed and expanded liquid at 300 and 450 K, a hot
#: box and a hot compressed one (close contacts)
CHARGED_CONDITIONS = (
    (300.0, 0.9),
    (300.0, 1.0),
    (300.0, 1.1),
    (450.0, 0.9),
    (450.0, 1.0),
    (450.0, 1.1),
    (600.0, 1.0),
    (600.0, 1.2),
)

#: referee name -> (class, training conditions, MD steps per condition, whether frames carry stress labels,
#: description); the charged referee's 9 Å Coulomb pairs make its MD about ten times dearer: half the steps (24
#: frames per condition after equilibration, 192 in all)
REFERENCES = {
    'flexible': (
        FlexibleWater,
        CONDITIONS,
        4000,
        False,
        'FlexibleWater (SPC/Fw bonds and angle, O-O LJ, no charges)',
    ),
    'charged': (
        ChargedFlexibleWater,
        CHARGED_CONDITIONS,
        2000,
        True,
        'ChargedFlexibleWater (SPC/Fw with charges, DSF Coulomb alpha 0.2/Å, cutoff 9 Å), stress labels',
    ),
}


def cache_path(reference: str = 'flexible', seconds: float | None = None) -> Path:
    """The temp-dir cache file of the model trained on ``reference`` (with ``seconds``: one per training budget)."""
    name = 'aiida_mlff_water_bp' + ('' if reference == 'flexible' else f'_{reference}')
    return Path(tempfile.gettempdir()) / (name + ('' if seconds is None else f'_{int(seconds)}s') + '.pt')


def water_frames(
    conditions: tuple[tuple[float, float], ...] = CONDITIONS,
    steps: int = 4000,
    stride: int = 80,
    equilibration: int = 100,
    n_molecules: int = 32,
    seed: int = 0,
    reference: str = 'flexible',
) -> list[Atoms]:
    """Frames of the referee's Langevin MD (0.5 fs steps) labelled with its energy [eV] and forces [eV/Å].

    One replica per (temperature [K], density [g/cm^3]) condition, all in one batch; the first ``equilibration``
    steps are dropped. ``reference``: a key of :data:`REFERENCES`; ``'charged'`` also labels the stress [eV/Å^3].
    """
    boxes = [water_box(n_molecules, density=rho, seed=seed + k) for k, (_, rho) in enumerate(conditions)]
    cls, _, _, with_stress, _ = REFERENCES[reference]
    reference_pot = cls()
    result = simulate(
        reference_pot,
        boxes,
        ensemble='langevin',
        timestep=0.5,
        temperature=[t for t, _ in conditions],
        friction=0.01,
        steps=steps,
        stride=stride,
        seed=seed,
    )
    if any(s != 'ok' for s in result.status):
        raise RuntimeError(f'{cls.__name__} MD failed: {result.diagnostic}')
    keep = np.asarray(result.step) >= equilibration
    frames = [
        Atoms(box.numbers, positions=result.positions[f, r], cell=box.cell, pbc=True)
        for f in np.flatnonzero(keep)
        for r, box in enumerate(boxes)
    ]
    return label(frames, reference_pot, stress=with_stress)


def label(frames: list[Atoms], reference, chunk: int = 64, stress: bool = False) -> list[Atoms]:
    """Attach the reference energies [eV], forces [eV/Å] and, with ``stress``, stresses [eV/Å^3, Voigt] (float64) as
    SinglePointCalculators, in place."""
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        batch = AtomsBatch.from_atoms(part, dtype=torch.float64)
        out = reference.evaluate(batch, forces=True, stress=stress)
        energies = out['energy'].numpy()
        forces = out['forces'].numpy()
        offset = 0
        for k, atoms in enumerate(part):
            n = len(atoms)
            results = {'energy': float(energies[k]), 'forces': forces[offset : offset + n]}
            if stress:
                results['stress'] = full_3x3_to_voigt_6_stress(out['stress'][k].numpy())
            atoms.calc = SinglePointCalculator(atoms, **results)
            offset += n
    return frames


def _fit(pot: Potential, frames: list[Atoms], seconds: float, seed: int) -> dict:
    """Train ``pot`` in place with the recipe of ``train_h2o.py`` within ``seconds`` of wall time.

    With stress labels, the descriptor Jacobians of all frames are stored even beyond ``training.JACOBIAN_BUDGET``
    (``precompute`` as a budget of 10^10 floats; about 8 MB per 96-atom frame in float64): without them every step
    differentiates the descriptors twice (strain and weights). The budget is wall time: on a loaded machine (load 6-9
    on two cores) 300 s gave only 10 epochs.
    """
    from train_h2o import RECIPE

    with_stress = any('stress' in atoms.calc.results for atoms in frames)
    return train(pot, frames, **RECIPE, time_budget=seconds, seed=seed, precompute=10**10 if with_stress else True)


def stable_water_potential(
    path: str | Path | None = None,
    seconds: float = 240.0,
    threads: int = 2,
    seed: int = 0,
    reference: str = 'flexible',
    **hyper,
) -> Potential:
    """The BP water potential trained on liquid frames of a referee; loaded from ``path`` when that file exists.

    Parameters
    ----------
    path
        Cache file: read if it exists, else written after training; the labelled frames are cached next to it
        (``.frames.extxyz``).
    seconds
        Training wall time [s]; frame generation and descriptor precomputation (about a minute on two cores) come on
        top. 60 s was not enough: such a model let intermolecular H atoms collapse onto each other within 1,000 steps
        of the 768-atom box at 300 K; 240 s (about 130 epochs on two cores) kept it stable for 10,000 steps. The
        budget is wall time, so a loaded machine gets fewer epochs: keep the cache file.
    threads
        torch threads for training.
    seed
        Seed of the weights, the frames and the split.
    reference
        ``'flexible'`` (default: :class:`FlexibleWater`, energies and forces, ``CONDITIONS``) or ``'charged'``
        (:class:`ChargedFlexibleWater`, energies, forces and stresses, ``CHARGED_CONDITIONS``); use a cache file of
        its own for each.
    **hyper
        Passed to ``Potential.build`` (default the configuration of ``train_h2o.py``: hidden (32, 32)).

    The held-out (20%) errors against the referee are stored in ``pot.metadata['metrics']['test']``.
    """
    if path is not None and Path(path).exists():
        return Potential.load(path)
    torch.set_num_threads(threads)
    _, conditions, steps, _, description = REFERENCES[reference]
    start = time.perf_counter()
    cache = None if path is None else Path(path).with_suffix('.frames.extxyz')
    if cache is not None and cache.exists():
        frames = ase.io.read(cache, index=':')
    else:
        frames = water_frames(conditions, steps=steps, seed=seed, reference=reference)
        if cache is not None:
            ase.io.write(cache, frames)
    frames_time = time.perf_counter() - start
    train_idx, test_idx = split_indices(len(frames), 0.2, seed=seed)
    hyper = {'hidden': (32, 32), **hyper}
    pot = Potential.build(['H', 'O'], committee=1, seed=seed, **hyper)
    start = time.perf_counter()
    previous = getattr(pot, 'kernel', 'auto')
    pot.kernel = 'torch'  # validate through the reference torch path; MD then uses the default (compiled) kernels
    try:
        report = _fit(pot, [frames[k] for k in train_idx], seconds, seed)
    finally:
        pot.kernel = previous
    pot.metadata['training_time_s'] = time.perf_counter() - start
    pot.metadata['water_model'] = {
        'reference': description,
        'frames': len(frames),
        'frames_time_s': frames_time,
        'conditions_K_g_cm3': [list(c) for c in conditions],
        'epochs_run': report['epochs_run'],
    }
    if path is not None:
        pot.save(path)  # before the test metrics: the training is the expensive part
    pot.metadata['metrics']['test'] = evaluate_metrics(pot, [frames[k] for k in test_idx])
    if path is not None:
        pot.save(path)
    return pot


def check_stability(pot: Potential, n_molecules: int = 256, steps: int = 2000, seed: int = 1) -> dict:
    """Langevin MD at 300 K (0.5 fs, friction 0.01/fs) of a periodic water box; status and temperatures [K]."""
    box = water_box(n_molecules, seed=seed)
    stride = max(1, steps // 20)
    start = time.perf_counter()
    result = simulate(
        pot, box, ensemble='langevin', timestep=0.5, temperature=300.0, friction=0.01, steps=steps, stride=stride
    )
    wall = time.perf_counter() - start
    temps = np.asarray(result.temperature)[:, 0]
    late = temps[len(temps) // 2 :]
    return {
        'status': list(result.status),
        'diagnostic': list(result.diagnostic),
        'atoms': len(box),
        'steps': steps,
        'wall_s': wall,
        'temperature_mean_K': float(np.nanmean(late)),
        'temperature_max_K': float(np.nanmax(temps)),
        'ok': list(result.status) == ['ok'] and 250.0 < float(np.nanmean(late)) < 350.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--reference', choices=sorted(REFERENCES), default='flexible', help='referee to train on')
    parser.add_argument('--output', type=Path, default=None, help='cache file (default in /tmp)')
    parser.add_argument('--seconds', type=float, default=240.0, help='training wall time [s]')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--check-steps', type=int, default=2000, help='steps of the stability run')
    parser.add_argument('--check-molecules', type=int, default=256, help='molecules of the stability run')
    args = parser.parse_args()
    if args.output is None:
        args.output = cache_path(args.reference)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pot = stable_water_potential(
        args.output, seconds=args.seconds, threads=args.threads, seed=args.seed, reference=args.reference
    )
    print(f'potential {args.output} ready in {time.perf_counter() - t0:.0f} s')
    test = pot.metadata.get('metrics', {}).get('test', {})
    if test:
        print(
            f'held-out vs {args.reference} referee: force MAE {test["force_mae_meV_per_A"]:.1f} meV/Å, '
            f'energy MAE {test["energy_mae_meV_per_atom"]:.2f} meV/atom ({test["n_structures"]} frames)'
        )
        if 'stress_mae_GPa' in test:
            print(f'  stress MAE {test["stress_mae_GPa"]:.4f} GPa, RMSE {test["stress_rmse_GPa"]:.4f} GPa')
    info = pot.metadata.get('water_model', {})
    print(
        f'training: {info.get("frames")} frames, {pot.metadata.get("training_time_s", float("nan")):.0f} s, '
        f'{info.get("epochs_run")} epochs; reference {info.get("reference")}'
    )
    check = check_stability(pot, n_molecules=args.check_molecules, steps=args.check_steps)
    print(
        f'stability: {check["atoms"]} atoms, {check["steps"]} steps Langevin 300 K in {check["wall_s"]:.0f} s: '
        f'status {check["status"]}, T(second half) {check["temperature_mean_K"]:.0f} K, '
        f'T max {check["temperature_max_K"]:.0f} K -> {"STABLE" if check["ok"] else "UNSTABLE"}'
    )
    if not check['ok']:
        print(f'diagnostic: {check["diagnostic"]}')


if __name__ == '__main__':
    main()
