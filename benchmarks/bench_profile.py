"""Where a Behler-Parrinello MD step spends its time: the torch path against the compiled kernels, side by side.

For each evaluation path (``Potential.kernel``: ``'torch'``, the descriptor's torch sums and hand-written chain rule;
``'compiled'``, the fused C++ kernels of ``aiida_mlff/core/kernels``), runs Langevin MD of a periodic water box and
prints (1) the wall time per step by stage, timed by wrapping the stages (neighbour list, descriptor, networks,
descriptor backward and force assembly, the rest of the MD loop), and (2) the top operators per step from
``torch.profiler`` (self CPU time; the compiled kernels appear as one entry each, ``features`` and ``forces``).

The potential is the stable condensed-phase water model of ``water_model.py`` (the ``train_h2o.py`` configuration),
so no replica stops early. Usage: ``python benchmarks/bench_profile.py [--potential PATH] [--molecules 256]
[--steps 200] [--threads 2] [--top 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiida_mlff.core import kernels, models
from aiida_mlff.core.analytic import water_box
from aiida_mlff.core.md import neighbors as md_neighbors
from aiida_mlff.core.md import simulate

STAGES = {
    'neighbour list (vesin, Verlet rebuilds)': (md_neighbors, 'neighbor_list'),
    'pair layout (sort by centre, on rebuild)': (kernels, 'pair_layout'),
    'descriptor forward, torch': (models.Descriptor, 'accumulate'),
    'descriptor features, torch': (models.Descriptor, 'combine'),
    'descriptor backward, torch': (models.Descriptor, 'combine_backward'),
    'pair gradients, torch': (models.Descriptor, 'pair_gradients'),
    'networks, autograd (torch path)': (models.Potential, 'member_energies'),
    'force assembly and stress': (models.Potential, '_forces_and_stress'),
}


@contextlib.contextmanager
def stage_timers(totals: dict[str, float]):
    """Wrap the functions of :data:`STAGES` (and the compiled kernels) so that their wall time adds up in ``totals``."""
    saved = []

    def wrap(owner, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - start

        saved.append((owner, name, original))
        setattr(owner, name, timed)

    for label, (owner, name) in STAGES.items():
        wrap(owner, name, label)
    module = kernels.bp_pairs()
    if module is not None:
        proxy = _KernelProxy(module, totals)
        saved.append((kernels, 'bp_pairs', kernels.bp_pairs))
        kernels.bp_pairs = lambda: proxy
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


class _KernelProxy:
    """The compiled module with each kernel timed."""

    labels: ClassVar[dict[str, str]] = {
        'features': 'descriptor features, compiled',
        'networks': 'networks and their backward, compiled',
        'forces': 'descriptor backward and forces, compiled',
    }

    def __init__(self, module, totals: dict[str, float]) -> None:
        self._module, self._totals = module, totals

    def __getattr__(self, name: str):
        function = getattr(self._module, name)
        label = self.labels.get(name)
        if label is None:  # timed as part of a wrapped stage
            return function

        def timed(*args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                self._totals[label] += time.perf_counter() - start

        return timed


def run_md(pot, box, steps: int, seed: int = 0):
    """Langevin MD at 300 K with 0.5 fs steps; returns the result (status must be ok)."""
    options = dict(ensemble='langevin', timestep=0.5, temperature=300.0, stride=steps, seed=seed)
    return simulate(pot, box, steps=steps, **options)


def stage_table(pot, box, steps: int) -> tuple[dict[str, float], float]:
    """Milliseconds per step by stage, and the wall time per step [ms]."""
    totals: dict[str, float] = defaultdict(float)
    with stage_timers(totals):
        start = time.perf_counter()
        result = run_md(pot, box, steps)
        wall = time.perf_counter() - start
    if result.status != ['ok']:
        raise RuntimeError(f'MD stopped ({result.status}): the timing would mean nothing')
    per_step = {k: 1000.0 * v / steps for k, v in totals.items()}
    per_step['rest of the MD loop (integrator, checks, recording)'] = 1000.0 * wall / steps - sum(per_step.values())
    return per_step, 1000.0 * wall / steps


@contextlib.contextmanager
def _labelled_kernels():
    """Show each call of a compiled kernel in the profiler as ``kernels::<name>`` (they are not torch operators)."""
    module = kernels.bp_pairs()
    if module is None:
        yield
        return

    class Labelled:
        def __getattr__(self, name: str):
            function = getattr(module, name)

            def call(*args):
                with torch.profiler.record_function(f'kernels::{name}'):
                    return function(*args)

            return call

    original, labelled = kernels.bp_pairs, Labelled()
    kernels.bp_pairs = lambda: labelled
    try:
        yield
    finally:
        kernels.bp_pairs = original


def operator_table(pot, box, steps: int, top: int) -> list[tuple[str, float, float]]:
    """Top operators by self CPU time: (name, ms per step, calls per step)."""
    from torch.profiler import ProfilerActivity, profile

    with _labelled_kernels(), profile(activities=[ProfilerActivity.CPU]) as prof:
        run_md(pot, box, steps)
    rows = [(e.key, e.self_cpu_time_total / 1000.0 / steps, e.count / steps) for e in prof.key_averages()]
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--potential', type=Path, default=None, help='potential file (default: water_model.py)')
    parser.add_argument('--molecules', type=int, default=256)
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--top', type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from water_model import stable_water_potential

    pot = stable_water_potential(args.potential) if args.potential else stable_water_potential()
    box = water_box(args.molecules)
    print(f'{len(box)} atoms, {args.steps} steps of Langevin MD, {args.threads} threads, torch {torch.__version__}')
    for kernel in ('torch', 'compiled'):
        pot.kernel = kernel
        run_md(pot, box, 20)  # warm-up (and the one-off build of the compiled kernels)
        stages, wall = stage_table(pot, box, args.steps)
        print(f'\n== kernel={kernel}: {wall:.2f} ms per step, {len(box) * 1000.0 / wall:,.0f} atom-steps/s')
        for label, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
            if ms > 0.005:
                print(f'  {label:55s} {ms:8.3f} ms  {100 * ms / wall:5.1f} %')
        print(f'  top {args.top} operators (torch.profiler, self CPU per step):')
        for name, ms, calls in operator_table(pot, box, max(20, args.steps // 4), args.top):
            print(f'    {name:50s} {ms:8.3f} ms  {calls:6.1f} calls')


if __name__ == '__main__':
    main()
