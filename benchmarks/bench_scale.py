"""MD memory and speed versus size: NVT (Langevin) MD of periodic water boxes from about 10^3 to 10^5 atoms.

A 96-atom water box (32 molecules, 1 g/cm^3) is equilibrated once with the BP water model of ``water_model.py``
(Langevin 300 K, 0.5 fs) and replicated k x k x k times (k = 2, 5, 10: 768, 12,000 and 96,000 atoms by default).
Each size runs in its OWN subprocess, so that the peak resident memory belongs to that size alone: the worker loads
the model, builds the compiled kernels and evaluates the 96-atom box once (one-time library set-up), reads its
resident memory (the baseline), then runs ``simulate`` (Langevin 300 K, 0.5 fs, friction 0.01/fs) for a few warm-up
steps and a timed run. It reports

- peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus the baseline, and that per atom [kB/atom, 1 kB =
  1024 B as ru_maxrss counts];
- atom-steps/s of the timed run (atoms x steps done / wall time of the MD loop, which includes its Verlet rebuilds;
  the call's set-up, the first neighbour list and forces, is excluded), the torch threads and the device. A replica
  stopped by the MD guards (blown up) is marked STOPPED; its rate covers the steps it ran;
- with ``--device cuda``: ``torch.cuda.max_memory_allocated`` minus the allocation after the model load, per atom.

Targets checked: memory per atom flat within 20 % from the smallest to the largest box (max / min - 1 <= 0.2), and
the 10^5-atom box under 8 GB of peak RSS on the CPU (the largest box, and its baseline + per-atom memory scaled to
exactly 100,000 atoms). Without a GPU, ``--device cuda`` prints a message and skips.

Usage: ``python benchmarks/bench_scale.py [--potential PATH] [--threads 2] [--sizes 1000 10000 100000] [--quick]
[--device cpu|cuda] [--atom-steps 1e6] [--min-steps 10] [--warmup 5]``. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The orchestrating process imports no torch: a child's ru_maxrss starts from its parent's resident memory (fork and
# exec keep it), so a heavy parent would hide the peaks of the small boxes. numpy, torch, ase and the package are
# imported by the children (``--prepare``: model and base box; ``--worker``: one size).
HERE = Path(__file__).resolve().parent
BASE_MOLECULES = 32  # the replicated box: 96 atoms, 9.86 Å edge at 1 g/cm^3
FRICTION = 0.01  # 1/fs
FLAT_TOLERANCE = 0.20  # max / min - 1 of the memory per atom
MEMORY_LIMIT_GB = 8.0  # peak RSS of the 10^5-atom box on the CPU
TARGET_ATOMS = 100_000


# ----------------------------------------------------------------------------------------------- memory
def current_rss_kb() -> int:
    """Resident set size of this process now [kB], from /proc/self/statm (ru_maxrss where that is missing)."""
    try:
        pages = int(Path('/proc/self/statm').read_text().split()[1])
        return pages * os.sysconf('SC_PAGE_SIZE') // 1024
    except (OSError, ValueError, IndexError):
        return peak_rss_kb()


def peak_rss_kb() -> int:
    """Peak resident set size of this process so far [kB] (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def high_water_kb() -> int | None:
    """VmHWM of /proc/self/status [kB]: the peak RSS of this program alone (reset by exec); None where missing."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ----------------------------------------------------------------------------------------------- children
def _md_kwargs(device: str = 'cpu') -> dict:
    """Langevin 300 K, 0.5 fs, friction 0.01/fs: the MD of ``bench_classical.py``."""
    sys.path.insert(0, str(HERE))
    from bench_classical import TEMPERATURE, TIMESTEP

    return dict(ensemble='langevin', timestep=TIMESTEP, temperature=TEMPERATURE, friction=FRICTION, device=device)


def prepare(args: argparse.Namespace) -> dict:
    """Load (or train and cache) the BP water model and write the equilibrated 96-atom box to ``args.prepare``.

    The box: ``water_box`` of 32 molecules after ``args.base_steps`` of Langevin MD at 300 K; the file holds numbers,
    positions [Å], cell [Å] and velocities [Å/fs].
    """
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bench_classical import DEFAULT_TRAIN_SECONDS, _load_potential

    from aiida_mlff.core.analytic import water_box
    from aiida_mlff.core.md import simulate

    torch.set_num_threads(args.threads)
    pot, path = _load_potential(args.potential, args.threads, args.train_seconds or DEFAULT_TRAIN_SECONDS)
    box = water_box(BASE_MOLECULES, seed=0)
    result = simulate(pot, box, steps=args.base_steps, stride=max(args.base_steps, 1), seed=0, **_md_kwargs())
    info = {'potential': str(path), 'base_steps': args.base_steps}
    if list(result.status) != ['ok']:
        return {**info, 'error': f'equilibration of the 96-atom box stopped: {result.diagnostic[0]}'}
    state = result.final_state
    np.savez(
        args.prepare,
        numbers=box.numbers,
        positions=state.batch.positions.detach().cpu().double().numpy(),
        cell=np.asarray(box.cell),
        velocities=state.velocities.detach().cpu().double().numpy(),
    )
    return {**info, 'temperature_K': float(np.asarray(result.temperature)[-1, 0])}


def replicate(base: dict, k: int) -> tuple:
    """The base box (an ``ase.Atoms``) repeated k x k x k times, and its velocities [Å/fs] (N, 3) repeated likewise."""
    import numpy as np
    from ase import Atoms

    atoms = Atoms(base['numbers'], positions=base['positions'], cell=base['cell'], pbc=True)
    return atoms.repeat((k, k, k)), np.tile(base['velocities'], (k**3, 1))  # repeat() copies the box image by image


def repeats_for(atoms: int, base_atoms: int = 3 * BASE_MOLECULES) -> int:
    """The replication k (>= 1) whose k^3 x ``base_atoms`` is nearest to ``atoms`` on a log scale."""
    return max(1, round((atoms / base_atoms) ** (1.0 / 3.0)))


def worker(args: argparse.Namespace) -> dict:
    """One size in this process: baseline RSS, warm-up, timed NVT run, peak RSS (and CUDA peak memory)."""
    inherited_kb = peak_rss_kb()  # what fork and exec handed down from the parent, before any import
    import numpy as np
    import torch

    from aiida_mlff.core.md import simulate
    from aiida_mlff.core.models import Potential

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    pot = Potential.load(args.potential, device=device)
    with np.load(args.worker) as data:
        base = {key: data[key] for key in data.files}
    kwargs = _md_kwargs(device)
    # one-time set-up (kernel load, thread pools, allocator): not part of the per-atom memory
    small, v_small = replicate(base, 1)
    simulate(pot, small, velocities=v_small, steps=2, stride=2, seed=1, **kwargs)
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    baseline_kb, cuda_baseline = current_rss_kb(), torch.cuda.memory_allocated(device) if cuda else 0
    box, velocities = replicate(base, args.repeat)
    n = len(box)
    steps = max(args.min_steps, round(args.atom_steps / n))
    row = {'atoms': n, 'repeat': args.repeat, 'steps': steps, 'warmup': args.warmup, 'device': str(device)}
    warm = simulate(pot, box, velocities=velocities, steps=args.warmup, stride=max(args.warmup, 1), seed=2, **kwargs)
    if list(warm.status) != ['ok']:
        return {**row, 'status': 'stopped', 'why': f'warm-up: {warm.diagnostic[0]}'}
    state = warm.final_state
    del warm
    result = simulate(pot, None, state=state, steps=steps, stride=steps, seed=3, **kwargs)
    peak_kb = peak_rss_kb()
    ok = list(result.status) == ['ok']
    temperatures = np.asarray(result.temperature)  # K, (frames, 1): no frame when the replica stopped before one
    done = int(result.final_state.step) - int(state.step)  # the loop ends when its one replica stops
    row.update(
        status='ok' if ok else 'stopped',
        why='' if ok else result.diagnostic[0],
        threads=torch.get_num_threads(),
        inherited_maxrss_MB=inherited_kb / 1024,
        baseline_rss_MB=baseline_kb / 1024,
        peak_rss_MB=peak_kb / 1024,
        vm_hwm_MB=(high_water_kb() or 0) / 1024,
        delta_rss_MB=(peak_kb - baseline_kb) / 1024,
        kB_per_atom=(peak_kb - baseline_kb) / n,
        wall_s=result.wall_time,
        steps_done=done,
        rate=n * done / result.wall_time if result.wall_time > 0 else None,  # also of a run that stopped early
        neighbor_builds=result.n_neighbor_builds,
        temperature_K=float(temperatures[-1, 0]) if len(temperatures) else None,
    )
    if inherited_kb >= baseline_kb:
        row['why'] += f' ru_maxrss inherited from the parent ({inherited_kb / 1024:.0f} MB) hides the peak'
    if cuda:
        cuda_peak = torch.cuda.max_memory_allocated(device)
        row.update(
            cuda_baseline_MB=cuda_baseline / 2**20,
            cuda_peak_MB=cuda_peak / 2**20,
            cuda_kB_per_atom=(cuda_peak - cuda_baseline) / 1024 / n,
        )
    return row


# ----------------------------------------------------------------------------------------------- the parent
def _child(options: list[str], tag: str) -> tuple[dict | None, str, float]:
    """Run this script with ``options`` in a fresh process; its ``TAG {json}`` line, why it failed, wall time [s]."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *options], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(tag + ' '):
            return json.loads(line[len(tag) + 1 :]), '', elapsed
    tail = (proc.stderr.strip().splitlines() or [''])[-1]
    killed = ' (killed: out of memory?)' if proc.returncode < 0 else ''
    return None, f'exit status {proc.returncode}{killed}: {tail}', elapsed


def _cuda_available() -> bool:
    """Whether torch sees a GPU, asked in a child process (this one imports no torch)."""
    probe = 'import torch; print(torch.cuda.is_available())'
    proc = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=False)
    return proc.stdout.strip().endswith('True')


def run_size(args: argparse.Namespace, base_path: Path, potential: str, atoms: int, steps: dict) -> dict:
    """Run one size in a fresh Python process; its row (or why it failed)."""
    k = repeats_for(atoms)
    options = [
        *('--worker', str(base_path), '--repeat', str(k), '--potential', potential),
        *('--threads', str(args.threads), '--device', args.device, '--atom-steps', str(steps['atom_steps'])),
        *('--min-steps', str(steps['min_steps']), '--warmup', str(steps['warmup'])),
    ]
    row, why, elapsed = _child(options, 'WORKER')
    if row is None:
        return {'atoms': k**3 * 3 * BASE_MOLECULES, 'repeat': k, 'status': 'failed', 'why': why}
    return {**row, 'process_s': elapsed}


def _fmt(value, spec: str, width: int) -> str:
    return format(value, spec) if value is not None else f'{"-":>{width}s}'


def print_table(rows: list[dict], cuda: bool) -> None:
    """One line per size: memory (peak, baseline, per atom), speed, threads, device."""
    head = (
        f'{"atoms":>7s} {"k":>3s} {"steps":>5s} {"base MB":>8s} {"peak MB":>8s} {"delta MB":>9s} {"kB/atom":>8s} '
        f'{"atom-steps/s":>13s} {"thr":>3s} {"device":>6s}'
    )
    if cuda:
        head += f' {"cuda peak MB":>12s} {"cuda kB/atom":>12s}'
    print(head)
    for r in rows:
        if r.get('status') == 'failed' or 'peak_rss_MB' not in r:
            print(f'{r["atoms"]:7d} {r["repeat"]:3d}  {r.get("status")}: {r.get("why")}')
            continue
        line = (
            f'{r["atoms"]:7d} {r["repeat"]:3d} {r["steps"]:5d} {r["baseline_rss_MB"]:8.0f} {r["peak_rss_MB"]:8.0f} '
            f'{r["delta_rss_MB"]:9.0f} {r["kB_per_atom"]:8.2f} {_fmt(r["rate"], "13,.0f", 13)} {r["threads"]:3d} '
            f'{r["device"]:>6s}'
        )
        if cuda:
            line += f' {r["cuda_peak_MB"]:12.0f} {r["cuda_kB_per_atom"]:12.2f}'
        print(line + ('' if r['status'] == 'ok' else f'  STOPPED after {r["steps_done"]} steps: {r["why"]}'))


def check_targets(rows: list[dict], device: str) -> dict:
    """Flatness of the memory per atom (max / min - 1 <= 20 %) and, on the CPU, the 10^5-atom box under 8 GB."""
    done = [r for r in rows if 'kB_per_atom' in r]
    targets: dict = {}
    key = 'cuda_kB_per_atom' if device == 'cuda' else 'kB_per_atom'
    if len(done) >= 2:
        per_atom = [r[key] for r in done]
        spread = max(per_atom) / min(per_atom) - 1.0 if min(per_atom) > 0 else float('inf')
        targets['flat'] = {
            'spread': spread,
            'tolerance': FLAT_TOLERANCE,
            'atoms': [r['atoms'] for r in done],
            'met': bool(spread <= FLAT_TOLERANCE),
        }
        print(
            f'memory per atom ({key}) from {done[0]["atoms"]:,} to {done[-1]["atoms"]:,} atoms: '
            f'{min(per_atom):.2f}-{max(per_atom):.2f} kB/atom, spread {100 * spread:.0f} % '
            f'(target <= {100 * FLAT_TOLERANCE:.0f} %: {"yes" if targets["flat"]["met"] else "NO"})'
        )
    largest = max(done, key=lambda r: r['atoms'], default=None)
    if device == 'cpu' and largest is not None and largest['atoms'] >= TARGET_ATOMS // 2:
        scaled = (largest['baseline_rss_MB'] + largest['kB_per_atom'] * TARGET_ATOMS / 1024) / 1024
        peak = largest['peak_rss_MB'] / 1024
        met = max(peak, scaled) < MEMORY_LIMIT_GB
        targets['memory_1e5'] = {'atoms': largest['atoms'], 'peak_GB': peak, 'scaled_1e5_GB': scaled, 'met': met}
        print(
            f'{largest["atoms"]:,} atoms: peak RSS {peak:.2f} GB (scaled to {TARGET_ATOMS:,} atoms: {scaled:.2f} GB; '
            f'target < {MEMORY_LIMIT_GB:g} GB: {"yes" if met else "NO"})'
        )
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--prepare``, ``--worker`` and ``--repeat`` are internal: the child processes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--potential', type=Path, default=None, help='BP potential file (default: train and cache)')
    parser.add_argument('--train-seconds', type=float, default=None, help='training time when no file is cached')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--sizes', type=int, nargs='+', default=[1000, 10000, 100000], help='atoms (approximate)')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--atom-steps', type=float, default=None, help='timed atoms x steps (default 1e6, quick 2e5)')
    parser.add_argument('--min-steps', type=int, default=None, help='timed steps at least (default 10, quick 3)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps per size (default 5, quick 2)')
    parser.add_argument('--base-steps', type=int, default=None, help='equilibration of the 96-atom box (2000/400)')
    parser.add_argument('--quick', action='store_true', help='fewer steps')
    parser.add_argument('--worker', type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--prepare', type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--repeat', type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print('WORKER ' + json.dumps(worker(args)), flush=True)
        return
    if args.prepare is not None:
        print('PREPARED ' + json.dumps(prepare(args)), flush=True)
        return
    steps = {
        'atom_steps': args.atom_steps or (2e5 if args.quick else 1e6),
        'min_steps': args.min_steps or (3 if args.quick else 10),
        'warmup': args.warmup if args.warmup is not None else (2 if args.quick else 5),
    }
    base_steps = args.base_steps or (400 if args.quick else 2000)
    if args.device == 'cuda' and not _cuda_available():
        print('CUDA is not available on this machine: the GPU table is skipped.')
        print('RESULT ' + json.dumps({'device': 'cuda', 'skipped': 'CUDA not available'}), flush=True)
        return
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_path = Path(tmp) / 'base.npz'
        options = ['--prepare', str(base_path), '--threads', str(args.threads), '--base-steps', str(base_steps)]
        options += ['--potential', str(args.potential)] if args.potential else []
        options += ['--train-seconds', str(args.train_seconds)] if args.train_seconds else []
        info, why, _ = _child(options, 'PREPARED')
        if info is None or 'error' in info:
            print(f'preparation failed: {why or info["error"]}')
            print('RESULT ' + json.dumps({'device': args.device, 'error': why or info['error']}), flush=True)
            return
        print(
            f'potential {info["potential"]}; 96-atom box equilibrated ({base_steps} steps, T '
            f'{info["temperature_K"]:.0f} K) in {time.perf_counter() - t0:.0f} s; '
            f'load average {os.getloadavg()[0]:.2f}',
            flush=True,
        )
        for atoms in args.sizes:
            rows.append(run_size(args, base_path, info['potential'], atoms, steps))
            print(f'[{rows[-1]["atoms"]:,} atoms done, {time.perf_counter() - t0:.0f} s]', flush=True)
    load = os.getloadavg()[0]
    print(f'\nNVT (Langevin 300 K, 0.5 fs) of replicated water boxes, one process per size; load average {load:.2f}')
    print_table(rows, cuda=args.device == 'cuda')
    targets = check_targets(rows, args.device)
    result = {'device': args.device, 'threads': args.threads, 'rows': rows, 'targets': targets, 'load': load}
    print('RESULT ' + json.dumps({**result, 'potential': info['potential']}), flush=True)


if __name__ == '__main__':
    main()
