"""Umbrella, REUS and metadynamics on a campaign's final potential: their free-energy profiles side by side.

Run after a campaign (``aiida-mlff campaign run examples/h2o2-torsion.yaml``):
``.venv/bin/python benchmarks/bench_methods.py [--campaign PK] [--json FILE]`` (default: the newest converged
campaign). With the campaign's answer potential, structure and CV, and its umbrella options, it runs

- a reference umbrella sampling (``mlff.umbrella``) with ``--reference-factor`` times the campaign's production,
- replica-exchange umbrella sampling (the same windows, ``exchange: {every: 100}``, the campaign's production),
- well-tempered metadynamics (``mlff.metadynamics``, 8 walkers, ``--metad-steps`` steps each, default options),

all through the work chains and ``mlff-run`` on this profile, one after another. Each profile is compared with the
reference over every bin of the whole CV range where both are finite (offset removed: their mean difference), and
the table gives the largest and the RMS difference in kcal/mol and each method's wall time and MD steps.
Target: every method within 0.2 kcal/mol of the reference over the whole range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

TARGET_KCAL = 0.2
EV_TO_KCAL_MOL = 23.060547830619


def _campaign(pk: int | None):
    from bench_estimators import newest_campaign  # benchmarks/ is on the path of a script run from it

    return newest_campaign(
        pk,
        lambda node: node.is_finished_ok and 'potential' in node.outputs,
        'no converged campaign in this profile: run one first',
    )


def _profile(node) -> tuple[np.ndarray, np.ndarray]:
    pmf = node.outputs.pmf
    y = {name: values for name, values, _ in pmf.get_y()}
    return np.asarray(pmf.get_x()[1]), np.asarray(y['free_energy'], dtype=float) * EV_TO_KCAL_MOL


def _run(builder) -> tuple[object, float]:
    from aiida.engine import run_get_node

    start = time.perf_counter()
    _, node = run_get_node(builder)
    if not node.is_finished_ok:
        raise SystemExit(f'{node.process_label}<{node.pk}> failed: {node.exit_status} {node.exit_message}')
    return node, time.perf_counter() - start


def _builders(campaign, args):
    from aiida_mlff.core.options import UMBRELLA
    from aiida_mlff.workflows.metadynamics.base import MetadynamicsWorkChain
    from aiida_mlff.workflows.umbrella.base import UmbrellaWorkChain

    umbrella_inputs = campaign.inputs.umbrella
    code = umbrella_inputs.code
    potential = campaign.outputs.potential
    structure = campaign.inputs.structure
    cv = campaign.inputs.cv.get_dict()
    given = umbrella_inputs.parameters.get_dict()
    base = UMBRELLA.validate(given)
    umbrella = {**given, 'max_refinements': 0}
    reference = {**umbrella, 'production_steps': args.reference_factor * base['production_steps']}
    reus = {**umbrella, 'exchange': {'every': args.exchange_every}}
    metad = {
        'walkers': args.walkers,
        'steps': args.metad_steps,
        'temperature': base['temperature'],
        'bins': base['bins'],
    }
    metad.update({key: base[key] for key in ('timestep', 'dtype', 'device')})
    common = {'protocol': None, 'options': umbrella_inputs.options.get_dict() if 'options' in umbrella_inputs else None}
    return {
        'umbrella (reference)': UmbrellaWorkChain.get_builder_from_protocol(
            code, potential, structure, cv, overrides=reference, **common
        ),
        'reus': UmbrellaWorkChain.get_builder_from_protocol(code, potential, structure, cv, overrides=reus, **common),
        'metadynamics': MetadynamicsWorkChain.get_builder_from_protocol(
            code, potential, structure, cv, overrides=metad, **common
        ),
    }, base


def _steps(name: str, base: dict, args) -> int:
    windows = base['windows'].get('count') or len(base['windows'].get('centers', []))
    per_window = base['equilibration_steps'] + base['production_steps']
    if name.startswith('umbrella'):
        return windows * (base['equilibration_steps'] + args.reference_factor * base['production_steps'])
    if name == 'reus':
        return windows * per_window
    return args.walkers * args.metad_steps


def compare(grid_ref: np.ndarray, f_ref: np.ndarray, grid: np.ndarray, f: np.ndarray) -> dict:
    """Largest and RMS |F - F_ref| (kcal/mol) over bins where both are finite, after removing the mean difference."""
    if len(grid) != len(grid_ref) or not np.allclose(grid, grid_ref):
        f = np.interp(grid_ref, grid, f)
    both = np.isfinite(f) & np.isfinite(f_ref)
    diff = f[both] - f_ref[both]
    diff = diff - diff.mean()
    return {
        'bins': int(both.sum()),
        'of_bins': len(f_ref),
        'max': float(np.abs(diff).max()),
        'rms': float(np.sqrt(np.mean(diff**2))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--campaign', type=int, default=None, help='PK of a campaign (default: the newest converged)')
    parser.add_argument('--reference-factor', type=int, default=4, help='reference production / campaign production')
    parser.add_argument('--exchange-every', type=int, default=100, help='REUS: steps between exchange attempts')
    parser.add_argument('--walkers', type=int, default=8)
    parser.add_argument('--metad-steps', type=int, default=50000, help='steps per metadynamics walker')
    parser.add_argument('--json', default=None, help='also write the rows to this file')
    args = parser.parse_args()
    from aiida_mlff.environment import load_mlff_profile

    load_mlff_profile()
    campaign = _campaign(args.campaign)
    builders, base = _builders(campaign, args)
    print(
        f'{campaign.process_label}<{campaign.pk}> potential <{campaign.outputs.potential.pk}>; '
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}'
    )
    rows, reference = [], None
    for name, builder in builders.items():
        node, wall = _run(builder)
        grid, f = _profile(node)
        row = {'method': name, 'pk': node.pk, 'wall_s': wall, 'md_steps': _steps(name, base, args)}
        if reference is None:
            reference = (grid, f)
            row.update({'bins': int(np.isfinite(f).sum()), 'of_bins': len(f), 'max': 0.0, 'rms': 0.0})
        else:
            row.update(compare(*reference, grid, f))
        if name == 'reus':
            md = [n for n in node.called_descendants if n.process_label == 'MdCalculation']
            acceptance = [a for a in md[0].outputs.status.get_dict()['exchange']['acceptance'] if a is not None]
            row['acceptance'] = [float(min(acceptance)), float(np.mean(acceptance))]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f'\n{"method":<22} {"PK":>6} {"wall s":>7} {"MD steps":>9} {"bins":>7} {"max kcal":>9} {"rms kcal":>9}')
    ok = True
    for row in rows:
        met = row['max'] <= TARGET_KCAL
        ok &= met
        print(
            f'{row["method"]:<22} {row["pk"]:>6} {row["wall_s"]:>7.0f} {row["md_steps"]:>9} '
            f'{row["bins"]:>3}/{row["of_bins"]:<3} {row["max"]:>9.3f} {row["rms"]:>9.3f}  {"yes" if met else "NO"}'
            + (
                f'  acceptance min {row["acceptance"][0]:.2f} mean {row["acceptance"][1]:.2f}'
                if 'acceptance' in row
                else ''
            )
        )
    print(f'target: max |dF| <= {TARGET_KCAL} kcal/mol over the whole range against the reference umbrella')
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(rows, handle, indent=1)
    return 0 if ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
