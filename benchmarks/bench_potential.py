"""Energy + forces throughput on a periodic water box: aiida-mlff's potential vs a small MACE, in one run.

Prints atom-steps per second (atoms x evaluations / s) for each model and the ratio. Ours is timed including the
vesin neighbour list at every step; MACE is timed with its graph built once (which favours MACE).
MACE: mace-torch, 64x0e hidden irreps, 2 interactions, max_ell 3, correlation 3, r_max 5 Å, float32, random weights.

Usage: ``python benchmarks/bench_potential.py [--molecules 256] [--threads 2] [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import Atoms


def water_box(n_molecules: int = 256, density: float = 1.0, seed: int = 0) -> Atoms:
    """Periodic box of randomly oriented H2O on a jittered grid at ``density`` [g/cm^3]."""
    rng = np.random.default_rng(seed)
    volume = n_molecules * 18.015 / 0.60221 / density  # Å^3
    length = volume ** (1.0 / 3.0)
    per_side = int(np.ceil(n_molecules ** (1.0 / 3.0)))
    spacing = length / per_side
    grid = np.array([(i, j, k) for i in range(per_side) for j in range(per_side) for k in range(per_side)])
    grid = grid[rng.permutation(len(grid))[:n_molecules]] * spacing + 0.5 * spacing
    template = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])
    positions = []
    for centre in grid:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        positions.append(template @ q.T + centre + rng.normal(scale=0.1, size=3))
    return Atoms('OH2' * n_molecules, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)


def _rate(func, n_atoms: int, seconds: float) -> tuple[float, float, float]:
    """Atom-steps/s, wall ms per step and process CPU ms per step of ``func``.

    Measured for about ``seconds`` (at least 2 steps) after a warm-up. On a shared machine the CPU time (all
    threads of this process) is the steadier number: with one thread, ``1000 * n_atoms / cpu_ms`` is the rate
    this process would reach on a core of its own.
    """
    func()
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or steps < 2:
        func()
        steps += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return n_atoms * steps / elapsed, 1000.0 * elapsed / steps, 1000.0 * cpu / steps


def bench_ours(atoms: Atoms, committee: int, seconds: float, **hyper) -> tuple[float, float, float]:
    from aiida_mlff.core.atoms import AtomsBatch
    from aiida_mlff.core.models import Potential

    pot = Potential.build(['H', 'O'], cutoff=5.0, committee=committee, **hyper)
    batch = AtomsBatch.from_atoms(atoms, dtype=torch.float32)
    return _rate(lambda: pot.evaluate(batch, forces=True), len(atoms), seconds)


def bench_mace(atoms: Atoms, seconds: float) -> tuple[float, float, float]:
    # mace first: it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn needs to read its own constants
    from mace import data, modules, tools  # isort: skip
    from e3nn import o3  # isort: skip
    from mace.tools import torch_geometric

    torch.set_default_dtype(torch.float32)
    z_table = tools.AtomicNumberTable([1, 8])
    model = modules.MACE(
        r_max=5.0,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=modules.interaction_classes['RealAgnosticResidualInteractionBlock'],
        interaction_cls_first=modules.interaction_classes['RealAgnosticResidualInteractionBlock'],
        num_interactions=2,
        num_elements=2,
        hidden_irreps=o3.Irreps('64x0e'),
        MLP_irreps=o3.Irreps('16x0e'),
        atomic_energies=np.zeros(2),
        avg_num_neighbors=40.0,
        atomic_numbers=[1, 8],
        correlation=3,
        gate=torch.nn.functional.silu,
    ).float()
    config = data.config_from_atoms(atoms)
    graph = data.AtomicData.from_config(config, z_table=z_table, cutoff=5.0)
    loader = torch_geometric.dataloader.DataLoader([graph], batch_size=1, shuffle=False)
    batch = next(iter(loader)).to_dict()
    batch = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    return _rate(lambda: model(batch, compute_force=True), len(atoms), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--molecules', type=int, default=256)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seconds', type=float, default=5.0)
    parser.add_argument('--no-mace', action='store_true')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    atoms = water_box(args.molecules)
    print(f'water box: {len(atoms)} atoms, {atoms.cell[0, 0]:.2f} Å, torch {torch.__version__}, {args.threads} threads')
    rows = [('aiida-mlff (1 model, float32)', *bench_ours(atoms, 1, args.seconds))]
    rows.append(('aiida-mlff (committee of 4, float32)', *bench_ours(atoms, 4, args.seconds)))
    if not args.no_mace:
        try:
            rows.append(('MACE 64x0e, 2 interactions, float32', *bench_mace(atoms, args.seconds)))
        except ImportError as error:
            print(f'MACE not available: {error}')
    print(f'{"model":40s} {"atom-steps/s":>14s} {"wall ms/step":>13s} {"CPU ms/step":>12s} {"atom-steps/CPU-s":>17s}')
    for name, rate, ms, cpu in rows:
        print(f'{name:40s} {rate:14,.0f} {ms:13.2f} {cpu:12.2f} {1000 * len(atoms) / cpu:17,.0f}')
    if len(rows) == 3:
        wall = rows[0][1] / rows[2][1]
        cpu = rows[2][3] / rows[0][3]
        print(f'ratio ours / MACE (single model): {wall:.1f}x by wall time, {cpu:.1f}x by CPU time')


if __name__ == '__main__':
    main()
