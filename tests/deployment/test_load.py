"""A small load test: many tiny jobs submitted at once through the daemon, Slurm and SSH."""

from __future__ import annotations

import time

import pytest

from .conftest import wait_for

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

N_JOBS = 50


@pytest.fixture(scope='module')
def add_code(aiida_profile):
    """``add@slurm-localhost`` (``core.arithmetic.add`` with bash), created where missing."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        return orm.load_code('add@slurm-localhost')
    except NotExistent:
        return orm.InstalledCode(
            label='add',
            computer=orm.load_computer('slurm-localhost'),
            filepath_executable='/bin/bash',
            default_calc_job_plugin='core.arithmetic.add',
            description='bash for core.arithmetic.add (aiida-mlff deployment load test)',
        ).store()


def test_many_jobs_through_slurm(daemon, add_code):
    """50 ``core.arithmetic.add`` jobs submitted at once all finish under Slurm (2 CPUs: they queue); print jobs/min."""
    from aiida import orm
    from aiida.engine import submit
    from aiida.plugins import CalculationFactory

    add = CalculationFactory('core.arithmetic.add')
    started = time.monotonic()
    nodes = []
    for i in range(N_JOBS):
        builder = add.get_builder()
        builder.code = add_code
        builder.x = orm.Int(i)
        builder.y = orm.Int(1)
        builder.metadata.options.resources = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        builder.metadata.options.max_wallclock_seconds = 600
        nodes.append(submit(builder))
    submitted = time.monotonic() - started
    deadline = 900
    for node in nodes:
        wait_for(node, timeout=max(1.0, deadline - (time.monotonic() - started)), poll=0.5)
    seconds = time.monotonic() - started
    print(
        f'\n{N_JOBS} core.arithmetic.add jobs through daemon (1 worker) + SSH + Slurm: submitted in {submitted:.1f} s, '
        f'all done in {seconds:.1f} s = {N_JOBS / seconds * 60:.1f} jobs/min'
    )
    assert all(node.is_finished_ok for node in nodes)
    assert [node.outputs.sum.value for node in nodes] == [i + 1 for i in range(N_JOBS)]
    assert all(node.get_job_id() for node in nodes)
    assert len({node.get_job_id() for node in nodes}) == N_JOBS  # one Slurm job each, none run twice
    assert all(node.computer.label == 'slurm-localhost' for node in nodes)
