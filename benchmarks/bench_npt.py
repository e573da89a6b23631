"""NPT density and isothermal compressibility of the BP water model, the compressibility against finite differences.

1. ``--replicas`` water boxes (``water_box`` of ``--molecules`` molecules at ``--density`` g/cm^3, different
   orientations) in ONE batch: stochastic cell-rescaling NPT (isotropic) at ``--temperature`` K and ``--pressure``
   bar, BAOAB Langevin (0.5 fs, friction 0.01/fs), barostat ``tau_p`` and compressibility guess at the defaults of
   ``core/options.py``. After ``--equil-ps`` of equilibration, ``--ps`` of sampling: density of each replica, mean,
   standard error from the spread of the replica means and from block averages, and the mean barostat pressure.
2. kappa_T from the NPT volume fluctuations, ``<dV^2> / (kT <V>)``, against ``-(1/V) dV/dP`` of the same potential
   from NVT (Langevin) runs, all in one batch, at ``<V> (1 -/+ delta)`` (each from the end of an NPT replica,
   scaled affinely); the NVT pressure of a recorded frame is ``-trace(stress) / 3`` of the potential plus the exact
   kinetic mean ``N kT / V`` (Langevin thermalises all 3N degrees of freedom). Target: ratio within 20 %.

The potential is the BP model of ``water_model.py``, cached in the temp dir: ``--reference flexible`` (default)
trained on FlexibleWater, i.e. charge-free SPC/Fw frames at 1.0 and 1.2 g/cm^3, which is NOT a liquid at 1 bar (its
density there means nothing); ``--reference charged`` trained with stress labels on ChargedFlexibleWater (SPC/Fw with
its charges, damped shifted force Coulomb; 0.9-1.2 g/cm^3, 300-600 K), a liquid at 1 bar. ``--referee`` runs the
analytic referee itself (only the charged one has a stress): the difference to the model's density is the model's
error. Nothing here tunes the barostat or the model: what comes out is reported.

Usage: ``python benchmarks/bench_npt.py [--quick] [--reference flexible|charged] [--referee] [--replicas 3]
[--molecules 64] [--ps 20] [--equil-ps 5] [--nvt-ps 5] [--threads 2] [--potential PATH]``. The last line is
``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units

from aiida_mlff.core.analytic import water_box
from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.md import simulate
from aiida_mlff.core.options import MD

TIMESTEP = 0.5  # fs
FRICTION = 0.01  # 1/fs
STRIDE = 20  # steps between recorded frames (10 fs)
AMU_PER_A3 = 1.0 / 0.602214076  # g/cm^3 of 1 amu/Å^3
DEFAULT_TRAIN_SECONDS = 240.0  # s


def load_potential(path: Path | None, threads: int, seconds: float, reference: str = 'flexible', referee=False):
    """The water BP model of ``water_model.stable_water_potential``, from ``path`` or a temp-dir cache; or the analytic
    referee itself (``referee``), which must have a stress. Returns the potential and its file (the class name for a
    referee).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from water_model import REFERENCES, cache_path, stable_water_potential

    if referee:
        if reference != 'charged':
            raise SystemExit(f'--referee: the {reference!r} referee has no stress, NPT needs one (use charged)')
        cls = REFERENCES[reference][0]
        return cls(), cls.__name__
    if path is None:
        path = cache_path(reference, seconds)
    return stable_water_potential(path, seconds=seconds, threads=threads, reference=reference), path


def machine() -> dict:
    """CPU model, cores, torch threads and the 1-minute load average."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as handle:
            cpu = next((line.split(':', 1)[1].strip() for line in handle if line.startswith('model name')), cpu)
    except OSError:
        pass
    return {'cpu': cpu, 'cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'load': os.getloadavg()[0]}


def density(volume: np.ndarray, mass: float) -> np.ndarray:
    """g/cm^3 from volumes [Å^3] of a box of ``mass`` amu."""
    return mass * AMU_PER_A3 / volume


def block_means(x: np.ndarray, n_blocks: int) -> np.ndarray:
    """(n_blocks * R,) means of ``n_blocks`` contiguous blocks of each replica's series in (frames, R) ``x``."""
    usable = (x.shape[0] // n_blocks) * n_blocks
    return x[:usable].reshape(n_blocks, usable // n_blocks, -1).mean(1).ravel()


def mean_and_errors(x: np.ndarray, n_blocks: int) -> dict:
    """Mean of (frames, R) samples, its standard error from the R replica means and from block means."""
    replicas = x.mean(0)
    blocks = block_means(x, n_blocks)
    return {
        'mean': float(x.mean()),
        'replicas': replicas.tolist(),
        'se_replicas': float(replicas.std(ddof=1) / np.sqrt(len(replicas))) if len(replicas) > 1 else float('nan'),
        'se_blocks': float(blocks.std(ddof=1) / np.sqrt(len(blocks))),
    }


def run_npt(pot, args, steps_eq: int, steps: int) -> tuple:
    """Equilibrate then sample NPT of ``args.replicas`` boxes in one batch; the sampling run and the wall time [s]."""
    boxes = [water_box(args.molecules, density=args.density, seed=args.seed + r) for r in range(args.replicas)]
    common = dict(
        ensemble='npt',
        timestep=TIMESTEP,
        temperature=args.temperature,
        friction=FRICTION,
        pressure=args.pressure,
        barostat_mode='isotropic',
    )
    start = time.perf_counter()
    warm = simulate(pot, boxes, steps=steps_eq, stride=STRIDE, seed=args.seed, **common)
    sample = simulate(pot, None, steps=steps, stride=STRIDE, state=warm.final_state, **common)
    return boxes, warm, sample, time.perf_counter() - start


def npt_statistics(sample, mass: float, temperature: float, n_blocks: int) -> dict:
    """Density, volume, barostat pressure and kappa_T = <dV^2> / (kT <V>) [1/bar] of the sampled NPT frames.

    Only the replicas that finished with status ok count (at least two are needed for the errors).
    """
    ok = np.array([s == 'ok' for s in sample.status])
    volume = sample.extra['volume'][:, ok]  # a continued run records no initial frame
    kt = units.kB * temperature
    v_mean = float(volume.mean())
    squares = (volume - v_mean) ** 2  # about the pooled mean
    to_kappa = units.bar / (kt * v_mean)  # 1/bar per Å^6
    t_total = volume.shape[0] * STRIDE * TIMESTEP * volume.shape[1]  # fs sampled, all replicas
    per_replica = squares.mean(0) * to_kappa
    per_block = block_means(squares, n_blocks) * to_kappa
    return {
        'density': mean_and_errors(density(volume, mass), n_blocks),
        'volume': mean_and_errors(volume, n_blocks),
        'pressure': mean_and_errors(sample.extra['pressure'][:, ok], n_blocks),
        # the error bar the barostat itself sets on any pressure mean (Euler-Maruyama identity: mean(P - P0) =
        # dlnV / (rate n) - noise / (rate n)): sqrt(2 kT tau_p / (<V> beta_T T_total)), T_total over all replicas
        'pressure_se_barostat': float(
            np.sqrt(2.0 * kt * MD['tau_p'].default / (v_mean * MD['compressibility'].default / units.bar * t_total))
            / units.bar
        ),
        'temperature_K': float(np.mean(np.asarray(sample.temperature)[:, ok])),
        'kappa': float(squares.mean() * to_kappa),
        'kappa_se_replicas': float(per_replica.std(ddof=1) / np.sqrt(len(per_replica)))
        if len(per_replica) > 1
        else float('nan'),
        'kappa_se_blocks': float(per_block.std(ddof=1) / np.sqrt(len(per_block))),
        'frames': int(volume.shape[0]),
        'density_halves': [float(h.mean()) for h in np.array_split(density(volume, mass), 2)],  # drift check
    }


def scaled_starts(
    npt_state, template: Atoms, v_target: float, deltas: list[float], per_volume: int, sources: list[int]
) -> list[Atoms]:
    """NVT starting boxes: final configurations of NPT replicas ``sources`` scaled to ``v_target (1 + delta)`` Å^3."""
    n = len(template)
    cells = npt_state.batch.cell.detach().double().numpy()
    positions = npt_state.positions.detach().double().numpy()
    starts = []
    for delta in deltas:
        for k in range(per_volume):
            r = sources[k % len(sources)]
            g = (v_target * (1.0 + delta) / abs(np.linalg.det(cells[r]))) ** (1.0 / 3.0)
            starts.append(
                Atoms(template.numbers, positions=positions[n * r : n * (r + 1)] * g, cell=cells[r] * g, pbc=True)
            )
    return starts


def frame_pressures(pot, frames: np.ndarray, starts: list[Atoms], temperature: float) -> np.ndarray:
    """(F, R) pressure [bar] of (F, R, n, 3) fixed-cell frames [Å]: ``-trace(stress) / 3 + N kT / V``."""
    template = AtomsBatch.from_atoms(starts, dtype=torch.float64)
    out = []
    for positions in frames:
        batch = AtomsBatch(
            torch.as_tensor(positions.reshape(-1, 3)), template.numbers, template.cell, template.pbc, template.batch
        )
        stress = pot.evaluate(batch, forces=False, stress=True)['stress'].detach().double()
        out.append(-stress.diagonal(dim1=-2, dim2=-1).mean(-1).numpy())
    n_atoms = template.counts.numpy()
    volume = np.abs(np.linalg.det(template.cell.numpy()))
    return (np.array(out) + n_atoms * units.kB * temperature / volume) / units.bar


def finite_difference_kappa(pot, args, npt, template: Atoms, v_mean: float, steps_eq: int, steps: int) -> dict:
    """kappa = 2 delta / (P(V(1 - delta)) - P(V(1 + delta))) [1/bar] from NVT runs of all volumes in one batch.

    The runs start from the final configurations of the NPT replicas of ``npt`` that finished with status ok.
    """
    deltas = [-args.delta, args.delta]
    sources = [r for r, s in enumerate(npt.status) if s == 'ok']
    starts = scaled_starts(npt.final_state, template, v_mean, deltas, args.nvt_replicas, sources)
    start = time.perf_counter()
    nvt = simulate(
        pot,
        starts,
        ensemble='langevin',
        timestep=TIMESTEP,
        temperature=args.temperature,
        friction=FRICTION,
        steps=steps_eq + steps,
        stride=STRIDE,
        seed=args.seed + 100,
    )
    wall = time.perf_counter() - start
    keep = np.asarray(nvt.step) > steps_eq
    ok = np.array([s == 'ok' for s in nvt.status])  # a stopped replica's frames hold NaN: left out
    kept = [a for a, good in zip(starts, ok, strict=True) if good]
    pressure = frame_pressures(pot, nvt.positions[keep][:, ok], kept, args.temperature)
    group = np.repeat([0, 1], args.nvt_replicas)[ok]
    lo, hi = (mean_and_errors(pressure[:, group == k], args.blocks) for k in range(2))
    err = {key: float(np.hypot(lo[key], hi[key])) for key in ('se_replicas', 'se_blocks')}
    drop = lo['mean'] - hi['mean']  # bar
    kappa = 2.0 * args.delta / drop
    return {
        'delta': args.delta,
        'pressure_low_volume': lo,
        'pressure_high_volume': hi,
        'kappa': kappa,
        'kappa_se_replicas': abs(kappa) * err['se_replicas'] / abs(drop),
        'kappa_se_blocks': abs(kappa) * err['se_blocks'] / abs(drop),
        'status': list(nvt.status),
        'temperature_K': float(np.nanmean(np.asarray(nvt.temperature)[keep])),
        'frames': int(keep.sum()),
        'wall_s': wall,
    }


def ratio_with_error(a: float, ea: float, b: float, eb: float) -> tuple[float, float]:
    """a / b and its first-order standard error."""
    r = a / b
    return r, abs(r) * float(np.hypot(ea / a, eb / b))


def _pm(entry: dict, fmt: str) -> str:
    return f'{entry["mean"]:{fmt}} +- {entry["se_replicas"]:{fmt}} (replicas) / {entry["se_blocks"]:{fmt}} (blocks)'


def print_report(npt: dict, fd: dict | None, info: dict) -> None:
    """The table of densities and the compressibility comparison."""
    print(
        f'\nNPT {info["replicas"]} x {info["molecules"]} H2O, {info["temperature"]:g} K, {info["pressure"]:g} bar, '
        f'isotropic; {info["equil_ps"]:g} ps equilibration + {info["ps"]:g} ps sampling ({npt["frames"]} frames)'
    )
    print(f'{"replica":>8s} {"density g/cm^3":>15s} {"<V> Å^3":>10s} {"<P> bar":>9s}')
    rows = zip(npt['density']['replicas'], npt['volume']['replicas'], npt['pressure']['replicas'], strict=True)
    for r, (rho, v, p) in enumerate(rows):
        print(f'{r:8d} {rho:15.4f} {v:10.1f} {p:9.1f}')
    print(f'density  {_pm(npt["density"], ".4f")} g/cm^3')
    print(f'pressure {_pm(npt["pressure"], ".1f")} bar (barostat, instantaneous; target {info["pressure"]:g})')
    print(
        f'  error bar set by the barostat noise alone: {npt["pressure_se_barostat"]:.1f} bar (the recorded frames add '
        f'the aliased intramolecular oscillations of a {STRIDE * TIMESTEP:g} fs stride)'
    )
    first, second = npt['density_halves']
    print(f'<T> {npt["temperature_K"]:.1f} K; density first / second half of the sampling {first:.4f} / {second:.4f}')
    print(
        f'kappa_T (volume fluctuations) {npt["kappa"]:.3e} +- {npt["kappa_se_replicas"]:.1e} (replicas) / '
        f'{npt["kappa_se_blocks"]:.1e} (blocks) 1/bar'
    )
    if fd is None:
        return
    lo, hi = fd['pressure_low_volume'], fd['pressure_high_volume']
    print(
        f'NVT at <V>(1 -/+ {fd["delta"]:g}) ({fd["frames"]} frames, <T> {fd["temperature_K"]:.1f} K, '
        f'status {sorted(set(fd["status"]))}):\n  P = {_pm(lo, ".1f")} bar\n  P = {_pm(hi, ".1f")} bar'
    )
    print(
        f'kappa_T (finite differences) {fd["kappa"]:.3e} +- {fd["kappa_se_replicas"]:.1e} (replicas) / '
        f'{fd["kappa_se_blocks"]:.1e} (blocks) 1/bar'
    )
    ratio, err = info['ratio'], info['ratio_se']
    verdict = 'yes' if abs(ratio - 1.0) <= 0.2 else 'NO'
    print(f'ratio fluctuations / finite differences = {ratio:.3f} +- {err:.3f} (target within 20 %: {verdict})')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='short smoke run (32 molecules, fractions of a ps)')
    parser.add_argument('--replicas', type=int, default=3, help='NPT replicas, one batch')
    parser.add_argument('--molecules', type=int, default=None, help='molecules per box (default 64, quick 32)')
    parser.add_argument('--density', type=float, default=0.95, help='starting density [g/cm^3]')
    parser.add_argument('--temperature', type=float, default=300.0, help='K')
    parser.add_argument('--pressure', type=float, default=1.0, help='bar')
    parser.add_argument('--ps', type=float, default=None, help='NPT sampling [ps] (default 20, quick 0.5)')
    parser.add_argument('--equil-ps', type=float, default=None, help='NPT equilibration [ps] (default 5, quick 0.5)')
    parser.add_argument(
        '--nvt-ps', type=float, default=None, help='NVT sampling per volume [ps] (default 5, quick 0.25)'
    )
    parser.add_argument(
        '--nvt-equil-ps', type=float, default=None, help='NVT equilibration [ps] (default 1, quick 0.1)'
    )
    parser.add_argument('--nvt-replicas', type=int, default=3, help='NVT replicas per volume')
    parser.add_argument('--delta', type=float, default=0.02, help='relative volume change of the NVT runs')
    parser.add_argument('--blocks', type=int, default=5, help='blocks per replica for block-average errors')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--potential', type=Path, default=None, help='BP potential file (default: train and cache)')
    parser.add_argument(
        '--reference', choices=('flexible', 'charged'), default='flexible', help='referee the BP model is trained on'
    )
    parser.add_argument('--referee', action='store_true', help='run the analytic referee itself (charged only)')
    parser.add_argument('--train-seconds', type=float, default=DEFAULT_TRAIN_SECONDS)
    args = parser.parse_args()
    quick = args.quick
    defaults = {'molecules': (64, 32), 'ps': (20.0, 0.5), 'equil_ps': (5.0, 0.5), 'nvt_ps': (5.0, 0.25)}
    defaults['nvt_equil_ps'] = (1.0, 0.1)
    for key, (full, short) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    return args


def steps_of(ps: float) -> int:
    """Steps of ``TIMESTEP`` in ``ps`` picoseconds, a multiple of ``STRIDE``."""
    return max(STRIDE, round(ps * 1000.0 / TIMESTEP / STRIDE) * STRIDE)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pot, path = load_potential(args.potential, args.threads, args.train_seconds, args.reference, args.referee)
    start_machine = machine()
    print(f'potential {path} ({time.perf_counter() - t0:.0f} s); machine {start_machine}', flush=True)
    print(f'barostat: tau_p {MD["tau_p"].default:g} fs, compressibility guess {MD["compressibility"].default:g} 1/bar')
    template, _, sample, npt_wall = run_npt(pot, args, steps_of(args.equil_ps), steps_of(args.ps))
    mass = float(template[0].get_masses().sum())
    print(f'[NPT done in {npt_wall:.0f} s, status {list(sample.status)}, load {os.getloadavg()[0]:.2f}]', flush=True)
    npt = npt_statistics(sample, mass, args.temperature, args.blocks)
    for r, (status, why) in enumerate(zip(sample.status, sample.diagnostic, strict=True)):
        if status != 'ok':
            print(f'  NPT replica {r} stopped ({status}): {why}')
    fd = None
    if any(s == 'ok' for s in sample.status):
        fd = finite_difference_kappa(
            pot,
            args,
            sample,
            template[0],
            npt['volume']['mean'],
            steps_of(args.nvt_equil_ps),
            steps_of(args.nvt_ps),
        )
        print(f'[NVT done in {fd["wall_s"]:.0f} s, load {os.getloadavg()[0]:.2f}]', flush=True)
    se = float(np.nanmax([npt['kappa_se_replicas'], npt['kappa_se_blocks']]))  # replicas: NaN when one is left
    fd_se = float(np.nanmax([fd['kappa_se_replicas'], fd['kappa_se_blocks']])) if fd else float('nan')
    ratio, ratio_se = ratio_with_error(npt['kappa'], se, fd['kappa'], fd_se) if fd else (float('nan'),) * 2
    info = {**vars(args), 'ratio': ratio, 'ratio_se': ratio_se}
    print_report(npt, fd, info)
    end_machine = machine()
    print(f'threads {args.threads}; load average: start {start_machine["load"]:.2f}, end {end_machine["load"]:.2f}')
    result = {
        'args': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        'npt_status': list(sample.status),
        'npt_diagnostic': list(sample.diagnostic),
        'npt': npt,
        'npt_wall_s': npt_wall,
        'finite_difference': fd,
        'kappa_ratio': ratio,
        'kappa_ratio_se': ratio_se,
        'machine_start': start_machine,
        'machine_end': end_machine,
        'potential': str(path),
        'wall_s': time.perf_counter() - t0,
    }
    print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
