"""Time a campaign end to end on this machine and print its key numbers against the targets.

Run after `bash scripts/setup`: ``.venv/bin/python benchmarks/bench_campaign.py [campaign.yaml] [--minutes N]``.
Targets: the demo (examples/h2o2-torsion.yaml) in at most 20 minutes on 2 CPU cores, the malonaldehyde proton
transfer (examples/malonaldehyde-proton-transfer.yaml) in at most 40; the potential relaxed at fixed CV values within
0.5 kcal/mol of the pw.x single points there. Every state and every transition of the PMF is printed by name.
"""

from __future__ import annotations

import sys
import time


def main(path: str = 'examples/h2o2-torsion.yaml', *args: str) -> int:
    from aiida.engine import run_get_node

    from aiida_mlff.environment import load_mlff_profile

    load_mlff_profile()
    from aiida_mlff.workflows.campaign.base import CampaignWorkChain
    from aiida_mlff.workflows.campaign.config import load_campaign

    builder = CampaignWorkChain.get_builder_from_config('pw@localhost', 'mlff-run@localhost', load_campaign(path))
    start = time.perf_counter()
    _, node = run_get_node(builder)
    minutes = (time.perf_counter() - start) / 60
    limit = float(args[args.index('--minutes') + 1]) if '--minutes' in args else 20.0
    rows = [('campaign wall time', f'{minutes:.1f} min', f'<= {limit:g} min', minutes <= limit)]
    out = node.outputs
    if 'scan' in out:
        diff = out.scan.base.attributes.get('max_abs_difference_kcal_mol')
        rows.append(('relaxed scan: max |MLFF - pw.x|', f'{diff:.2f} kcal/mol', '<= 0.5 kcal/mol', diff <= 0.5))
    if 'barriers' in out:
        rows += _barrier_rows(out.barriers.get_dict())
    if 'history' in out:
        h = out.history.get_dict()
        rows.append(('active-learning iterations', str(len(h['iterations'])), '-', None))
        rows.append(('pw.x labels in the final dataset', str(out.dataset.n_structures), '-', None))
    rows += _report_rows(node)
    print(f'\nCampaign {node.process_label}<{node.pk}>: exit status {node.exit_status}')
    print(f'{"quantity":<52} {"measured":>30} {"target":>16}  met')
    for name, value, target, met in rows:
        print(f'{name:<52} {value:>30} {target:>16}  {"" if met is None else "yes" if met else "NO"}')
    return 0 if node.is_finished_ok else 1


def _barrier_rows(barriers: dict) -> list[tuple]:
    unit = barriers.get('unit', '')
    rows = []
    for name, state in barriers.get('states', {}).items():
        rows.append(
            (f'state {name} (min at {state["minimum"]:.2f} {unit})', f'{state["kcal_mol"]:.2f} kcal/mol', '-', None)
        )
    experiment = barriers.get('experiment_kcal_mol', {})
    for name, t in barriers.get('transitions', {}).items():
        label = f'{name} ({t["from"]} -> {t["to"]}, exp. {experiment.get(name, "-")})'
        forward = f'{t["forward_kcal_mol"]:.2f} +- {t["forward_error_kcal_mol"]:.2f}'
        backward = f'{t["backward_kcal_mol"]:.2f} +- {t["backward_error_kcal_mol"]:.2f}'
        rows.append((label, f'{forward} / {backward} kcal/mol', 'fwd / bwd', None))
    return rows


def _report_rows(node) -> list[tuple]:
    """Write the campaign's report; check that every figure is drawn and that the page opens in headless Chromium."""
    from pathlib import Path

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


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
