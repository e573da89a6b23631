"""Referee of well-tempered multiple-walker metadynamics: Müller-Brown (scale kT/10, 300 K) against exact F.

Prints the RMS [kT] of the bias-derived and of the reweighted free energy against ``exact_free_energy`` over the
0.1 Å bins where exact F < 8 kT, and the MD wall time. Usage::

    python benchmarks/bench_metad_referee.py [--steps 30000] [--walkers 64] [--seed 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import Atoms

from aiida_mlff.core.colvars import Position
from aiida_mlff.core.md import simulate
from aiida_mlff.core.metadynamics import MetadynamicsBias, bias_free_energy, reweighted_free_energy
from aiida_mlff.core.surfaces import KB_EV, MullerBrown, exact_free_energy


def rms_kt(estimate: np.ndarray, exact: np.ndarray, mask: np.ndarray, kt: float) -> float:
    """RMS difference [kT] over ``mask`` after removing the mean offset."""
    d = (estimate[mask] - exact[mask]) / kt
    return float(np.sqrt(np.nanmean((d - np.nanmean(d)) ** 2)))


def main() -> None:
    """Run the referee and print the RMS values and the wall time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=30_000, help='MD steps of 2 fs')
    parser.add_argument('--walkers', type=int, default=64)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--bias-factor', type=float, default=6.0)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()

    temperature = 300.0
    kt = KB_EV * temperature
    surface = MullerBrown(scale=kt / 10)
    grid = [(-1.7, 1.3, 301), (-0.4, 2.2, 261)]
    edges = [np.linspace(-1.7, 1.3, 31), np.linspace(-0.4, 2.2, 27)]
    bias = MetadynamicsBias(
        [Position(0, 'x'), Position(0, 'y')], grid, 0.5 * kt, [0.05, 0.05], 20, args.bias_factor, temperature
    )
    atoms = [Atoms('C', [[-0.56, 1.44, 0.0]]) for _ in range(args.walkers)]
    start = time.perf_counter()
    result = simulate(
        surface, atoms, 'langevin', timestep=2.0, steps=args.steps, temperature=temperature, friction=0.01,
        biases=[bias], stride=10, seed=args.seed, device=args.device, dtype=torch.float64,
    )  # fmt: skip
    wall = time.perf_counter() - start
    exact = exact_free_energy(surface, edges, temperature)
    mask = exact < 8 * kt
    from_bias = bias_free_energy(bias, edges)
    reweighted = reweighted_free_energy(result.colvars, result.bias_energy, bias.ct_at(result.step), edges, temperature)
    print(f'Müller-Brown referee: {args.walkers} walkers x {args.steps} steps, {int(mask.sum())} bins with F < 8 kT')
    print(f'  RMS from the bias:   {rms_kt(from_bias.free_energy, exact, mask, kt):.3f} kT')
    print(f'  RMS reweighted:      {rms_kt(reweighted.free_energy, exact, mask, kt):.3f} kT')
    print(f'  median block error:  {np.nanmedian(reweighted.error[mask]) / kt:.3f} kT')
    print(f'  MD wall time:        {wall:.1f} s')


if __name__ == '__main__':
    main()
