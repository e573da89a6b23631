"""Label H2O geometries with pw.x (PBE, 30 Ry) and write the test data set and the DFT frequency reference.

Writes
------
tests/data/h2o_pbe_30ry.extxyz
    Labelled geometries: energy [eV] and forces [eV/Å] in each frame (SinglePointCalculator).
tests/data/h2o_pbe_30ry_frequencies.json
    Relaxed geometry, the finite-difference Hessian [eV/Å^2] and harmonic frequencies [cm^-1].

The geometries are seeded (``--seed``) and every pw.x result is cached under ``--workdir``, so an interrupted run
resumes where it stopped and a rerun reproduces the same file. Run as ``python scripts/make_h2o_dataset.py``;
about 5 s of one core per geometry (pw.x 6.7, serial, no MPI).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

ROOT = Path(__file__).resolve().parents[1]
PSEUDO_DIR = '/usr/share/espresso/pseudo'
PSEUDOS = {'H': 'H.pbe-kjpaw.UPF', 'O': 'O.pbe-rrkjus.UPF'}
BOX = 10.0  # Å, cubic box around the molecule
FRAME_CONV_THR = 1.0e-8  # Ry, SCF threshold of the labelled frames


def pw_input(calculation: str = 'scf', conv_thr: float = 1.0e-10) -> dict:
    """Return pw.x namelists for a PBE, 30 Ry, gamma-point H2O calculation."""
    return {
        'control': {
            'calculation': calculation,
            'tprnfor': True,
            'pseudo_dir': PSEUDO_DIR,
            'outdir': './tmp',
            'prefix': 'h2o',
            'disk_io': 'none',
            'forc_conv_thr': 1.0e-5,
            'etot_conv_thr': 1.0e-7,
        },
        'system': {'ecutwfc': 30.0, 'ecutrho': 240.0, 'occupations': 'fixed', 'input_dft': 'PBE'},
        'electrons': {'conv_thr': conv_thr, 'mixing_beta': 0.5},
        'ions': {},
    }


def run_pw(atoms: Atoms, workdir: Path, calculation: str = 'scf', conv_thr: float = 1.0e-10) -> Atoms:
    """Run pw.x for ``atoms`` in ``workdir`` (cached) and return the last frame with energy [eV] and forces [eV/Å]."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / 'pw.out'
    cached = out.exists() and 'JOB DONE' in out.read_text()
    if cached and calculation == 'scf':
        first = ase.io.read(out, format='espresso-out', index=0)
        cached = np.allclose(first.positions, atoms.positions, atol=1e-5)  # the cache is for this geometry
    if not cached:
        with open(workdir / 'pw.in', 'w') as fd:
            ase.io.write(
                fd, atoms, format='espresso-in', input_data=pw_input(calculation, conv_thr), pseudopotentials=PSEUDOS
            )
        env = dict(os.environ, OMP_NUM_THREADS='1')
        with open(workdir / 'pw.in') as fin, open(out, 'w') as fout:
            subprocess.run(['pw.x'], stdin=fin, stdout=fout, stderr=subprocess.STDOUT, cwd=workdir, env=env, check=True)
    parsed = ase.io.read(out, format='espresso-out', index=-1)
    frame = Atoms(parsed.symbols, positions=parsed.positions, cell=parsed.cell, pbc=False)
    frame.calc = SinglePointCalculator(frame, energy=parsed.get_potential_energy(), forces=parsed.get_forces())
    return frame


def _cached(atoms: Atoms, workdir: Path) -> Atoms | None:
    """The labelled frame if pw.x already finished for this geometry in ``workdir``, else None."""
    out = workdir / 'pw.out'
    if not (out.exists() and 'JOB DONE' in out.read_text()):
        return None
    if not np.allclose(ase.io.read(out, format='espresso-out', index=0).positions, atoms.positions, atol=1e-5):
        return None
    return _run_frame((atoms, workdir))


def _run_frame(job: tuple[Atoms, Path]) -> Atoms:
    # 1e-8 Ry is ample for forces (error ~1e-4 Ry/bohr); relaxation and finite differences use 1e-10 Ry
    frame = run_pw(*job, conv_thr=FRAME_CONV_THR)
    frame.info['source'] = 'pw.x PBE 30 Ry'
    return frame


def molecule(r1: float, r2: float, angle_deg: float) -> Atoms:
    """H2O with O-H distances ``r1``, ``r2`` [Å] and H-O-H angle [degrees], centred in the box."""
    a = np.radians(angle_deg)
    pos = [[0.0, 0.0, 0.0], [r1, 0.0, 0.0], [r2 * np.cos(a), r2 * np.sin(a), 0.0]]
    atoms = Atoms('OH2', positions=pos, cell=[BOX] * 3, pbc=True)
    atoms.center()
    return atoms


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def sample_geometries(eq: Atoms, rng: np.random.Generator, n_small: int, n_large: int, n_internal: int) -> list[Atoms]:
    """Rattled (small and large) and stretched/bent geometries, randomly oriented."""
    frames = []
    for n, sigma in ((n_small, 0.03), (n_large, 0.08)):
        for _ in range(n):
            atoms = eq.copy()
            atoms.positions += rng.normal(scale=sigma, size=(3, 3))
            frames.append(atoms)
    for _ in range(n_internal):
        atoms = molecule(rng.uniform(0.85, 1.25), rng.uniform(0.85, 1.25), rng.uniform(85.0, 135.0))
        atoms.positions += rng.normal(scale=0.02, size=(3, 3))
        frames.append(atoms)
    for atoms in frames:
        com = atoms.positions.mean(axis=0)
        atoms.positions = (atoms.positions - com) @ random_rotation(rng).T + 0.5 * BOX
    return frames


def fd_hessian(eq: Atoms, workdir: Path, delta: float = 0.01) -> np.ndarray:
    """Central finite-difference Hessian [eV/Å^2] from DFT forces, displacement ``delta`` [Å]."""
    n = len(eq)
    hessian = np.zeros((3 * n, 3 * n))
    for a in range(n):
        for c in range(3):
            forces = []
            for sign in (1, -1):
                atoms = eq.copy()
                atoms.positions[a, c] += sign * delta
                forces.append(run_pw(atoms, workdir / f'fd_{a}{c}{"p" if sign > 0 else "m"}').get_forces())
            hessian[3 * a + c] = -(forces[0] - forces[1]).ravel() / (2 * delta)
    return 0.5 * (hessian + hessian.T)


def harmonic_frequencies(hessian: np.ndarray, atoms: Atoms) -> np.ndarray:
    """Non-trivial harmonic frequencies [cm^-1] of a non-linear molecule (rigid-body motions projected out)."""
    masses = np.repeat(atoms.get_masses(), 3)
    mw = hessian / np.sqrt(np.outer(masses, masses))
    pos = atoms.positions - atoms.get_center_of_mass()
    sqm = np.sqrt(atoms.get_masses())[:, None]
    basis = []
    for c in range(3):
        t = np.zeros_like(pos)
        t[:, c] = 1.0
        basis.append((t * sqm).ravel())
        basis.append((np.cross(np.eye(3)[c], pos) * sqm).ravel())
    q, _ = np.linalg.qr(np.array(basis).T)
    proj = np.eye(len(masses)) - q @ q.T
    eig = np.linalg.eigvalsh(proj @ mw @ proj)
    # hbar * sqrt(eig) in eV, eig in eV/(Å^2 amu); negative eigenvalues give negative (imaginary) frequencies
    scale = units._hbar * 1e10 / np.sqrt(units._e * units._amu)
    freqs = np.sign(eig) * scale * np.sqrt(np.abs(eig)) / units.invcm
    return np.sort(freqs)[6:]


def main() -> None:
    """Relax, compute finite-difference frequencies, label the sampled geometries and write the files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seed', type=int, default=2024)
    parser.add_argument('--n-small', type=int, default=60, help='rattles with sigma 0.03 Å')
    parser.add_argument('--n-large', type=int, default=60, help='rattles with sigma 0.08 Å')
    parser.add_argument('--n-internal', type=int, default=85, help='stretched and bent geometries')
    parser.add_argument(
        '--extra',
        type=int,
        nargs=3,
        default=[45, 45, 70],
        metavar=('SMALL', 'LARGE', 'INTERNAL'),
        help='a second set drawn from seed + 1 (appended, so the first set stays the same)',
    )
    parser.add_argument('--workers', type=int, default=2, help='pw.x runs at the same time (each serial)')
    parser.add_argument('--collect-only', action='store_true', help='write the frames computed so far, run nothing')
    parser.add_argument('--workdir', type=Path, default=Path('/tmp/mlff_h2o_dft'))
    parser.add_argument('--output', type=Path, default=ROOT / 'tests' / 'data' / 'h2o_pbe_30ry.extxyz')
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)

    relaxed = run_pw(molecule(0.97, 0.97, 104.5), args.workdir / 'relax', calculation='relax')
    eq = Atoms(relaxed.symbols, positions=relaxed.positions, cell=[BOX] * 3, pbc=True)
    print('relaxed', eq.get_distance(0, 1), eq.get_distance(0, 2), eq.get_angle(1, 0, 2), flush=True)

    hessian = fd_hessian(eq, args.workdir)
    freqs = harmonic_frequencies(hessian, eq)
    print('DFT frequencies [cm^-1]', freqs, flush=True)
    reference = {
        'method': 'pw.x 6.7, PBE, ecutwfc 30 Ry, ecutrho 240 Ry, gamma, 10 Å box; central differences 0.01 Å',
        'symbols': list(eq.get_chemical_symbols()),
        'positions': eq.positions.tolist(),
        'cell': eq.cell.tolist(),
        'hessian_eV_per_A2': hessian.tolist(),
        'frequencies_cm-1': freqs.tolist(),
    }
    (args.output.parent / 'h2o_pbe_30ry_frequencies.json').write_text(json.dumps(reference, indent=1))

    rng = np.random.default_rng(args.seed)
    geometries = sample_geometries(eq, rng, args.n_small, args.n_large, args.n_internal)
    geometries += sample_geometries(eq, np.random.default_rng(args.seed + 1), *args.extra)
    jobs = [(atoms, args.workdir / f'frame_{index:04d}') for index, atoms in enumerate(geometries)]
    if args.collect_only:
        frames = [_cached(*job) for job in jobs]
        frames = [frame for frame in frames if frame is not None]
        ase.io.write(args.output, frames, format='extxyz')
        print(f'wrote {len(frames)} of {len(jobs)} frames (those already computed) to {args.output}', flush=True)
        return
    with multiprocessing.Pool(args.workers) as pool:
        frames = []
        for index, frame in enumerate(pool.imap(_run_frame, jobs)):
            frames.append(frame)
            if index % 10 == 0:
                print(f'{index + 1}/{len(jobs)} E = {frame.get_potential_energy():.4f} eV', flush=True)
    ase.io.write(args.output, frames, format='extxyz')
    print(f'wrote {len(frames)} frames to {args.output}', flush=True)


if __name__ == '__main__':
    main()
