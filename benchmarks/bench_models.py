"""Accuracy against cost of the potential architectures: held-out DFT errors versus MD speed, same data and budget.

Every configuration of :data:`CONFIGURATIONS` (Behler-Parrinello networks of three sizes, the medium one as a
correction to GFN2-xTB, and MACE with two channel counts) is trained on the same 80 % of
``tests/data/h2o_pbe_30ry.extxyz`` (pw.x PBE water; ``split_indices`` with ``--seed``) with the training options of
``train_h2o.py`` (``RECIPE``) and the same wall-time budget (``time_budget``; the training checks it between epochs
and L-BFGS steps, so the wall time of the whole ``train`` call, statistics and final metrics included, is printed
as ``train s``). All models have a 5 Å radial cutoff, committee 1 and float32 weights (training itself runs in
float64, ``train``'s default). Then, per configuration:

- the energy MAE [meV/atom] and force MAE [meV/Å] on the held-out 20 % (:func:`evaluate_metrics`);
- MD speed [atom-steps/s: atoms x steps / wall s] on a water box of ``--box-atoms`` atoms (768 by default), timed by
  ``bench_classical.time_ours`` (Langevin 300 K, 0.5 fs, our batched ``simulate``, after an untimed equilibration).
  The xTB row evaluates GFN2-xTB on the whole box at every step (minutes for 768 atoms on two cores), so it is timed
  on ``--xtb-md-steps`` steps without equilibration, a lower bound of its speed (the table says so); the GFN2-xTB
  labels of its training frames are timed apart (not part of the budget).

Each configuration runs in its own process (a failure, e.g. mace-torch missing, becomes a row with the reason, and
a failure of the MD keeps the errors measured before it; MACE is imported only there). The table is sorted by speed,
with the speed relative to the fastest MACE and the force error relative to the most accurate MACE. Targets, checked
against those two references:

1. a BP configuration (``bp-chiral``, with or without the xTB baseline) with a force MAE <= 1.5x the best MACE's
   at >= 50x the fastest MACE's atom-steps/s;
2. a MACE configuration whose force MAE is below that of every BP configuration.

Usage: ``python benchmarks/bench_models.py [--budget 240] [--threads 2] [--md-steps 100] [--equilibration 20]
[--box-atoms 768] [--xtb-md-steps 2] [--mace-md-steps 10] [--seed 0] [--only bp-small mace-small]
[--plot frontier.png] [--json]``. MACE's MD is timed on ``--mace-md-steps`` steps after a fifth as many (the rate
of a step of seconds needs no more).
MACE needs mace-torch importable (``pip install 'aiida-mlff[mace]'``); the xTB row needs tblite. A quick check:
``--budget 5 --md-steps 3 --equilibration 1 --box-atoms 96``. The full run takes about an hour on two cores: six
trainings of ``--budget`` (MACE overshoots it by up to an epoch), MACE MD at seconds per step on 768 atoms and
GFN2-xTB at minutes per evaluation of the box.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CUTOFF = 5.0  # Å, every model's radial cutoff (BP's angular cutoff: the builder's default, as in train_h2o.py)
MODEL_DTYPE = 'float32'
TEST_FRACTION = 0.2  # held out from training
BP_MEDIUM = {'architecture': 'bp-chiral', 'hidden': [32, 32]}
#: name -> architecture and hyperparameters (besides elements, cutoff, committee 1, seed and dtype)
CONFIGURATIONS: dict[str, dict] = {
    'bp-small': {'architecture': 'bp-chiral', 'hidden': [16, 16]},
    'bp-medium': BP_MEDIUM,
    'bp-large': {'architecture': 'bp-chiral', 'hidden': [64, 64]},
    'bp+xtb': {'architecture': 'xtb-delta', 'correction': BP_MEDIUM},
    'mace-small': {'architecture': 'mace', 'channels': 32, 'max_l': 1},
    'mace-medium': {'architecture': 'mace', 'channels': 64, 'max_l': 1},
}
BP_ERROR_FACTOR = 1.5  # target 1: BP force MAE <= this x the best MACE's ...
BP_SPEED_FACTOR = 50.0  # ... at >= this x the fastest MACE's atom-steps/s


def family(name: str) -> str:
    """``'mace'`` or ``'bp'`` (the xTB-delta row is a BP network on a baseline)."""
    return 'mace' if CONFIGURATIONS[name]['architecture'] == 'mace' else 'bp'


# ------------------------------------------------------------------------------------------- one configuration
def build_model(name: str, seed: int):
    """The untrained potential of configuration ``name`` (H and O, :data:`CUTOFF`, committee 1, float32)."""
    from aiida_mlff.core.architectures import build

    hyper = copy.deepcopy(CONFIGURATIONS[name])
    architecture = hyper.pop('architecture')
    return build(architecture, elements=['H', 'O'], cutoff=CUTOFF, committee=1, seed=seed, dtype=MODEL_DTYPE, **hyper)


def fit(pot, train_frames: list, budget: float, seed: int) -> dict:
    """Train ``pot`` in place with train_h2o's RECIPE within ``budget`` [s]; wall times [s] and epochs.

    An xTB-delta potential trains its correction on ``label - baseline``; computing the baseline of the training
    frames is timed apart (``baseline_s``) and not part of the budget.
    """
    from train_h2o import RECIPE

    from aiida_mlff.core.training import train

    target, frames, baseline_s = pot, train_frames, 0.0
    if hasattr(pot, 'baseline'):
        from aiida_mlff.core.baselines import subtract_baseline

        start = time.perf_counter()
        target, frames = pot.correction, subtract_baseline(train_frames, pot.baseline)
        baseline_s = time.perf_counter() - start
    start = time.perf_counter()
    report = train(target, frames, **{**RECIPE, 'time_budget': budget, 'seed': seed})
    return {
        'train_s': time.perf_counter() - start,
        'baseline_s': baseline_s,
        'epochs': report['epochs_run'],
        'best_epoch': report['best_epoch'],
    }


def md_speed(pot, box_atoms: int, steps: int, equilibration: int, xtb_steps: int, mace_steps: int) -> dict:
    """Atom-steps/s of Langevin MD on a water box of ``box_atoms`` atoms (``bench_classical.time_ours``)."""
    from bench_classical import time_ours

    from aiida_mlff.core.analytic import water_box

    note = ''
    if hasattr(pot, 'baseline'):  # GFN2-xTB of the whole box at every step: minutes per step for 768 atoms
        steps, equilibration = min(steps, xtb_steps), 0
        note = (
            f'GFN2-xTB on {box_atoms} atoms: timed on {steps} step(s) without equilibration; the timed call '
            f'includes its set-up force evaluation ({steps + 1} evaluations), so the rate is a lower bound'
        )
    elif getattr(pot, 'architecture', '') == 'mace':  # seconds per step on hundreds of atoms on a CPU
        steps, equilibration = min(steps, mace_steps), min(equilibration, max(1, mace_steps // 5))
        note = f'MACE: timed on {steps} steps after {equilibration}'
    box = water_box(box_atoms // 3)
    timing = time_ours(pot, box, steps, equilibration)
    rate = timing['rate']
    if rate is None:  # a model of isolated molecules may not hold a liquid together: the rate of the steps it ran
        rate = timing.get('rate_done')
        stopped = f'replica stopped ({timing["status"]}): {timing["why"]}'
        ran = f'rate over the {timing.get("steps_done")} timed steps run before it stopped' if rate else 'no rate'
        note = '; '.join(filter(None, [note, f'{stopped}; {ran}']))
    return {
        'rate': rate,
        'md_atoms': len(box),
        'md_steps': timing.get('steps', steps),
        'md_wall_s': timing.get('wall_s'),
        'note': note,
    }


def measure(name: str, args: argparse.Namespace) -> dict:
    """Build, train, test and time configuration ``name`` (the body of a child process); one table row."""
    import ase.io
    import torch
    from train_h2o import DATA

    from aiida_mlff.core.training import evaluate_metrics, split_indices

    torch.set_num_threads(args.threads)
    frames = ase.io.read(DATA / 'h2o_pbe_30ry.extxyz', index=':')
    train_idx, test_idx = split_indices(len(frames), TEST_FRACTION, seed=args.seed)
    pot = build_model(name, args.seed)
    row = {'name': name, 'family': family(name), 'parameters': sum(p.numel() for p in pot.parameters())}
    row['cutoff_A'] = float(pot.cutoff)
    print(f'[{name}] {row["parameters"]} parameters, training for {args.budget:g} s', flush=True)
    row.update(fit(pot, [frames[k] for k in train_idx], args.budget, args.seed))
    test = evaluate_metrics(pot, [frames[k] for k in test_idx])
    row['energy_mae'] = test['energy_mae_meV_per_atom']
    row['force_mae'] = test['force_mae_meV_per_A']
    row['n_train'], row['n_test'] = len(train_idx), len(test_idx)
    print(f'[{name}] trained {row["train_s"]:.1f} s; force MAE {row["force_mae"]:.1f} meV/Å; timing MD', flush=True)
    print('ROW ' + json.dumps(row), flush=True)  # the errors survive a failure of the MD below
    speed = md_speed(pot, args.box_atoms, args.md_steps, args.equilibration, args.xtb_md_steps, args.mace_md_steps)
    return {**row, **speed}


def run_child(name: str, args: argparse.Namespace) -> dict:
    """Run :func:`measure` for ``name`` in a fresh interpreter; a row with ``error`` when it fails."""
    command = [sys.executable, __file__, '--child', name, *_shared_arguments(args)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ''
        done = subprocess.CompletedProcess(command, -9, stdout, f'timed out after {args.timeout:g} s')
    lines = done.stdout.splitlines()
    for line in lines:
        if not line.startswith('ROW '):
            print(f'  {line}', flush=True)
    rows = [json.loads(line[4:]) for line in lines if line.startswith('ROW ')]
    row = {'name': name, 'family': family(name), **(rows[-1] if rows else {}), 'wall_s': time.perf_counter() - start}
    if done.returncode == 0 and 'rate' in row:
        return row
    tail = [line for line in done.stderr.strip().splitlines() if line.strip()]
    why = tail[-1] if tail else f'exit status {done.returncode}'
    if 'force_mae' not in row:
        return {**row, 'error': why}  # no errors measured: a FAILED row
    return {**row, 'rate': None, 'note': f'MD timing failed: {why}'}


def _shared_arguments(args: argparse.Namespace) -> list[str]:
    """The options a child needs, as command-line arguments."""
    pairs = {
        '--budget': args.budget,
        '--threads': args.threads,
        '--md-steps': args.md_steps,
        '--equilibration': args.equilibration,
        '--box-atoms': args.box_atoms,
        '--xtb-md-steps': args.xtb_md_steps,
        '--mace-md-steps': args.mace_md_steps,
        '--seed': args.seed,
    }
    return [str(item) for pair in pairs.items() for item in pair]


# ------------------------------------------------------------------------------------------- table and targets
def add_relative(rows: list[dict]) -> None:
    """``speed_vs_mace`` (rate / fastest MACE's) and ``error_vs_mace`` (force MAE / best MACE's), in place."""
    mace = [r for r in rows if r['family'] == 'mace' and 'error' not in r]
    fastest = max((r['rate'] for r in mace if r.get('rate')), default=None)
    best = min((r['force_mae'] for r in mace), default=None)
    for row in rows:
        row['speed_vs_mace'] = row['rate'] / fastest if fastest and row.get('rate') else None
        row['error_vs_mace'] = row['force_mae'] / best if best and 'force_mae' in row else None


def _number(value: float | None, spec: str, width: int) -> str:
    return f'{value:{width}{spec}}' if value is not None else f'{"-":>{width}s}'


def print_table(rows: list[dict], box_atoms: int) -> None:
    """One line per configuration, fastest first; failures and notes below."""
    print(f'\nheld-out errors (test {TEST_FRACTION:.0%} of the pw.x water frames) and MD speed ({box_atoms}-atom box)')
    head = (
        f'{"name":12s} {"params":>8s} {"train s":>8s} {"E MAE":>8s} {"F MAE":>8s} {"atom-steps/s":>13s} '
        f'{"speed/MACE":>11s} {"err/MACE":>9s}'
    )
    print(f'{"":12s} {"":>8s} {"":>8s} {"meV/atom":>8s} {"meV/Å":>8s}')
    print(head)
    for row in sorted(rows, key=lambda r: -(r.get('rate') or 0.0)):
        if 'error' in row:
            print(f'{row["name"]:12s} FAILED: {row["error"]}')
            continue
        cells = [
            f'{row["parameters"]:8d}',
            _number(row['train_s'], '.1f', 8),
            _number(row['energy_mae'], '.2f', 8),
            _number(row['force_mae'], '.1f', 8),
            _number(row['rate'], ',.0f', 13) if row['rate'] else f'{"see note":>13s}',
            _number(row['speed_vs_mace'], '.2f', 11),
            _number(row['error_vs_mace'], '.2f', 9),
        ]
        print(f'{row["name"]:12s} {" ".join(cells)}')
    for row in rows:
        if row.get('note'):
            print(f'  note {row["name"]}: {row["note"]}')
        if row.get('baseline_s'):
            print(
                f'  note {row["name"]}: GFN2-xTB of the training frames took {row["baseline_s"]:.1f} s (not in train s)'
            )


def check_targets(rows: list[dict]) -> list[dict]:
    """The two targets of the module docstring: ``name``, ``met`` (None: not measurable) and ``detail``."""
    ok = [r for r in rows if 'error' not in r]
    bp = [r for r in ok if r['family'] == 'bp']
    mace = [r for r in ok if r['family'] == 'mace']
    first = {'name': f'BP within {BP_ERROR_FACTOR}x of MACE force MAE at >= {BP_SPEED_FACTOR:g}x its speed'}
    second = {'name': 'a MACE more accurate (force MAE) than every BP'}
    timed = [r for r in bp if r['speed_vs_mace'] is not None and r['error_vs_mace'] is not None]
    if not timed:
        first.update(met=None, detail='needs a timed BP row and a timed MACE row')
    else:  # the most accurate BP fast enough, else the fastest BP
        fast = [r for r in timed if r['speed_vs_mace'] >= BP_SPEED_FACTOR]
        pick = min(fast, key=lambda r: r['force_mae']) if fast else max(timed, key=lambda r: r['rate'])
        first.update(
            met=bool(fast) and pick['error_vs_mace'] <= BP_ERROR_FACTOR,
            detail=f'{pick["name"]}: {pick["error_vs_mace"]:.2f}x the best MACE force MAE, '
            f'{pick["speed_vs_mace"]:.1f}x the fastest MACE speed',
        )
    if not bp or not mace:
        second.update(met=None, detail='needs a BP row and a MACE row')
    else:
        best_mace, best_bp = min(mace, key=lambda r: r['force_mae']), min(bp, key=lambda r: r['force_mae'])
        second.update(
            met=best_mace['force_mae'] < best_bp['force_mae'],
            detail=f'{best_mace["name"]} {best_mace["force_mae"]:.1f} vs {best_bp["name"]} '
            f'{best_bp["force_mae"]:.1f} meV/Å',
        )
    return [first, second]


def print_targets(targets: list[dict]) -> None:
    """``MET`` / ``NOT MET`` / ``NOT MEASURED`` with the numbers."""
    print('\ntargets')
    for target in targets:
        verdict = {True: 'MET', False: 'NOT MET', None: 'NOT MEASURED'}[target['met']]
        print(f'  {target["name"]}: {verdict} ({target["detail"]})')


def plot(rows: list[dict], path: Path, box_atoms: int) -> None:
    """Force MAE against atom-steps/s (log x) as a PNG at ``path``; a message instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print(f'no plot: matplotlib is not installed ({path} not written)')
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colours = {'bp-chiral': 'tab:blue', 'xtb-delta': 'tab:green', 'mace': 'tab:red'}
    for row in rows:
        if 'error' in row or not row.get('rate'):
            continue
        ax.scatter(row['rate'], row['force_mae'], color=colours.get(CONFIGURATIONS[row['name']]['architecture'], 'k'))
        ax.annotate(row['name'], (row['rate'], row['force_mae']), textcoords='offset points', xytext=(5, 5))
    ax.set_xscale('log')
    ax.set_xlabel(f'MD speed on {box_atoms} atoms [atom-steps/s]')
    ax.set_ylabel('held-out force MAE [meV/Å]')
    ax.set_title('accuracy vs cost, pw.x water (BP blue, BP + xTB green, MACE red)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    print(f'plot written to {path}')


# ------------------------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of the module docstring (and ``--child NAME``, internal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--budget', type=float, default=240.0, help='training wall time per model [s]')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (training and MD)')
    parser.add_argument('--md-steps', type=int, default=100, help='timed MD steps')
    parser.add_argument('--equilibration', type=int, default=20, help='untimed MD steps before the timed ones')
    parser.add_argument('--box-atoms', type=int, default=768, help='atoms of the water box (a multiple of 3)')
    parser.add_argument('--xtb-md-steps', type=int, default=2, help='timed MD steps of the xTB-delta model')
    parser.add_argument(
        '--mace-md-steps', type=int, default=10, help='timed MD steps of MACE (seconds per step on the box)'
    )
    parser.add_argument('--seed', type=int, default=0, help='split, initial weights and training')
    parser.add_argument('--only', nargs='+', choices=sorted(CONFIGURATIONS), default=None, help='these only')
    parser.add_argument('--timeout', type=float, default=3600.0, help='wall time limit per configuration [s]')
    parser.add_argument('--plot', type=Path, default=None, help='write force MAE vs speed as a PNG here')
    parser.add_argument('--json', action='store_true', help='print one RESULT {json} line at the end')
    parser.add_argument('--child', choices=sorted(CONFIGURATIONS), default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def warm_kernels() -> None:
    """Build (or load) the compiled BP kernels once here, so their one-time build is not timed in a child."""
    from aiida_mlff.core.kernels import bp_pairs

    start = time.perf_counter()
    ready = bp_pairs() is not None
    print(
        f'compiled BP kernels {"ready" if ready else "unavailable (torch path)"} in {time.perf_counter() - start:.1f} s'
    )


def main() -> None:
    args = parse_args()
    if args.child:
        print('ROW ' + json.dumps(measure(args.child, args)), flush=True)
        return
    import torch
    from bench_npt import machine

    torch.set_num_threads(args.threads)
    host = machine()
    print(
        f'machine: {host["cpu"]}, {host["cores"]} cores (os.cpu_count), {args.threads} torch threads, '
        f'load average {host["load"]:.2f}; budget {args.budget:g} s per model, MD {args.md_steps} steps after '
        f'{args.equilibration} on {args.box_atoms} atoms',
        flush=True,
    )
    warm_kernels()
    rows = []
    for name in args.only or CONFIGURATIONS:
        rows.append(run_child(name, args))
    add_relative(rows)
    print_table(rows, args.box_atoms)
    targets = check_targets(rows)
    print_targets(targets)
    load = os.getloadavg()[0]
    print(f'load average at the end {load:.2f}')
    if args.plot:
        plot(rows, args.plot, args.box_atoms)
    if args.json:
        result = {'machine': host, 'load_end': load, 'options': vars(args) | {'plot': str(args.plot)}}
        print('RESULT ' + json.dumps({**result, 'rows': rows, 'targets': targets}), flush=True)


if __name__ == '__main__':
    main()
