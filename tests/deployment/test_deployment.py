"""The full deployment: daemon + RabbitMQ + PostgreSQL, pw.x under Slurm over SSH (run with ``MLFF_DEPLOYMENT=1``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import (
    PW_PROCESS_TYPE,
    VERDI,
    h2o_frames,
    label_builder,
    pw_calculations,
    real_environment,
    verdi,
    wait_for,
)

pytestmark = pytest.mark.deployment


@pytest.fixture(scope='module')
def labelled(daemon):
    """A ``mlff.dft.label`` of two H2O geometries submitted through the daemon, finished; ``(frames, node, s)``."""
    from aiida.engine import submit

    frames = h2o_frames(2, seed=11)
    started = time.monotonic()
    node = submit(label_builder(frames))
    wait_for(node, timeout=600)
    return frames, node, time.monotonic() - started


def test_label_through_daemon_and_slurm(labelled):
    """(a) The label work chain finishes; every PwCalculation ran as a Slurm job on ``slurm-localhost`` over SSH."""
    _, node, seconds = labelled
    print(f'label of 2 H2O through daemon + Slurm over SSH: {seconds:.1f} s')
    assert node.is_finished_ok, verdi('process', 'report', str(node.pk), check=False).stdout
    assert node.outputs.dataset.base.attributes.get('n_structures') == 2
    calcs = pw_calculations(node)
    assert len(calcs) == 2
    for calc in calcs:
        assert calc.is_finished_ok
        assert calc.computer.label == 'slurm-localhost'
        assert calc.computer.transport_type == 'core.ssh'
        assert calc.computer.scheduler_type == 'core.slurm'
        job_id = calc.get_job_id()
        assert job_id is not None, f'no Slurm job id on PwCalculation {calc.pk}'
        assert job_id.isdigit()
    assert len({calc.get_job_id() for calc in calcs}) == 2


def test_caching_runs_no_new_pw(labelled):
    """(b) With caching on for pw.x, labelling the same structures again runs no new pw.x."""
    from aiida.engine import run_get_node
    from aiida.manage.caching import enable_caching

    frames, node, _ = labelled
    assert node.is_finished_ok

    def real_runs():
        return sum(1 for calc in pw_calculations() if not calc.base.caching.is_created_from_cache)

    before = real_runs()
    started = time.monotonic()
    with enable_caching(identifier=PW_PROCESS_TYPE):
        _, again = run_get_node(label_builder(frames))
    print(f'label again, from the cache: {time.monotonic() - started:.1f} s')
    assert again.is_finished_ok
    calcs = pw_calculations(again)
    assert len(calcs) == 2
    assert all(calc.base.caching.is_created_from_cache for calc in calcs)
    assert real_runs() == before
    assert again.outputs.dataset.content_hash == node.outputs.dataset.content_hash


def _daemon_pids() -> list[int]:
    """PIDs of the circus daemon of ``mlff-full`` and of all its descendants (the workers)."""
    import psutil
    from aiida.engine.daemon.client import get_daemon_client

    pid = get_daemon_client('mlff-full').get_daemon_pid()
    assert pid is not None, 'the daemon is not running'
    circus = psutil.Process(pid)
    return [pid] + [child.pid for child in circus.children(recursive=True)]


def test_daemon_killed_and_restarted(daemon):
    """(c) SIGKILL of the daemon while a label runs; after a restart it finishes and no PwCalculation ran twice."""
    from aiida.engine import submit
    from aiida.orm import Int

    frames = h2o_frames(3, seed=23)
    builder = label_builder(frames)
    builder.max_concurrent = Int(1)
    node = submit(builder)

    # Kill once one PwCalculation finished and the next one is in Slurm (has a job id), the work chain mid-way.
    deadline = time.monotonic() + 300
    while True:
        calcs = pw_calculations(node)
        done = [c for c in calcs if c.is_finished_ok]
        queued = [c for c in calcs if not c.is_terminated and c.get_job_id() is not None]
        if done and queued:
            break
        assert not node.is_terminated, 'the work chain finished before the daemon could be killed'
        assert time.monotonic() < deadline, 'no PwCalculation reached Slurm within 300 s'
        time.sleep(0.2)
    killed = _daemon_pids()
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    print(f'killed daemon {killed}: {len(done)} PwCalculation(s) done, Slurm job {queued[0].get_job_id()} queued')
    time.sleep(2)
    assert not node.is_terminated
    verdi('daemon', 'start', '1')
    wait_for(node, timeout=600)

    assert node.is_finished_ok, verdi('process', 'report', str(node.pk), check=False).stdout
    assert node.outputs.dataset.base.attributes.get('n_structures') == 3
    calcs = pw_calculations(node)
    finished = [c for c in calcs if c.is_finished_ok]
    structures = [c.inputs.structure.uuid for c in finished]
    assert len(finished) == 3, f'{len(finished)} finished PwCalculations for 3 structures'
    assert len(set(structures)) == 3, 'a structure was computed twice'
    assert len(calcs) == 3, f'{len(calcs)} PwCalculations for 3 structures (a resubmission?)'
    assert len({c.get_job_id() for c in calcs}) == 3


ARCHIVE_IMPORT = r"""
import json, sys
from aiida import load_profile, orm
from aiida.manage.configuration import create_profile, get_config
from aiida.tools.archive import import_archive
config = get_config(create=True)
create_profile(config, name='fresh', email='test@localhost', storage_backend='core.sqlite_dos', storage_config={})
config.store()
load_profile('fresh')
import_archive(sys.argv[1])
dataset = orm.load_node(sys.argv[2])
print(json.dumps({'nodes': orm.QueryBuilder().append(orm.Node).count(), 'hash': dataset.content_hash}))
"""


def test_archive_roundtrip(labelled, tmp_path):
    """(d) ``verdi archive create`` of a finished label imports into a fresh profile: same nodes, same dataset."""
    from aiida.tools.archive.abstract import get_format
    from aiida.tools.graph.graph_traversers import get_nodes_export

    _, node, _ = labelled
    archive = tmp_path / 'label.aiida'
    verdi('archive', 'create', '-N', str(node.pk), '--', str(archive))
    expected = len(get_nodes_export([node.pk])['nodes'])
    with get_format().open(archive, 'r') as reader:
        from aiida import orm

        in_archive = reader.querybuilder().append(orm.Node).count()
    assert in_archive == expected

    env = dict(os.environ, AIIDA_PATH=str(tmp_path / 'fresh-config'))
    result = subprocess.run(
        [sys.executable, '-c', ARCHIVE_IMPORT, str(archive), node.outputs.dataset.uuid],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported['nodes'] == expected
    assert imported['hash'] == node.outputs.dataset.content_hash


def test_setup_full_keeps_what_exists(aiida_profile):
    """``aiida-mlff setup --full`` run again creates nothing, overwrites nothing, leaves the default profile alone."""
    from aiida import orm
    from aiida.manage.configuration import get_config

    default_before = get_config().default_profile_name
    computer = orm.load_computer('slurm-localhost')
    before = (computer.pk, orm.load_code('pw@slurm-localhost').pk, orm.load_code('mlff-run@slurm-localhost').pk)
    result = subprocess.run(
        [str(Path(VERDI).parent / 'aiida-mlff'), '-p', 'mlff-full', 'setup', '--full'],
        capture_output=True,
        text=True,
        env=real_environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'created' not in result.stdout, result.stdout
    assert result.stdout.count('exists, kept') == 5, result.stdout
    after = (computer.pk, orm.load_code('pw@slurm-localhost').pk, orm.load_code('mlff-run@slurm-localhost').pk)
    assert after == before
    assert get_config().default_profile_name == default_before != 'mlff-full'
