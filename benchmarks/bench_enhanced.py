"""Enhanced sampling in the batched MD loop: cost of the biases, exchange acceptance, REUS vs plain umbrella.

(a) Cost of the bias: 32 replicas of H2O2 (``Potential.build(['H', 'O'])`` with random weights, float32, plus the
    harmonic bonds and angles of ``bench_md.py`` that keep the molecule in shape), Langevin, side by side in one
    run with the same steps: unbiased; 32 umbrella windows on the H-O-O-H dihedral (2, 0, 1, 3); the same with
    replica exchange (REUS) every 100 and every 10 steps; well-tempered metadynamics on the dihedral with all 32
    replicas as walkers of one shared bias (a batch bias acts on every replica, so "8 walkers x 4 independent
    runs" is one bias per batch: the row runs 32 walkers). Each case is warmed up first and timed ``--repeats``
    times (the best counts, from ``result.wall_time``: the MD loop only). Printed as atom-steps/s and overhead vs
    unbiased (target: <= 10 % on 32 replicas).
(b) REUS acceptance per neighbour pair of those runs.
(c) Referee on the 1-D double well (``DoubleWell``, barrier 9 kT, minima at +-1 Å, carbon atom, 300 K): W umbrella
    windows on x in [-1.4, 1.4] Å with the product's ``kappa = 3 kT / spacing^2``, every window started at
    x = -1 Å; plain umbrella sampling vs REUS. For a ladder of run lengths (prefixes of one run: the estimate at
    length L only sees the first L steps) the RMS of the WHAM profile minus the exact one (bins of 0.05 Å on
    [-1.3, 1.3] Å, exact F up to 9 kT; mean offset removed; first 10 % of each prefix dropped) over several
    independent copies (seeds), and the first length where the RMS over copies reaches 0.1 kT. Ratio = steps
    of plain US / steps of REUS.

Usage: ``python benchmarks/bench_enhanced.py [--steps 1000] [--repeats 3] [--ladder-max 32000] [--json out.json]``.
One torch thread by default (a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule

from aiida_mlff.core.analytic import HarmonicBonds, SumPotential
from aiida_mlff.core.colvars import Dihedral, HarmonicBias, Position
from aiida_mlff.core.md import simulate
from aiida_mlff.core.md.exchange import ReplicaExchange, neighbour_pairs_1d
from aiida_mlff.core.md.integrators import KB
from aiida_mlff.core.surfaces import DoubleWell, exact_free_energy
from aiida_mlff.core.wham import wham

TARGET_OVERHEAD = 10.0  # %
TARGET_RMS_KT = 0.1  # kT


# ----------------------------------------------------------------------------------------------- (a), (b)
def h2o2_potential():
    """Random-weight BP potential (float32) plus harmonic bonds/angles that keep H2O2 in shape (as bench_md.py)."""
    from aiida_mlff.core.models import Potential

    bonds = [(0, 1, 30.0, 1.47), (0, 2, 45.0, 0.97), (1, 3, 45.0, 0.97)]
    angles = [(2, 0, 1, 4.0, 100.0), (0, 1, 3, 4.0, 100.0)]
    return SumPotential(Potential.build(['H', 'O'], cutoff=4.0, committee=1, seed=0), HarmonicBonds(bonds, angles))


def metadynamics_bias(temperature: float):
    """Well-tempered metadynamics on the dihedral, or the reason it cannot be built."""
    try:
        from aiida_mlff.core.metadynamics import MetadynamicsBias
    except ImportError as error:  # written in parallel by another worker
        return f'aiida_mlff.core.metadynamics not importable ({error})'
    phi = Dihedral(2, 0, 1, 3)
    return MetadynamicsBias(
        [phi],
        [(-np.pi, np.pi, 360)],
        height=0.01,
        widths=[0.1],
        pace=50,
        bias_factor=8.0,
        temperature=temperature,
    )


def bias_cases(n_rep: int, temperature: float) -> dict[str, dict]:
    """The simulate() keyword arguments of each case of (a); a string instead of a dict says why it is skipped."""
    phi = Dihedral(2, 0, 1, 3)
    centers = np.linspace(-np.pi, np.pi, n_rep, endpoint=False)
    kappa = 3.0 * KB * temperature / (centers[1] - centers[0]) ** 2  # eV/rad^2, the product's default
    pairs = neighbour_pairs_1d(n_rep, closed=True)  # a ring around the period

    def umbrella() -> list:
        return [HarmonicBias(phi, centers, kappa)]

    meta = metadynamics_bias(temperature)
    return {
        'unbiased': {},
        'umbrella, 32 windows': {'biases': umbrella()},
        'REUS, exchange every 100': {'biases': umbrella(), 'exchange': ReplicaExchange(pairs, every=100)},
        'REUS, exchange every 10': {'biases': umbrella(), 'exchange': ReplicaExchange(pairs, every=10)},
        'metadynamics, 32 walkers': meta if isinstance(meta, str) else {'biases': [meta]},
    }


def run_case(potential, n_rep: int, steps: int, seed: int, temperature: float, kwargs: dict):
    """One Langevin run of 32 H2O2 replicas with the case's biases/exchange; raises if a replica stopped."""
    md = dict(ensemble='langevin', timestep=0.5, temperature=temperature, friction=0.01, stride=10)
    result = simulate(potential, [molecule('H2O2')] * n_rep, steps=steps, seed=seed, **md, **kwargs)
    if not all(s == 'ok' for s in result.status):
        raise RuntimeError(f'replicas stopped: {set(result.diagnostic)}')
    return result


def bench_bias_cost(
    steps: int, repeats: int, n_rep: int = 32, temperature: float = 300.0, potential_file: str | None = None
) -> list[dict]:
    """(a) and (b): one row per case; the cases are timed in turn, ``repeats`` rounds, the best MD-loop time counts.

    Interleaving the rounds spreads a changing load of a shared machine over every case alike. Every run gets
    fresh biases (metadynamics hills start from zero) and a fresh exchange; ``result.wall_time`` excludes setup.
    """
    if potential_file:  # a trained potential of H2O2 (e.g. a campaign's committee) instead of the random one
        from aiida_mlff.core.models import Potential

        potential = Potential.load(potential_file)
    else:
        potential = h2o2_potential()
    names = list(bias_cases(n_rep, temperature))
    rows = {name: {'case': name} for name in names}
    for name, kwargs in bias_cases(n_rep, temperature).items():
        if isinstance(kwargs, str):
            rows[name]['skipped'] = kwargs
        else:
            run_case(potential, n_rep, 5, 99, temperature, kwargs)  # warm-up
    for r in range(repeats):
        for name, kwargs in bias_cases(n_rep, temperature).items():
            if isinstance(kwargs, str):
                continue
            result = run_case(potential, n_rep, steps, r, temperature, kwargs)
            row = rows[name]
            row['wall_s'] = min(row.get('wall_s', float('inf')), result.wall_time)
            if result.exchange is not None:
                row['acceptance'] = [float(a) for a in result.exchange['acceptance']]
                row['attempts'] = [int(a) for a in result.exchange['attempts']]
    out = list(rows.values())
    base = out[0]['wall_s']
    for row in out:
        if 'wall_s' in row:
            row['atom_steps_per_s'] = 4 * n_rep * steps / row['wall_s']
            row['overhead_pct'] = 100.0 * (row['wall_s'] / base - 1.0)
    return out


# ----------------------------------------------------------------------------------------------- (c)
def rms_error_kt(free_energy: np.ndarray, exact: np.ndarray) -> float:
    """RMS [kT] of ``free_energy - exact`` (both in kT) after removing the mean offset; inf with an empty bin."""
    d = free_energy - exact
    if not np.all(np.isfinite(d)):
        return float('inf')
    d = d - d.mean()
    return float(np.sqrt(np.mean(d**2)))


def ladder_lengths(first: int, last: int, per_octave: int = 2) -> list[int]:
    """Run lengths from ``first`` to ``last`` steps, ``per_octave`` per doubling, rounded to 100 steps."""
    n = int(np.floor(per_octave * np.log2(last / first) + 1e-9)) + 1
    return sorted({int(round(first * 2 ** (k / per_octave) / 100) * 100) for k in range(n)})


def double_well_ladder(
    n_windows: int = 15,
    copies: int = 6,
    max_steps: int = 32000,
    every: int = 10,
    stride: int = 2,
    timestep: float = 2.0,
    friction: float = 0.02,
    temperature: float = 300.0,
    barrier_kt: float = 9.0,
    seed: int = 7,
    first: int = 1000,
) -> dict:
    """(c) RMS error [kT] of WHAM vs exact for plain US and REUS per run length, all copies in one batch."""
    kt = KB * temperature
    surface = DoubleWell(barrier_kt * kt, a=1.0, k=1.0)
    centers = np.linspace(-1.4, 1.4, n_windows)
    kappa = 3.0 * kt / (centers[1] - centers[0]) ** 2
    n_rep = 2 * copies * n_windows  # REUS copies first, then the plain umbrella copies
    pairs = [(c * n_windows + a, c * n_windows + b) for c in range(copies) for a, b in neighbour_pairs_1d(n_windows)]
    t0 = time.perf_counter()
    result = simulate(
        surface,
        [Atoms('C', [[-1.0, 0.0, 0.0]]) for _ in range(n_rep)],
        ensemble='langevin',
        timestep=timestep,
        steps=max_steps,
        temperature=temperature,
        friction=friction,
        biases=[HarmonicBias(Position(0, 'x'), np.tile(centers, 2 * copies), kappa)],
        exchange=ReplicaExchange(pairs, every=every),
        stride=stride,
        seed=seed,
    )
    wall = time.perf_counter() - t0
    edges = np.linspace(-1.3, 1.3, 53)
    exact = exact_free_energy(surface, [edges], temperature) / kt
    x = result.colvars[:, :, 0]
    rows = []
    for length in ladder_lengths(first, max_steps):
        n = length // stride + 1
        keep = slice(n // 10, n)
        rms = []
        for c in range(2 * copies):
            samples = [x[keep, c * n_windows + w] for w in range(n_windows)]
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                pmf = wham(samples, centers, kappa, temperature, bins=edges)
            rms.append(rms_error_kt(pmf.free_energy / kt, exact))
        rms = np.array(rms)
        rows.append(
            {
                'steps_per_window': length,
                'reus_rms': rms[:copies].tolist(),
                'us_rms': rms[copies:].tolist(),
                'reus': float(np.sqrt(np.mean(rms[:copies] ** 2))),
                'us': float(np.sqrt(np.mean(rms[copies:] ** 2))),
            }
        )
    acc = result.exchange['acceptance'].reshape(copies, n_windows - 1)
    return {
        'n_windows': n_windows,
        'kappa': kappa,
        'copies': copies,
        'every': every,
        'stride': stride,
        'rows': rows,
        'first_reus': first_length(rows, 'reus'),
        'first_us': first_length(rows, 'us'),
        'acceptance': np.nanmean(acc, axis=0).tolist(),
        'wall_s': wall,
    }


def first_length(rows: list[dict], key: str, target: float = TARGET_RMS_KT) -> int | None:
    """First run length whose RMS (over copies) is <= target and stays so for every longer length."""
    ok = [r[key] <= target for r in rows]
    for k in range(len(rows)):
        if all(ok[k:]):
            return rows[k]['steps_per_window']
    return None


# ----------------------------------------------------------------------------------------------- report
def print_cost(rows: list[dict], steps: int) -> None:
    print(f'\n(a) bias cost: 32 x H2O2 (4 atoms), BP float32 + bonds, Langevin, {steps} steps, best of repeats')
    print(f'{"case":30s} {"wall s":>8s} {"atom-steps/s":>14s} {"overhead":>9s}  target <= {TARGET_OVERHEAD:.0f} %')
    for row in rows:
        if 'skipped' in row:
            print(f'{row["case"]:30s} skipped: {row["skipped"]}')
            continue
        met = 'met' if row['overhead_pct'] <= TARGET_OVERHEAD else 'NOT met'
        met = '' if row is rows[0] else met
        print(
            f'{row["case"]:30s} {row["wall_s"]:8.2f} {row["atom_steps_per_s"]:14.0f} {row["overhead_pct"]:8.1f}%  {met}'
        )
    print('\n(b) REUS acceptance per neighbour pair (ring of 32 dihedral windows)')
    for row in rows:
        if 'acceptance' in row:
            acc = np.asarray(row['acceptance'])
            print(f'{row["case"]:30s} mean {np.nanmean(acc):.2f}, min {np.nanmin(acc):.2f}, max {np.nanmax(acc):.2f}')
            print('   ' + ' '.join(f'{a:.2f}' for a in acc))


def print_ladder(lad: dict) -> None:
    print(
        f'\n(c) double well, barrier 9 kT: {lad["n_windows"]} windows on [-1.4, 1.4] Å, kappa {lad["kappa"]:.3f} '
        f'eV/Å^2, all started at x = -1 Å; {lad["copies"]} copies each; REUS every {lad["every"]} steps; '
        f'samples every {lad["stride"]} steps; one batch, {lad["wall_s"]:.0f} s'
    )
    print('    mean REUS acceptance per pair: ' + ' '.join(f'{a:.2f}' for a in lad['acceptance']))
    print(f'{"steps/window":>12s} {"REUS rms kT":>12s} {"US rms kT":>10s}   per copy REUS | US')
    for r in lad['rows']:
        per = ' '.join(f'{v:.3f}' for v in r['reus_rms']) + ' | ' + ' '.join(f'{v:.3f}' for v in r['us_rms'])
        print(f'{r["steps_per_window"]:12d} {r["reus"]:12.3f} {r["us"]:10.3f}   {per}')
    a, b = lad['first_reus'], lad['first_us']
    ratio = f'{b / a:.2f}' if a and b else 'n/a'
    print(f'first length at <= {TARGET_RMS_KT} kT (and after): REUS {a}, US {b} steps/window; ratio US/REUS {ratio}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=1000, help='MD steps per timed run of (a)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per case of (a); the best counts')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (0: leave the default)')
    parser.add_argument('--ladder-max', type=int, default=32000, help='longest run per window of (c), steps')
    parser.add_argument('--copies', type=int, default=6, help='independent copies per method in (c)')
    parser.add_argument('--windows', type=int, default=15, help='umbrella windows in (c)')
    parser.add_argument('--every', type=int, default=10, help='REUS exchange interval in (c), steps')
    parser.add_argument('--stride', type=int, default=2, help='CV sample interval in (c), steps')
    parser.add_argument('--skip-cost', action='store_true', help='skip (a) and (b)')
    parser.add_argument('--potential', default=None, help='potential file of H2O2 for (a) (default: a random BP)')
    parser.add_argument('--skip-ladder', action='store_true', help='skip (c)')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    out = {}
    if not args.skip_cost:
        out['cost'] = bench_bias_cost(args.steps, args.repeats, potential_file=args.potential)
        print_cost(out['cost'], args.steps)
    if not args.skip_ladder:
        out['ladder'] = double_well_ladder(
            n_windows=args.windows, copies=args.copies, max_steps=args.ladder_max, every=args.every, stride=args.stride
        )
        print_ladder(out['ladder'])
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(out, fh, indent=1)


if __name__ == '__main__':
    main()
