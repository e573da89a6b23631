"""Fixtures of the deployment tests: real services, the ``mlff-full`` profile and its daemon.

These tests run only with ``MLFF_DEPLOYMENT=1`` and as root on a Debian machine: they start PostgreSQL, RabbitMQ,
sshd on localhost and a single-node Slurm with ``scripts/services start`` (installing them where missing), use the
profile ``mlff-full`` of ``aiida-mlff setup --full`` (created where missing), start its daemon and stop all of it at
the end. Run them apart from the rest of the suite::

    MLFF_DEPLOYMENT=1 .venv/bin/pytest tests/deployment -m deployment

The AiiDA test fixtures (``aiida_config``, ``aiida_profile``) are overridden here: these tests use the real
configuration folder and the ``mlff-full`` profile instead of a temporary one, because the daemon is a separate
process that must see the same profile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / 'scripts' / 'services'
VERDI = str(Path(sys.executable).parent / 'verdi')
PROFILE = 'mlff-full'
ENABLED = os.environ.get('MLFF_DEPLOYMENT') == '1'
SKIP_REASON = (
    'deployment tests start PostgreSQL, RabbitMQ, sshd and Slurm on this machine: set MLFF_DEPLOYMENT=1 to run them '
    '(as root, on Debian)'
)
#: AIIDA_PATH as it was before ``aiida.tools.pytest_fixtures`` pointed it at a temporary folder.
_AIIDA_PATH = os.environ.get('AIIDA_PATH')


#: aiida-core's PostgreSQL backend warns when builders hold unstored nodes (as protocol builders do): harmless here.
SA_WARNING = 'ignore:Object of type <DbNode> not in session:sqlalchemy.exc.SAWarning'


def pytest_collection_modifyitems(config, items):
    """Skip every test marked ``deployment`` unless ``MLFF_DEPLOYMENT=1``."""
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker('deployment') is None:
            continue
        item.add_marker(pytest.mark.filterwarnings(SA_WARNING))
        if not ENABLED:
            item.add_marker(skip)


def real_environment() -> dict[str, str]:
    """The environment of subprocesses: the real AiiDA configuration folder, not the test one; this venv first."""
    env = dict(os.environ)
    env['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}'  # the daemon looks for `verdi`
    if _AIIDA_PATH is None:
        env.pop('AIIDA_PATH', None)
    else:
        env['AIIDA_PATH'] = _AIIDA_PATH
    return env


def verdi(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``verdi -p mlff-full ARGS`` against the real configuration; return the completed process."""
    result = subprocess.run(
        [VERDI, '-p', PROFILE, *args], capture_output=True, text=True, env=real_environment(), timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f'verdi {" ".join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}')
    return result


def services(action: str) -> subprocess.CompletedProcess:
    """Run ``scripts/services ACTION``."""
    return subprocess.run(['bash', str(SERVICES), action], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='session')
def deployment_services():
    """Start the services for the session (``scripts/services start``); stop them at the end."""
    started = time.monotonic()
    result = services('start')
    if result.returncode != 0:
        services('stop')
        pytest.fail(f'scripts/services start failed:\n{result.stdout}\n{result.stderr}')
    print(f'\nservices started in {time.monotonic() - started:.1f} s')
    yield
    result = services('stop')
    print(result.stdout)


@pytest.fixture(scope='session')
def aiida_config(deployment_services):
    """The real AiiDA configuration (overrides the temporary one of ``aiida.tools.pytest_fixtures``)."""
    from aiida.manage.configuration import get_config, reset_config
    from aiida.manage.configuration.settings import AiiDAConfigDir

    previous = os.environ.get('AIIDA_PATH')
    reset_config()
    if _AIIDA_PATH is None:
        os.environ.pop('AIIDA_PATH', None)
    else:
        os.environ['AIIDA_PATH'] = _AIIDA_PATH
    AiiDAConfigDir.set()
    yield get_config(create=True)
    if previous is not None:
        os.environ['AIIDA_PATH'] = previous


@pytest.fixture(scope='session')
def aiida_profile(aiida_config):
    """The ``mlff-full`` profile, made where missing by ``aiida-mlff setup --full``, loaded (overrides the test one)."""
    from aiida_mlff import deployment

    lines = []
    deployment.setup_full(PROFILE, echo=lines.append)
    print('\n'.join(lines))
    from aiida.manage import get_manager

    from aiida_mlff.environment import load_mlff_profile

    yield load_mlff_profile(PROFILE)
    get_manager().unload_profile()  # close the database connections before the services stop


@pytest.fixture(scope='session')
def run_aiida_broker_service():
    """No ZeroMQ broker: the ``mlff-full`` profile uses RabbitMQ (overrides the fixture of aiida-core)."""
    return None


@pytest.fixture(scope='session')
def daemon(aiida_profile):
    """``verdi -p mlff-full daemon start 1`` for the session; stopped at the end."""
    verdi('daemon', 'start', '1')
    yield aiida_profile
    verdi('daemon', 'stop', check=False)


def wait_for(node, timeout: float = 600, poll: float = 1.0):
    """Wait until the process ``node`` terminates; fail with its report after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not node.is_terminated:
        if time.monotonic() > deadline:
            report = verdi('process', 'report', str(node.pk), check=False).stdout
            pytest.fail(f'process {node.pk} did not finish within {timeout} s:\n{report}')
        time.sleep(poll)
    return node


def h2o_frames(n: int, seed: int, stdev: float = 0.04):
    """``n`` rattled H2O geometries in a periodic 7 Å box."""
    from ase.build import molecule

    from aiida_mlff.core.sampling import rattle

    atoms = molecule('H2O')
    atoms.set_cell([7.0, 7.0, 7.0])
    atoms.center()
    atoms.pbc = True
    return rattle(atoms, n=n, stdev=stdev, seed=seed)


def label_builder(frames, **overrides):
    """A ``mlff.dft.label`` builder on ``pw@slurm-localhost`` with the ``fast`` protocol."""
    from aiida_mlff.workflows.dft.label import DftLabelWorkChain

    builder = DftLabelWorkChain.get_builder_from_protocol(
        'pw@slurm-localhost', frames, protocol='fast', molecule=True, overrides=overrides or None
    )
    return builder


def pw_calculations(workchain=None) -> list:
    """Every ``PwCalculation`` node of the profile (or those called, at any depth, by ``workchain``)."""
    from aiida import orm

    if workchain is not None:
        return [n for n in workchain.called_descendants if n.process_type == PW_PROCESS_TYPE]
    return (
        orm.QueryBuilder()
        .append(orm.CalcJobNode, filters={'process_type': PW_PROCESS_TYPE}, project='*')
        .all(flat=True)
    )


PW_PROCESS_TYPE = 'aiida.calculations:quantumespresso.pw'
