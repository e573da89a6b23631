"""Time a campaign end to end on this machine and print its key numbers against the targets.

Run after `bash scripts/setup`:
``.venv/bin/python benchmarks/bench_campaign.py [campaign.yaml] [--minutes N] [--seeds N] [--json PATH]``.

One run (no ``--seeds``): targets: the demo (examples/h2o2-torsion.yaml) in at most 20 minutes on 2 CPU cores, the
malonaldehyde proton transfer (examples/malonaldehyde-proton-transfer.yaml) in at most 40 (``--minutes``); the
potential relaxed at fixed CV values within 0.5 kcal/mol of the pw.x single points there. Every state and every
transition of the PMF is printed by name, and the campaign's report is written and checked. A campaign that compares
itself with another (``reference.compare_with``, e.g. examples/h2o2-torsion-in-water.yaml against the gas-phase demo,
which must have run in the same profile first) also prints each shared barrier beside the other campaign's and the
difference with its error.

``--seeds N``: the campaign runs N times, one after another (never in parallel), with the active-learning seed (which
seeds the committee training and the exploration) set to file_seed + k for k = 0..N-1 (file_seed: the file's
``active_learning.seed``, 0 when it sets none; it is also set on the builder, since the active-learning protocol
builder does not pass it on); nothing else in the file changes. The core count and the load
average at start and end are printed, since other work on the machine slows the runs down. One row per seed: wall
time, exit status, convergence verdict and reason, pw.x labels used, every named transition's forward and backward
barrier with its error, and the relaxed-scan error; a failed run keeps its row, with '-' where outputs are missing.
Targets, over the seeds: for every transition and direction, max - min of the barrier <= 0.5 kcal/mol; the relaxed
scan within 0.5 kcal/mol of pw.x for every seed; every run within ``--minutes``; every run finished ok. No report
is written in this mode. ``--json PATH`` also writes the tables as JSON (in either mode). ``--set KEY=YAML``
(repeatable) changes one field of the file first, e.g. the model:
``--set "training.model={architecture: xtb-delta, correction: {...}}"``. Exit status 0 only when
every target is met and every run finished ok.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_CAMPAIGN = 'examples/h2o2-torsion.yaml'
SPREAD_TARGET_KCAL_MOL = 0.5  # max - min of a barrier over the seeds
SCAN_TARGET_KCAL_MOL = 0.5  # relaxed scan: max |MLFF - pw.x| for every seed
DIRECTIONS = ('forward', 'backward')


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line: the campaign file, the wall-time limit, the number of seeds and the JSON path."""
    parser = argparse.ArgumentParser(
        description='Time a campaign end to end and print its key numbers against the targets (see the module '
        'docstring). With --seeds N the campaign runs N times, one after another, with seeds file_seed + 0..N-1.'
    )
    parser.add_argument(
        'campaign', nargs='?', default=DEFAULT_CAMPAIGN, help=f'campaign YAML (default: {DEFAULT_CAMPAIGN})'
    )
    parser.add_argument('--minutes', type=float, default=20.0, help='wall-time target per run, minutes (default: 20)')
    parser.add_argument('--seeds', type=int, default=None, help='run the campaign this many times, one seed each')
    parser.add_argument('--json', type=Path, default=None, metavar='PATH', help='also write the tables as JSON here')
    parser.add_argument(
        '--set',
        action='append',
        default=[],
        metavar='KEY=YAML',
        help='change one field of the file, e.g. --set "training.model={architecture: xtb-delta}" (repeatable)',
    )
    args = parser.parse_args(argv)
    for item in args.set:
        if '=' not in item or not item.split('=', 1)[0]:
            parser.error(f'--set needs KEY=VALUE, got {item!r}')
    if args.seeds is not None and args.seeds < 1:
        parser.error('--seeds needs at least 1')
    return args


def main(*argv: str) -> int:
    """Run the campaign once (the report is checked too) or, with ``--seeds N``, N times; 0 when all targets are met."""
    args = parse_args(list(argv))
    from aiida_mlff.environment import load_mlff_profile

    load_mlff_profile()
    config = load_with_changes(args.campaign, args.set)
    if args.seeds is None:
        return run_once(args.campaign, args.minutes, args.json, config)
    return run_seeds(args.campaign, args.seeds, args.minutes, args.json, config)


def load_with_changes(path: str, changes: list[str]) -> dict:
    """The validated campaign of ``path`` with ``KEY=YAML`` changes (dotted keys) applied to the file's mapping.

    The changed file is written next to the original for the validation (so that relative paths hold) and removed.
    """
    import yaml

    from aiida_mlff.workflows.campaign.config import load_campaign

    if not changes:
        return load_campaign(path)
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for change in changes:
        key, value = change.split('=', 1)
        *parents, last = key.split('.')
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
        print(f'changed: {key} = {node[last]!r}')
    changed = Path(path).with_name(f'.{Path(path).stem}-changed-{os.getpid()}.yaml')
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        return load_campaign(changed)
    finally:
        changed.unlink()


def run_once(path: str, limit: float, json_path: Path | None = None, config: dict | None = None) -> int:
    """One campaign (``config``, default: the file as it is): its numbers, its report and the targets, one table."""
    from aiida.engine import run_get_node

    from aiida_mlff.workflows.campaign.base import CampaignWorkChain
    from aiida_mlff.workflows.campaign.config import load_campaign

    config = config if config is not None else load_campaign(path)
    builder = CampaignWorkChain.get_builder_from_config('pw@localhost', 'mlff-run@localhost', config)
    start = time.perf_counter()
    _, node = run_get_node(builder)
    minutes = (time.perf_counter() - start) / 60
    rows = [('campaign wall time', f'{minutes:.1f} min', f'<= {limit:g} min', minutes <= limit)]
    out = node.outputs
    if 'scan' in out:
        diff = out.scan.base.attributes.get('max_abs_difference_kcal_mol')
        rows.append(('relaxed scan: max |MLFF - pw.x|', f'{diff:.2f} kcal/mol', '<= 0.5 kcal/mol', diff <= 0.5))
    if 'barriers' in out:
        rows += _barrier_rows(out.barriers.get_dict())
    if 'comparison' in out:
        rows += _comparison_rows(out.comparison.get_dict())
    if 'history' in out:
        h = out.history.get_dict()
        rows.append(('active-learning iterations', str(len(h['iterations'])), '-', None))
        rows.append(('pw.x labels in the final dataset', str(out.dataset.n_structures), '-', None))
    rows += _report_rows(node)
    print(f'\nCampaign {node.process_label}<{node.pk}>: exit status {node.exit_status}')
    print(f'{"quantity":<52} {"measured":>30} {"target":>16}  met')
    for name, value, target, met in rows:
        print(f'{name:<52} {value:>30} {target:>16}  {"" if met is None else "yes" if met else "NO"}')
    if json_path is not None:
        keys = ('quantity', 'measured', 'target', 'met')
        _write_json(
            json_path,
            {
                'campaign': path,
                'pk': node.pk,
                'exit_status': node.exit_status,
                'rows': [dict(zip(keys, row, strict=True)) for row in rows],
            },
        )
    return 0 if node.is_finished_ok else 1


def _barrier_rows(barriers: dict) -> list[tuple]:
    """Rows for every state and every transition of the barriers output, by name."""
    unit = barriers.get('unit', '')
    rows = []
    for name, state in barriers.get('states', {}).items():
        rows.append(
            (f'state {name} (min at {state["minimum"]:.2f} {unit})', f'{state["kcal_mol"]:.2f} kcal/mol', '-', None)
        )
    experiment = barriers.get('experiment_kcal_mol', {})
    for name, t in barriers.get('transitions', {}).items():
        label = f'{name} ({t["from"]} -> {t["to"]}, exp. {experiment.get(name, "-")})'
        forward = _pm(t['forward_kcal_mol'], t['forward_error_kcal_mol'])
        backward = _pm(t['backward_kcal_mol'], t['backward_error_kcal_mol'])
        rows.append((label, f'{forward} / {backward} kcal/mol', 'fwd / bwd', None))
    return rows


def _pm(value: float | None, error: float | None) -> str:
    """``'1.23 +- 0.04'``; '-' for an unknown value or error."""
    return f'{_num(value)} +- {_num(error)}'


def _num(value: float | None) -> str:
    return '-' if value is None else f'{value:.2f}'


def _comparison_rows(comparison: dict) -> list[tuple]:
    """Rows of the campaign's barriers against the campaign it compares with (``reference.compare_with``)."""
    label = comparison.get('label', 'reference')
    rows = []
    for name, entry in comparison.get('transitions', {}).items():
        for direction, d in entry.items():
            measured = f'{_pm(d["value"], d["error"])} vs {_pm(d["reference"], d["reference_error"])}'
            rows.append((f'{name} {direction}: this vs {label}', measured, 'kcal/mol', None))
            rows.append((f'{name} {direction}: this - {label}', _pm(d['difference'], d['difference_error']), '-', None))
    for where in ('only_here', 'only_there'):
        if comparison.get(where):
            rows.append((f'not compared ({where})', ', '.join(comparison[where]), '-', None))
    return rows


def _report_rows(node) -> list[tuple]:
    """Write the campaign's report; check that every figure is drawn and that the page opens in headless Chromium."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from aiida_mlff.report import write_campaign_report
    from tests.aiida.test_report import CHROMIUM, open_in_chromium, pixel_variance

    directory = root / 'runs' / f'bench-campaign-{node.pk}'
    paths = write_campaign_report(node, directory)
    blank = [p.name for p in sorted(directory.glob('*.png')) if pixel_variance(p) <= 1e-3]
    n_png = len(list(directory.glob('*.png')))
    rows = [('report figures drawn (non-blank)', f'{n_png - len(blank)} of {n_png}', 'all', not blank)]
    if CHROMIUM is None:
        rows.append(('report in headless Chromium', 'chromium not installed', 'no errors', None))
    else:
        problems = open_in_chromium(paths['html'], directory / 'screenshot.png')
        rows.append(('report in headless Chromium', f'{len(problems)} errors', 'no errors', not problems))
    print(f'report written to {directory}')
    return rows


# ---------------------------------------------------------------------------------------------- several seeds
def run_seeds(path: str, n_seeds: int, limit: float, json_path: Path | None = None, config: dict | None = None) -> int:
    """Run the campaign once per seed, one run after another, then print the per-seed and the summary tables."""
    from aiida_mlff.workflows.campaign.config import load_campaign

    config = config if config is not None else load_campaign(path)
    first = int(config['active_learning'].get('seed', 0))
    seeds = [first + k for k in range(n_seeds)]
    machine = {'cpu_count': os.cpu_count(), 'loadavg_start': list(os.getloadavg())}
    print(
        f'Running {path} {n_seeds} times sequentially (one run after another, never in parallel) with active-learning '
        f'seeds {seeds[0]}..{seeds[-1]} on {machine["cpu_count"]} CPU cores; '
        f'load average at start {_loadavg(machine["loadavg_start"])}',
        flush=True,
    )
    records = [_run_seed(_seeded_config(config, seed), seed) for seed in seeds]
    machine['loadavg_end'] = list(os.getloadavg())
    print(f'\nAll {n_seeds} runs done (sequentially); load average at end {_loadavg(machine["loadavg_end"])}')
    names = _transition_names(config, records)
    _print_seed_table(records, names)
    summary = _summary_rows(records, names, limit)
    all_met = all(row['met'] for row in summary)
    _print_summary(summary)
    print(f'\nAll targets met and every run finished ok: {"yes" if all_met else "NO"}')
    if json_path is not None:
        payload = {'campaign': path, 'sequential': True, **machine, 'minutes_limit': limit, 'transitions': names}
        _write_json(json_path, {**payload, 'runs': records, 'summary': summary, 'all_met': all_met})
    return 0 if all_met else 1


def _seeded_config(config: dict, seed: int) -> dict:
    """A copy of the campaign with only the active-learning seed changed."""
    seeded = copy.deepcopy(config)
    seeded['active_learning']['seed'] = seed
    return seeded


def _loadavg(values: list[float]) -> str:
    """The 1, 5 and 15 minute load averages as one string."""
    return ' / '.join(f'{v:.2f}' for v in values) + ' (1 / 5 / 15 min)'


def _run_seed(config: dict, seed: int) -> dict[str, Any]:
    """Run one campaign and return its row; a run that raises keeps its row, with the error and its node if any."""
    from aiida.engine import run_get_node
    from aiida.engine.utils import instantiate_process, loop_scope
    from aiida.manage import get_manager

    print(f'\nseed {seed}: starting', flush=True)
    start = time.perf_counter()
    process, error = None, None
    try:
        builder = _seeded_builder(config)
        # instantiated here, not by run_get_node, so that the node stays at hand when the run raises
        runner = get_manager().create_runner(communicator=None)
        with loop_scope(runner.loop):  # as aiida's Runner._run does
            process = instantiate_process(runner, builder)
        run_get_node(process)
    except Exception as exception:  # a failed run is reported in its row, never hidden
        error = f'{type(exception).__name__}: {exception}'
    minutes = (time.perf_counter() - start) / 60
    record = _record(process.node if process is not None else None, seed, minutes, error)
    print(f'seed {seed}: {minutes:.1f} min, exit status {record["exit_status"]}, {record["state"]}', flush=True)
    return record


def _seeded_builder(config: dict) -> Any:
    """The campaign's builder, with the active-learning seed on it even where ``get_builder_from_config`` drops it."""
    from aiida import orm

    from aiida_mlff.workflows.campaign.base import CampaignWorkChain

    builder = CampaignWorkChain.get_builder_from_config('pw@localhost', 'mlff-run@localhost', config)
    seed = config['active_learning']['seed']
    given = builder.active_learning.get('seed')
    if given is None or given.value != seed:
        # ActiveLearningWorkChain.get_builder_from_protocol does not pass `seed` on (the port default, 0, would be used)
        print(
            f'  note: the builder had active_learning.seed {"unset" if given is None else given.value}; set to {seed}'
        )
        builder.active_learning.seed = orm.Int(seed)
    return builder


def _record(node: Any, seed: int, minutes: float, error: str | None) -> dict[str, Any]:
    """The numbers of one run; None wherever an output is missing."""
    record: dict[str, Any] = {'seed': seed, 'minutes': minutes, 'pk': None, 'exit_status': None, 'state': 'not started'}
    record.update({'finished_ok': False, 'converged': None, 'reason': None, 'labels_used': None})
    record.update({'transitions': {}, 'scan_error_kcal_mol': None, 'error': error})
    if node is None:
        return record
    record.update(pk=node.pk, exit_status=node.exit_status, finished_ok=node.is_finished_ok)
    record['state'] = node.process_state.value if node.process_state is not None else 'unknown'
    out = node.outputs
    convergence = out.convergence.get_dict() if 'convergence' in out else {}
    record['converged'] = convergence.get('converged')
    record['reason'] = convergence.get('reason')
    record['labels_used'] = convergence.get('labels_used')
    if record['labels_used'] is None and 'dataset' in out:
        record['labels_used'] = out.dataset.n_structures
    if 'barriers' in out:
        record['transitions'] = _transition_values(out.barriers.get_dict())
    if 'scan' in out:
        record['scan_error_kcal_mol'] = _number(out.scan.base.attributes.get('max_abs_difference_kcal_mol'))
    return record


def _transition_values(barriers: dict) -> dict[str, dict[str, float | None]]:
    """Forward and backward barrier and error (kcal/mol) of every transition in the barriers output."""
    values = {}
    for name, t in barriers.get('transitions', {}).items():
        values[name] = {
            f'{d}{suffix}': _number(t.get(f'{d}{suffix}'))
            for d in DIRECTIONS
            for suffix in ('_kcal_mol', '_error_kcal_mol')
        }
    return values


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _transition_names(config: dict, records: list[dict]) -> list[str]:
    """The transitions the file names, then any other that a run reported, in order of appearance."""
    names = list(config.get('transitions') or {})
    for record in records:
        names += [name for name in record['transitions'] if name not in names]
    return names


def _cell(value: Any, digits: int = 2) -> str:
    """A table cell: '-' for missing, floats to ``digits`` decimals, booleans as yes/no."""
    if value is None:
        return '-'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def _barrier_cell(values: dict | None, direction: str) -> str:
    """'barrier +- error' of one direction, '-' where missing."""
    if not values or values.get(f'{direction}_kcal_mol') is None:
        return '-'
    return f'{values[f"{direction}_kcal_mol"]:.2f} +- {_cell(values.get(f"{direction}_error_kcal_mol"))}'


def _print_seed_table(records: list[dict], names: list[str]) -> None:
    """One row per seed; barriers and scan error in kcal/mol; the convergence reason and any error last."""
    header = ['seed', 'wall min', 'exit', 'state', 'converged', 'labels']
    header += [f'{name} {d[0]}wd' for name in names for d in DIRECTIONS] + ['scan err', 'reason / error']
    rows = []
    for r in records:
        row = [str(r['seed']), _cell(r['minutes'], 1), _cell(r['exit_status']), r['state'], _cell(r['converged'])]
        row += [_cell(r['labels_used'])]
        row += [_barrier_cell(r['transitions'].get(name), d) for name in names for d in DIRECTIONS]
        notes = [note for note in (r['reason'], r['error']) if note]
        rows.append([*row, _cell(r['scan_error_kcal_mol']), '; '.join(notes) or '-'])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header) - 1)]
    print('\nPer seed (barriers: forward / backward, kcal/mol, +- the error; scan err: max |MLFF - pw.x|, kcal/mol)')
    for line in [header, *rows]:
        print('  '.join(cell.rjust(width) for cell, width in zip(line[:-1], widths, strict=True)) + '  ' + line[-1])


def _summary_rows(records: list[dict], names: list[str], limit: float) -> list[dict[str, Any]]:
    """The targets over the seeds: barrier spreads, largest scan error, wall time and runs finished ok."""
    n = len(records)
    rows = [_spread_row(records, name, d) for name in names for d in DIRECTIONS]
    scans = [r['scan_error_kcal_mol'] for r in records if r['scan_error_kcal_mol'] is not None]
    worst = max(scans) if scans else None
    rows.append(
        {
            'quantity': 'relaxed scan: largest max |MLFF - pw.x|',
            'value': worst,
            'measured': f'{_cell(worst)} kcal/mol ({len(scans)} of {n} seeds)',
            'target': f'<= {SCAN_TARGET_KCAL_MOL:g} kcal/mol, every seed',
            'met': len(scans) == n and worst <= SCAN_TARGET_KCAL_MOL,
        }
    )
    slowest = max(r['minutes'] for r in records)
    rows.append(
        {
            'quantity': 'largest wall time of one run',
            'value': slowest,
            'measured': f'{slowest:.1f} min',
            'target': f'<= {limit:g} min',
            'met': slowest <= limit,
        }
    )
    ok = sum(r['finished_ok'] for r in records)
    rows.append(
        {'quantity': 'runs finished ok', 'value': ok, 'measured': f'{ok} of {n}', 'target': 'all', 'met': ok == n}
    )
    return rows


def _spread_row(records: list[dict], name: str, direction: str) -> dict[str, Any]:
    """max - min of one transition's barrier in one direction over the seeds; met only when every seed has it."""
    key = f'{direction}_kcal_mol'
    values = [r['transitions'][name][key] for r in records if (r['transitions'].get(name) or {}).get(key) is not None]
    spread = max(values) - min(values) if values else None
    seen = f'{len(values)} of {len(records)} seeds'
    measured = f'{spread:.2f} kcal/mol ({min(values):.2f} .. {max(values):.2f}, {seen})' if values else f'- ({seen})'
    return {
        'quantity': f'{name} {direction} barrier: spread (max - min)',
        'value': spread,
        'measured': measured,
        'target': f'<= {SPREAD_TARGET_KCAL_MOL:g} kcal/mol',
        'met': len(values) == len(records) and spread <= SPREAD_TARGET_KCAL_MOL,
    }


def _print_summary(rows: list[dict]) -> None:
    """The summary table against the targets, 'yes'/'NO' per row."""
    print(f'\nSummary over the seeds\n{"quantity":<46} {"measured":>44} {"target":>30}  met')
    for row in rows:
        print(f'{row["quantity"]:<46} {row["measured"]:>44} {row["target"]:>30}  {"yes" if row["met"] else "NO"}')


def _write_json(path: Path, payload: dict) -> None:
    """Write the tables as JSON (parent folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + '\n')
    print(f'tables written to {path}')


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
