"""WHAM against MBAR on a campaign's own umbrella data: the two PMFs, side by side, where F < 5 kT.

Run after a campaign (``aiida-mlff campaign run examples/h2o2-torsion.yaml``):
``.venv/bin/python benchmarks/bench_estimators.py [--campaign PK]`` (default: the newest finished campaign).
Every umbrella round of the campaign is analysed with both estimators on the same pooled production samples, the
same bins and the same period; the table gives the largest |F_WHAM - F_MBAR| in kT over the bins where WHAM's
F < 5 kT (each PMF with its own minimum at 0, no other alignment), and each estimator's time. Target: < 0.1 kT.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

TARGET_KT = 0.1


def newest_campaign(pk: int | None, accept, missing: str):
    """The campaign ``pk``, or the newest campaign of the profile that ``accept(node)`` takes; exit with ``missing``."""
    from aiida import orm

    if pk is not None:
        return orm.load_node(pk)
    qb = orm.QueryBuilder().append(orm.WorkflowNode, filters={'attributes.process_label': 'CampaignWorkChain'}, tag='c')
    qb.order_by({'c': {'ctime': 'desc'}})
    for (node,) in qb.iterall():
        if accept(node):
            return node
    raise SystemExit(missing)


def _campaign(pk: int | None):
    return newest_campaign(
        pk,
        lambda node: node.is_finished and 'rounds' in node.outputs,
        'no finished campaign with umbrella rounds in this profile: run one first',
    )


def _round_data(umbrella) -> tuple[dict, dict]:
    """Pooled production samples of one UmbrellaWorkChain and the settings its WHAM step used."""
    from aiida_mlff.calculations.wham import collect_windows

    settings = umbrella.outputs.pmf.creator.inputs.settings.get_dict()
    runs = {}
    for md in umbrella.called:
        if md.process_label == 'MdBaseWorkChain' and md.is_finished_ok:
            runs[str(md.pk)] = {'colvars': md.outputs.colvars, 'deviations': md.outputs.deviations}
    return collect_windows(settings, runs), settings


def compare(umbrella) -> dict:
    """Both estimators on one umbrella round: the largest difference (kT) where F < 5 kT, and their times (s)."""
    from aiida_mlff.core.mbar import mbar
    from aiida_mlff.core.wham import KB_EV, wham

    data, s = _round_data(umbrella)
    args = (data['samples'], data['centers'], s['kappa'], s['temperature'])
    common = {'bins': s.get('bins', 72), 'period': s.get('period')}
    start = time.perf_counter()
    by_wham = wham(*args, **common)
    wham_s = time.perf_counter() - start
    start = time.perf_counter()
    by_mbar = mbar(*args, **common)
    mbar_s = time.perf_counter() - start
    kt = KB_EV * s['temperature']
    low = np.isfinite(by_wham.free_energy) & np.isfinite(by_mbar.free_energy) & (by_wham.free_energy < 5 * kt)
    difference = np.abs(by_wham.free_energy[low] - by_mbar.free_energy[low]) / kt
    return {
        'windows': len(data['centers']),
        'samples': int(sum(len(x) for x in data['samples'])),
        'bins_compared': int(low.sum()),
        'max_kT': float(difference.max()),
        'rms_kT': float(np.sqrt(np.mean(difference**2))),
        'wham_s': wham_s,
        'mbar_s': mbar_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--campaign', type=int, default=None, help='PK of a campaign (default: the newest)')
    args = parser.parse_args()
    from aiida_mlff.environment import load_mlff_profile

    load_mlff_profile()
    node = _campaign(args.campaign)
    print(
        f'{node.process_label}<{node.pk}> `{node.label}`; {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}'
    )
    print(
        f'{"round":>5} {"windows":>7} {"samples":>8} {"bins":>5} {"max kT":>7} {"rms kT":>7} {"WHAM ms":>8} '
        f'{"MBAR ms":>8}  < {TARGET_KT} kT'
    )
    ok = True
    for key in sorted(k for k in node.outputs.rounds if k.startswith('pmf_')):
        umbrella = node.outputs.rounds[key].creator.inputs.pmf.creator.caller
        row = compare(umbrella)
        met = row['max_kT'] < TARGET_KT
        ok &= met
        print(
            f'{key[4:]:>5} {row["windows"]:>7} {row["samples"]:>8} {row["bins_compared"]:>5} {row["max_kT"]:>7.3f} '
            f'{row["rms_kT"]:>7.3f} {1e3 * row["wham_s"]:>8.1f} {1e3 * row["mbar_s"]:>8.1f}  {"yes" if met else "NO"}'
        )
    return 0 if ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
