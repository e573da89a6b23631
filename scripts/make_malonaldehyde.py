"""Write the two end structures of the malonaldehyde proton-transfer example and print the sanity numbers.

Writes
------
examples/malonaldehyde-enol-a.xyz
    The Cs cis-enol (Z)-3-hydroxyprop-2-enal with the proton on O1 (index 0).
examples/malonaldehyde-enol-b.xyz
    The mirror tautomer with the proton on O2 (index 1), same atom order: each index names the same atom.

Atom order: 0 O1, 1 O2, 2 H (transferring), 3 C1 (on O1), 4 C3 (on O2), 5 C2 (central), 6 H on C1, 7 H on C3,
8 H on C2. The mirror pairs are (0, 1), (3, 4), (6, 7). CV: distance_difference [0, 2, 1, 2] = d(O1,H) - d(O2,H).

Each end is relaxed with GFN2-xTB (tblite, BFGS fmax 0.01 eV/Å) and then with pw.x PBE (30/240 Ry, gamma, 10 Å box,
``relax``, serial). ``--barrier`` also prints the GFN2-xTB relaxed scan along the CV (each image relaxed with the CV
held fixed) and pw.x single points of the ends and of the symmetric (CV = 0) structure. pw.x runs are cached in
``--workdir``. Run as ``OMP_NUM_THREADS=1 python scripts/make_malonaldehyde.py [--barrier]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.constraints import FixInternals
from ase.optimize import BFGS

ROOT = Path(__file__).resolve().parents[1]
PSEUDO_DIR = '/usr/share/espresso/pseudo'
PSEUDOS = {'H': 'H.pbe-kjpaw.UPF', 'O': 'O.pbe-rrkjus.UPF', 'C': 'C.pbe-rrkjus.UPF'}
BOX = 10.0  # Å
MIRROR = [1, 0, 2, 4, 3, 5, 7, 6, 8]  # index permutation that swaps the two halves
O1, O2, HT = 0, 1, 2


def start_geometry() -> Atoms:
    """A rough planar H-bonded 6-ring (Å), proton on O1; the molecular plane is xy."""
    pos = [
        [-1.28, -0.80, 0.0],  # O1 (hydroxyl)
        [1.28, -0.80, 0.0],  # O2 (carbonyl)
        [-0.30, -1.10, 0.0],  # H  (transferring, on O1)
        [-1.20, 0.50, 0.0],  # C1
        [1.20, 0.50, 0.0],  # C3
        [0.00, 1.20, 0.0],  # C2
        [-2.15, 1.05, 0.0],  # H on C1
        [2.15, 1.05, 0.0],  # H on C3
        [0.00, 2.28, 0.0],  # H on C2
    ]
    return Atoms('O2HC3H3', positions=pos)


def cv(atoms: Atoms) -> float:
    """d(O1,H) - d(O2,H) [Å]."""
    return atoms.get_distance(O1, HT) - atoms.get_distance(O2, HT)


def mirror(atoms: Atoms) -> Atoms:
    """Reflect through the plane that swaps the halves (perpendicular to O1-O2) and permute back the pairs."""
    pos = atoms.positions - atoms.positions[[O1, O2]].mean(axis=0)
    axis = atoms.positions[O2] - atoms.positions[O1]
    axis /= np.linalg.norm(axis)
    pos = pos - 2.0 * np.outer(pos @ axis, axis)
    return Atoms(atoms.symbols, positions=pos[MIRROR] + atoms.positions[[O1, O2]].mean(axis=0))


def xtb(atoms: Atoms, fmax: float = 0.01, cv_target: float | None = None, steps: int = 500) -> Atoms:
    """GFN2-xTB relaxation (optionally with the CV held at ``cv_target``); returns a copy with .info['energy']."""
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(method='GFN2-xTB', verbosity=0)
    if cv_target is not None:
        atoms.set_constraint(FixInternals(bondcombos=[(cv_target, [[O1, HT, 1.0], [O2, HT, -1.0]])]))
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    atoms.info['energy'] = atoms.get_potential_energy()
    atoms.info['fmax'] = float(np.abs(atoms.get_forces()).max())
    atoms.set_constraint()
    atoms.calc = None
    return atoms


def pw(atoms: Atoms, workdir: Path, calculation: str = 'scf', nosym: bool = True) -> Atoms:
    """pw.x PBE (30/240 Ry, gamma, 10 Å box) ``scf`` or ``relax`` in ``workdir`` (cached); returns the last frame.

    With ``nosym=False`` pw.x symmetrises the forces, so a C2v structure stays C2v while it relaxes.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / 'pw.out'
    atoms = Atoms(atoms.symbols, positions=atoms.positions, cell=[BOX] * 3, pbc=True)
    atoms.center()
    cached = out.exists() and 'JOB DONE' in out.read_text()
    if cached:
        cached = np.allclose(ase.io.read(out, format='espresso-out', index=0).positions, atoms.positions, atol=1e-5)
    if not cached:
        input_data = {
            'control': {
                'calculation': calculation,
                'tprnfor': True,
                'pseudo_dir': PSEUDO_DIR,
                'outdir': './tmp',
                'prefix': 'mal',
                'disk_io': 'none' if calculation == 'scf' else 'low',
                'forc_conv_thr': 2.0e-4,  # Ry/bohr, about 0.005 eV/Å
                'etot_conv_thr': 1.0e-6,
            },
            'system': {'ecutwfc': 30.0, 'ecutrho': 240.0, 'occupations': 'fixed', 'input_dft': 'PBE', 'nosym': nosym},
            'electrons': {'conv_thr': 1.0e-9, 'mixing_beta': 0.5},
            'ions': {},
        }
        with open(workdir / 'pw.in', 'w') as fd:
            ase.io.write(fd, atoms, format='espresso-in', input_data=input_data, pseudopotentials=PSEUDOS)
        env = dict(os.environ, OMP_NUM_THREADS='1')
        with open(workdir / 'pw.in') as fin, open(out, 'w') as fout:
            subprocess.run(['pw.x'], stdin=fin, stdout=fout, stderr=subprocess.STDOUT, cwd=workdir, env=env, check=True)
    frames = ase.io.read(out, format='espresso-out', index=':')
    last = frames[-1]
    frame = Atoms(last.symbols, positions=last.positions)
    frame.info['energy'] = last.get_potential_energy()
    frame.info['fmax'] = float(np.abs(last.get_forces()).max())
    frame.info['steps'] = len(frames)
    return frame


def symmetric(atoms: Atoms) -> Atoms:
    """The C2v structure nearest ``atoms``: plane xy, mirror plane x = 0, H on it; centred in the box."""
    pos = atoms.positions - atoms.positions[[O1, O2]].mean(axis=0)
    ex = pos[O2] - pos[O1]
    ex /= np.linalg.norm(ex)
    ey = pos[HT] - (pos[HT] @ ex) * ex
    ey /= np.linalg.norm(ey)
    pos = pos @ np.array([ex, ey, np.cross(ex, ey)]).T
    reflected = pos * [-1.0, 1.0, 1.0]
    pos = 0.5 * (pos + reflected[MIRROR])
    pos[:, 2] = 0.0
    return Atoms(atoms.symbols, positions=pos - [0.0, 0.5 * (pos[:, 1].max() + pos[:, 1].min()), 0.0] + 0.5 * BOX)


def write_xyz(atoms: Atoms, path: Path, comment: str) -> None:
    """Write an xyz with a key="value" comment line (extended-xyz style, so ASE reads it into ``atoms.info``)."""
    atoms = atoms.copy()
    atoms.positions = np.round(atoms.positions - atoms.positions.mean(axis=0), 6) + 0.0  # no -0.000000
    lines = [str(len(atoms)), comment]
    lines += [
        f'{s:2s} {x:12.6f} {y:12.6f} {z:12.6f}' for s, (x, y, z) in zip(atoms.symbols, atoms.positions, strict=True)
    ]
    path.write_text('\n'.join(lines) + '\n')


def report(name: str, atoms: Atoms) -> None:
    """One line: energy, CV and the two O-H distances."""
    print(
        f'{name:28s} E = {atoms.info["energy"]:14.6f} eV  CV = {cv(atoms):+.4f} Å  '
        f'd(O1,H) = {atoms.get_distance(O1, HT):.4f}  d(O2,H) = {atoms.get_distance(O2, HT):.4f}  '
        f'd(O1,O2) = {atoms.get_distance(O1, O2):.4f}  fmax = {atoms.info["fmax"]:.4f}',
        flush=True,
    )


def main() -> None:
    """Relax the two ends, write the files, optionally print the barrier estimates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--barrier', action='store_true', help='also the GFN2-xTB scan and the pw.x single points')
    parser.add_argument('--images', type=int, default=9)
    parser.add_argument('--workdir', type=Path, default=Path('/tmp/mlff_malonaldehyde_dft'))
    args = parser.parse_args()
    kcal = units.kcal / units.mol

    t0 = time.time()
    xtb_a = xtb(start_geometry())
    xtb_b = xtb(mirror(xtb_a))
    report('GFN2-xTB enol_a', xtb_a)
    report('GFN2-xTB enol_b', xtb_b)
    print(f'GFN2-xTB E(b) - E(a) = {xtb_b.info["energy"] - xtb_a.info["energy"]:+.2e} eV ({time.time() - t0:.0f} s)')

    t0 = time.time()
    pbe_a = pw(xtb_a, args.workdir / 'relax_a', 'relax')
    pbe_b = pw(mirror(pbe_a), args.workdir / 'relax_b', 'relax')
    report('PBE enol_a', pbe_a)
    report('PBE enol_b', pbe_b)
    print(f'PBE E(b) - E(a) = {pbe_b.info["energy"] - pbe_a.info["energy"]:+.2e} eV ({time.time() - t0:.0f} s)')
    print(f'enol_b vs mirror(enol_a): max displacement after alignment {_rmsd(pbe_b, mirror(pbe_a)):.4f} Å')

    method = 'pw.x PBE 30/240 Ry, gamma, 10 A box, relaxed from GFN2-xTB (scripts/make_malonaldehyde.py)'
    order = '0 O1, 1 O2, 2 H transferring, 3 C1-O1, 4 C3-O2, 5 C2, 6 H-C1, 7 H-C3, 8 H-C2'
    for atoms, state, where in ((pbe_a, 'enol_a', 'O1'), (pbe_b, 'enol_b', 'O2')):
        comment = f'state={state} method="{method}" atoms="{order}" note="proton on {where}"'
        write_xyz(atoms, ROOT / 'examples' / f'malonaldehyde-{state.replace("_", "-")}.xyz', comment)

    if not args.barrier:
        return
    t0 = time.time()
    print('GFN2-xTB relaxed scan along the CV (linear interpolation, each image relaxed at its CV):')
    scan = []
    for i, s in enumerate(np.linspace(cv(xtb_a), cv(xtb_b), args.images)):
        x = i / (args.images - 1)
        guess = Atoms(xtb_a.symbols, positions=(1 - x) * xtb_a.positions + x * xtb_b.positions)
        image = xtb(guess, cv_target=s)
        scan.append(image)
        de = image.info['energy'] - xtb_a.info['energy']
        d_oo = image.get_distance(O1, O2)
        print(f'  CV {cv(image):+.3f} Å  dE = {de:.4f} eV = {de / kcal:.2f} kcal/mol  d(O1,O2) = {d_oo:.3f}')
    ts_xtb = scan[len(scan) // 2]
    print(f'({time.time() - t0:.0f} s)')

    t0 = time.time()
    sp_a = pw(xtb_a, args.workdir / 'sp_xtb_a')
    sp_ts = pw(ts_xtb, args.workdir / 'sp_xtb_ts')
    barrier = (sp_ts.info['energy'] - sp_a.info['energy']) / kcal
    print(f'PBE single points at the GFN2-xTB geometries (not PBE minima): barrier {barrier:.2f} kcal/mol')
    mid = Atoms(pbe_a.symbols, positions=0.5 * (pbe_a.positions + _aligned(pbe_b, pbe_a).positions))
    sp_mid = pw(mid, args.workdir / 'sp_pbe_mid')
    report('PBE midpoint (ends mean)', sp_mid)
    print(
        f'PBE barrier at the mean of the PBE ends: {(sp_mid.info["energy"] - pbe_a.info["energy"]) / kcal:.2f} kcal/mol'
    )
    ts = pw(pw(symmetric(mid), args.workdir / 'relax_ts', 'relax', nosym=False), args.workdir / 'sp_pbe_ts')
    report('PBE C2v saddle (relaxed)', ts)
    print(f'PBE barrier at the relaxed C2v saddle: {(ts.info["energy"] - pbe_a.info["energy"]) / kcal:.2f} kcal/mol')
    grid = (
        pw(mirror(pbe_a), args.workdir / 'sp_pbe_a_mirror').info['energy']
        - pw(pbe_a, args.workdir / 'sp_pbe_a').info['energy']
    )
    print(f'PBE E(mirror(enol_a)) - E(enol_a), same geometry reflected (grid/box effect): {grid:+.2e} eV')
    print(f'({time.time() - t0:.0f} s)')


def _aligned(atoms: Atoms, ref: Atoms) -> Atoms:
    """``atoms`` rigidly rotated and translated onto ``ref`` (Kabsch)."""
    from ase.build import minimize_rotation_and_translation

    atoms = atoms.copy()
    minimize_rotation_and_translation(ref, atoms)
    return atoms


def _rmsd(a: Atoms, b: Atoms) -> float:
    return float(np.abs(_aligned(a, b).positions - b.positions).max())


if __name__ == '__main__':
    main()
