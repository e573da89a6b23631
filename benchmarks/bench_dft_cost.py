"""Cost of one DFT label vs the MLFF on the same configurations, side by side in one run.

pw.x at the demo settings (PBE; H.pbe-kjpaw.UPF and O.pbe-rrkjus.UPF from /usr/share/espresso/pseudo; ecutwfc 30,
ecutrho 240 Ry; gamma point; SCF with forces), run directly and serially (no mpirun) on an input written here,
vs ``Potential.build(['H', 'O'], cutoff=3.5, committee=1)`` energy + forces in float32 on one thread (random
weights: the cost does not depend on them; the conversion from ``ase.Atoms`` and the neighbour list are included).

MLFF cost per structure is measured two ways:

- single: one structure per call (what an ASE loop over structures pays: mostly fixed per-call cost);
- batched: ``--batch`` different H2O2 configurations (random H-O-O-H dihedrals, rattled) in one call, divided by
  ``--batch``: what each structure costs in our batched MD, where the 32 umbrella windows of H2O2 advance as one
  batch (row 2 of ``benchmarks/run``).

Each MLFF figure is the best of 3 timings of about 1 s. Systems: H2O2 in a 9 Å box, and (unless ``--skip-box``) a
32-molecule water box (96 atoms; single structure only), for which pw.x is stopped after ``--box-timeout`` seconds;
with ``--box-lower-bound`` a stopped run still gives a lower bound on the pw.x time (and so on the ratio).

The last line is ``RESULT {json}`` for ``benchmarks/run``.
Usage: ``python benchmarks/bench_dft_cost.py [--batch 32] [--skip-box] [--box-timeout 900] [--box-lower-bound]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule

PSEUDO_DIR = Path('/usr/share/espresso/pseudo')
PSEUDOS = {'H': 'H.pbe-kjpaw.UPF', 'O': 'O.pbe-rrkjus.UPF'}
MASSES = {'H': 1.008, 'O': 15.999}


def pw_input(atoms: Atoms, pseudo_dir: Path) -> str:
    """A pw.x SCF input with forces, gamma point, at the demo settings."""
    cell = atoms.cell.array
    lines = [
        '&CONTROL',
        "  calculation = 'scf'",
        '  tprnfor = .true.',
        f"  pseudo_dir = '{pseudo_dir}'",
        "  outdir = './out'",
        '/',
        '&SYSTEM',
        '  ibrav = 0',
        f'  nat = {len(atoms)}',
        f'  ntyp = {len(set(atoms.get_chemical_symbols()))}',
        '  ecutwfc = 30',
        '  ecutrho = 240',
        "  occupations = 'fixed'",
        '/',
        '&ELECTRONS',
        '  conv_thr = 1e-8',
        '/',
        'ATOMIC_SPECIES',
    ]
    lines += [f'{s} {MASSES[s]} {PSEUDOS[s]}' for s in sorted(set(atoms.get_chemical_symbols()))]
    lines.append('CELL_PARAMETERS angstrom')
    lines += [' '.join(f'{v:.8f}' for v in row) for row in cell]
    lines.append('ATOMIC_POSITIONS angstrom')
    symbols = atoms.get_chemical_symbols()
    lines += [f'{s} {x:.8f} {y:.8f} {z:.8f}' for s, (x, y, z) in zip(symbols, atoms.positions, strict=True)]
    lines += ['K_POINTS gamma', '']
    return '\n'.join(lines)


def run_pw(atoms: Atoms, timeout: float) -> tuple[float | None, str]:
    """Wall seconds of ``pw.x -in pw.in`` (serial), or None and the reason."""
    exe = shutil.which('pw.x')
    if exe is None:
        return None, 'pw.x not found on PATH'
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, 'pw.in').write_text(pw_input(atoms, PSEUDO_DIR))
        env = {'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [exe, '-in', 'pw.in'], cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env
            )
        except subprocess.TimeoutExpired:
            return None, f'pw.x took more than {timeout:.0f} s'
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or 'Total force' not in proc.stdout:
            return None, f'pw.x failed (exit {proc.returncode}): {proc.stdout[-300:]}'
        return elapsed, 'ok'


def mlff_time(frames: list[Atoms], repeat: int = 3, seconds: float = 1.0) -> float:
    """Best wall seconds per energy + forces evaluation of ``frames`` in one batch (from ``ase.Atoms``, with the
    neighbour list), over ``repeat`` timings of about ``seconds`` each."""
    from aiida_mlff.core.atoms import AtomsBatch
    from aiida_mlff.core.models import Potential

    pot = Potential.build(['H', 'O'], cutoff=3.5, committee=1)

    def once():
        return pot.evaluate(AtomsBatch.from_atoms(frames, dtype=torch.float32), forces=True)

    once()
    best = float('inf')
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            once()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def h2o2_configurations(base: Atoms, n: int, seed: int = 0) -> list[Atoms]:
    """``n`` copies of ``base`` (H2O2) with random H-O-O-H dihedrals, rattled by 0.05 Å."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = base.copy()
        atoms.set_dihedral(2, 0, 1, 3, rng.uniform(-180.0, 180.0), indices=[3])
        atoms.rattle(0.05, seed=seed + k)
        frames.append(atoms)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=32, help='H2O2 configurations per batched MLFF call')
    parser.add_argument('--skip-box', action='store_true', help='do not run pw.x on the 32-molecule water box')
    parser.add_argument('--box-timeout', type=float, default=900.0)
    parser.add_argument('--box-lower-bound', action='store_true', help='report a stopped box run as a lower bound')
    args = parser.parse_args()
    torch.set_num_threads(1)

    h2o2 = molecule('H2O2')
    h2o2.set_cell([9.0, 9.0, 9.0])
    h2o2.center()
    result = {}
    t_pw, why = run_pw(h2o2, timeout=600)
    t_ml = mlff_time([h2o2])
    t_batch = mlff_time(h2o2_configurations(h2o2, args.batch)) / args.batch
    result['h2o2'] = {'pw_s': t_pw, 'mlff_s': t_ml, 'mlff_batched_s': t_batch, 'batch': args.batch, 'why': why}
    print(f'H2O2, 9 Å box: pw.x {"not run" if t_pw is None else f"{t_pw:.2f} s"} ({why})')
    print(f'  MLFF {1e3 * t_ml:.3f} ms single, {1e3 * t_batch:.4f} ms per structure in batches of {args.batch}')
    if t_pw is not None:
        print(f'  MLFF is {t_pw / t_ml:,.0f}x cheaper single, {t_pw / t_batch:,.0f}x batched')

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_potential import water_box

    box = water_box(32)
    t_ml = mlff_time([box])
    lower = False
    if args.skip_box:
        t_pw, why = None, 'skipped (--skip-box)'
    else:
        t_pw, why = run_pw(box, timeout=args.box_timeout)
        if t_pw is None and args.box_lower_bound and why.startswith('pw.x took more than'):
            t_pw, lower = args.box_timeout, True
    result['water32'] = {'pw_s': t_pw, 'pw_lower_bound': lower, 'mlff_s': t_ml, 'why': why}
    shown = 'not run' if t_pw is None else f'{">" if lower else ""}{t_pw:.2f} s'
    print(f'32 H2O box: pw.x {shown} ({why}); MLFF {1e3 * t_ml:.3f} ms')
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
