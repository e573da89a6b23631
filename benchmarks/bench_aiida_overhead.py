"""AiiDA overhead of an ``mlff.md`` job, and repository bytes per MD frame, on a throw-away SQLite profile.

(a) seconds from launch to finished of a tiny ``mlff.md`` CalcJob (1 H2O, 10 steps) through
    ``aiida.engine.run_get_node`` (in-process runner, no daemon) vs ``mlff-run md`` run directly on a copy of the
    same job files.
(b) repository bytes of the stored trajectory/thermo/deviations ArrayData: the difference between a 1000-step and a
    10-step run at the default stride, per frame, scaled to 100,000 frames (1 H2O per frame).

AIIDA_PATH points at a temporary folder before aiida is imported: no existing profile is touched.
The last line is ``RESULT {json}`` for ``benchmarks/run``. Usage: ``python benchmarks/bench_aiida_overhead.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def stored_bytes(node) -> int:
    """Bytes in the repository of the MD outputs that grow with the number of frames."""
    total = 0
    for link in node.base.links.get_outgoing().all():
        if link.link_label.startswith(('trajectories', 'thermo', 'colvars', 'deviations')):
            repo = link.node.base.repository
            for name in repo.list_object_names():
                total += len(repo.get_object_content(name, mode='rb'))
    return total


def main() -> None:
    tmp = tempfile.mkdtemp(prefix='bench-aiida-')
    os.environ['AIIDA_PATH'] = tmp
    try:
        _main(Path(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tiny_md_job(tmp: Path) -> tuple:
    """``(code, potential, structure)`` of the tiny ``mlff.md`` job of the AiiDA rows, on the loaded profile.

    The ``localhost`` computer and ``mlff-run`` code are created where missing; the potential is a fresh 1-member BP
    model (cutoff 3.5 Å) written to ``tmp``; the structure is one H2O with 5 Å of vacuum.
    """
    from aiida import orm
    from ase.build import molecule

    from aiida_mlff.core.models import Potential
    from aiida_mlff.data.potential import PotentialData
    from aiida_mlff.environment import ensure_computer, ensure_mlff_code

    ensure_computer()
    code, _ = ensure_mlff_code()
    path = tmp / 'pot.pt'
    Potential.build(['H', 'O'], cutoff=3.5, committee=1).save(path)
    potential = PotentialData(file=path).store()
    structure = orm.StructureData(ase=molecule('H2O', vacuum=5.0)).store()
    return code, potential, structure


def _main(tmp: Path) -> None:
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_mlff.calculations.md import MdCalculation
    from aiida_mlff.core.options import MD
    from aiida_mlff.environment import ensure_profile

    ensure_profile('bench-overhead')
    code, potential, structure = tiny_md_job(tmp)

    def launch(steps: int):
        t0 = time.perf_counter()
        _, node = run_get_node(
            MdCalculation,
            code=code,
            potential=potential,
            structures={'s0': structure},
            parameters=orm.Dict({'steps': steps, 'temperature': 300.0}),
        )
        return time.perf_counter() - t0, node

    launch(10)  # warm-up: first launch imports and sets up the runner
    t_aiida, node = launch(10)
    assert node.is_finished_ok, node.exit_status
    workdir = Path(node.outputs.remote_folder.get_remote_path())
    direct = tmp / 'direct'
    shutil.copytree(workdir, direct, ignore=shutil.ignore_patterns('_aiidasubmit.sh', '.aiida', '_scheduler-*'))
    for name in ('summary.json', 'mlff-run.out'):
        (direct / name).unlink(missing_ok=True)
    exe = Path(sys.executable).parent / 'mlff-run'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), 'md', 'job.json'], cwd=direct, capture_output=True, text=True, env=env)
    t_direct = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr

    t_long, node_long = launch(1000)
    assert node_long.is_finished_ok, node_long.exit_status
    stride = MD['stride'].default
    frames_short, frames_long = 10 // stride + 1, 1000 // stride + 1
    per_frame = (stored_bytes(node_long) - stored_bytes(node)) / (frames_long - frames_short)
    print(f'mlff.md, 1 H2O, 10 steps: run_get_node {t_aiida:.2f} s, mlff-run md directly {t_direct:.2f} s')
    print(f'overhead {t_aiida - t_direct:.2f} s ({t_aiida / t_direct:.1f}x)')
    mb = per_frame * 1e5 / 1e6
    print(f'1000-step run {t_long:.2f} s; {per_frame:.0f} bytes/frame -> {mb:.1f} MB per 100k frames')
    result = {
        't_aiida': t_aiida,
        't_direct': t_direct,
        'bytes_per_frame': per_frame,
        'stride': stride,
        'mb_per_100k_frames': per_frame * 1e5 / 1e6,
    }
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
