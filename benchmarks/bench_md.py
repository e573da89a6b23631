"""Batched MD throughput, side by side in one run.

(a) 32 umbrella windows on the H-O-O-H dihedral of H2O2 as one batch vs the same 32 windows as single-replica runs
    one after another (Langevin BAOAB, same potential, same steps). Potential: ``Potential.build(['H', 'O'])``
    with random weights (Behler-Parrinello, 4 Å cutoff, float32) plus harmonic bonds and angles that keep the
    molecule in shape (random weights alone let it collapse).
(b) our MD loop (Verlet list with skin, no per-step conversions) vs ASE's ``VelocityVerlet`` driving the same
    potential through an ASE calculator, 768-atom periodic water box, NVE. Run for the analytic flexible water
    model (``core.analytic.FlexibleWater``, where the loop overhead shows) and for the BP potential (where the
    model's own cost dominates).

Prints a table of wall times and ratios. Usage: ``python benchmarks/bench_md.py [--steps 200] [--threads 1]``.
One torch thread by default: on a shared 2-core machine more threads make the timings of small systems erratic.
"""

from __future__ import annotations

import argparse
import time
from typing import ClassVar

import numpy as np
import torch
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.md.verlet import VelocityVerlet
from ase.units import fs

from aiida_mlff.core.analytic import FlexibleWater, HarmonicBonds, SumPotential, water_box
from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.colvars import Dihedral, HarmonicBias
from aiida_mlff.core.md import simulate
from aiida_mlff.core.md.integrators import KB, KINETIC


class TorchCalculator(Calculator):
    """Minimal ASE calculator around anything with ``evaluate`` (a new neighbour list at every call)."""

    implemented_properties: ClassVar[list[str]] = ['energy', 'forces']

    def __init__(self, potential, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.potential = potential
        self.dtype = dtype

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        batch = AtomsBatch.from_atoms(self.atoms, dtype=self.dtype)
        out = self.potential.evaluate(batch, forces=True)
        self.results = {
            'energy': float(out['energy'][0]),
            'forces': out['forces'].detach().double().numpy(),
        }


def bench_umbrella(steps: int, n_windows: int = 32) -> tuple[float, float]:
    from aiida_mlff.core.models import Potential

    # random weights are not a physical potential: keep the molecule in shape with harmonic bonds and angles
    bonds = [(0, 1, 30.0, 1.47), (0, 2, 45.0, 0.97), (1, 3, 45.0, 0.97)]
    angles = [(2, 0, 1, 4.0, 100.0), (0, 1, 3, 4.0, 100.0)]
    pot = SumPotential(Potential.build(['H', 'O'], cutoff=4.0, committee=1, seed=0), HarmonicBonds(bonds, angles))
    h2o2 = molecule('H2O2')
    phi = Dihedral(2, 0, 1, 3)
    centers = np.linspace(-np.pi, np.pi, n_windows, endpoint=False)
    kappa = 0.5  # eV/rad^2
    kwargs = dict(ensemble='langevin', timestep=0.5, steps=steps, temperature=300.0, friction=0.01, stride=10)
    simulate(pot, [h2o2] * 2, **{**kwargs, 'steps': 5})  # warm-up
    t0 = time.perf_counter()
    batched = simulate(pot, [h2o2] * n_windows, biases=[HarmonicBias(phi, centers, kappa)], seed=0, **kwargs)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    for w, c in enumerate(centers):
        simulate(pot, h2o2, biases=[HarmonicBias(phi, [c], kappa)], seed=w, **kwargs)
    t_serial = time.perf_counter() - t0
    assert all(s == 'ok' for s in batched.status), batched.diagnostic
    return t_batch, t_serial


def bench_vs_ase(potential, steps: int, dtype: torch.dtype, n_molecules: int = 256) -> tuple[float, float]:
    atoms = water_box(n_molecules, seed=0)
    rng = np.random.default_rng(0)
    v0 = rng.normal(size=(len(atoms), 3)) * np.sqrt(KB * 300.0 / atoms.get_masses() / KINETIC)[:, None]  # Å/fs
    atoms.set_velocities(v0 / fs)  # ASE velocity units
    simulate(potential, atoms, steps=2, velocities=v0, dtype=dtype)  # warm-up
    t0 = time.perf_counter()
    ours = simulate(potential, atoms, ensemble='nve', timestep=0.5, steps=steps, velocities=v0, stride=10, dtype=dtype)
    t_ours = time.perf_counter() - t0
    assert ours.status == ['ok'], ours.diagnostic
    ase_atoms = atoms.copy()
    ase_atoms.set_velocities(atoms.get_velocities())
    ase_atoms.calc = TorchCalculator(potential, dtype)
    dyn = VelocityVerlet(ase_atoms, timestep=0.5 * fs)
    dyn.run(2)
    t0 = time.perf_counter()
    dyn.run(steps)
    t_ase = time.perf_counter() - t0
    return t_ours, t_ase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=200, help='MD steps per run')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default)')
    parser.add_argument('--skip-bp-ase', action='store_true', help='skip (b) with the BP potential (slowest part)')
    parser.add_argument(
        '--sizes', type=int, nargs='+', default=[96, 768, 6144], help='atoms of the water boxes of (b) with BP'
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    t_batch, t_serial = bench_umbrella(args.steps)
    rows.append(('(a) H2O2, 32 umbrella windows, BP float32', 'one batch', t_batch, '32 runs in turn', t_serial))
    t_ours, t_ase = bench_vs_ase(FlexibleWater(), args.steps, torch.float64)
    rows.append(('(b) 768-atom water, analytic flexible water', 'simulate', t_ours, 'ASE VelocityVerlet', t_ase))
    if not args.skip_bp_ase:
        from aiida_mlff.core.models import Potential

        bp = Potential.build(['H', 'O'], cutoff=4.0, committee=1, seed=0)
        for n_atoms in args.sizes:
            steps = max(10, args.steps // 10) if n_atoms <= 768 else max(5, args.steps // 40)
            t_ours, t_ase = bench_vs_ase(bp, steps, torch.float32, n_molecules=n_atoms // 3)
            case = f'(b) {n_atoms}-atom water, BP float32 ({steps} steps)'
            rows.append((case, 'simulate', t_ours, 'ASE VelocityVerlet', t_ase))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps')
    print(f'{"case":48s} {"ours":>18s} {"s":>8s} {"reference":>20s} {"s":>8s} {"ratio":>7s}')
    for case, a, ta, b, tb in rows:
        print(f'{case:48s} {a:>18s} {ta:8.2f} {b:>20s} {tb:8.2f} {tb / ta:6.1f}x')


if __name__ == '__main__':
    main()
