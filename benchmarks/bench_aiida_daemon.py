"""Seconds from launch to finished of a tiny ``mlff.md`` job: in-process ``run_get_node`` vs ``submit`` to the daemon.

Both on the same throw-away profile (SQLite storage, ``core.local`` + ``core.direct`` computer, job poll interval
1 s), side by side in one run: 1 H2O, 10 steps. The daemon (one worker) is started for the run and stopped after it.
Broker: ``zeromq`` (default; aiida-core's built-in broker that lives inside the daemon, no external service) or
``rabbitmq`` (needs RabbitMQ on 127.0.0.1:5672, e.g. from ``scripts/services start``). Each way is timed ``--repeat``
times after one warm-up launch (imports, daemon worker start-up); the best is reported.

AIIDA_PATH points at a temporary folder before aiida is imported: no existing profile is touched.
The last line is ``RESULT {json}`` for ``benchmarks/run``.
Usage: ``python benchmarks/bench_aiida_daemon.py [--broker zeromq|rabbitmq] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE = 'bench-daemon'


def rabbitmq_answers(host: str = '127.0.0.1', port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def verdi(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / 'verdi'
    return subprocess.run(
        [str(exe), '-p', PROFILE, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def make_profile(broker: str):
    from aiida.manage.configuration import create_profile
    from aiida.plugins import BrokerFactory

    from aiida_mlff.environment import _config, load_mlff_profile

    config = _config()
    backend = f'core.{broker}'
    broker_config = BrokerFactory(backend).get_default_config() if broker == 'zeromq' else {}
    profile = create_profile(
        config,
        name=PROFILE,
        email='aiida@localhost',
        storage_backend='core.sqlite_dos',
        storage_config={},
        broker_backend=backend,
        broker_config=broker_config,
    )
    config.set_option('runner.poll.interval', 1, scope=profile.name)
    config.set_option('warnings.rabbitmq_version', False, scope=profile.name)
    config.set_default_profile(profile.name)
    config.store()
    return load_mlff_profile(PROFILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--broker', choices=['zeromq', 'rabbitmq'], default='zeromq')
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args()
    if args.broker == 'rabbitmq' and not rabbitmq_answers():
        print('RESULT ' + json.dumps({'error': 'RabbitMQ does not answer on 127.0.0.1:5672'}))
        return
    tmp = tempfile.mkdtemp(prefix='bench-daemon-')
    os.environ['AIIDA_PATH'] = tmp
    # the daemon looks for verdi (and its workers for mlff-run) on PATH
    os.environ['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}'
    try:
        _main(Path(tmp), args.broker, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(tmp: Path, broker: str, repeat: int) -> None:
    from aiida import orm
    from aiida.engine import run_get_node, submit
    from bench_aiida_overhead import tiny_md_job  # the same tiny job as the in-process overhead row

    from aiida_mlff.calculations.md import MdCalculation

    make_profile(broker)
    code, potential, structure = tiny_md_job(tmp)
    inputs = {
        'code': code,
        'potential': potential,
        'structures': {'s0': structure},
        'parameters': orm.Dict({'steps': 10, 'temperature': 300.0}),
    }

    def in_process() -> float:
        t0 = time.perf_counter()
        _, node = run_get_node(MdCalculation, **inputs)
        elapsed = time.perf_counter() - t0
        assert node.is_finished_ok, node.exit_status
        return elapsed

    def through_daemon(timeout: float = 300.0) -> float:
        t0 = time.perf_counter()
        node = submit(MdCalculation, **inputs)
        while not node.is_terminated:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f'the daemon did not finish the job in {timeout:.0f} s')
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        assert node.is_finished_ok, node.exit_status
        return elapsed

    in_process()  # warm-up
    t_run = [in_process() for _ in range(repeat)]
    t0 = time.perf_counter()
    proc = verdi('daemon', 'start', '1')
    t_start = time.perf_counter() - t0
    if proc.returncode != 0:
        why = (proc.stdout + proc.stderr).strip().splitlines()
        print('RESULT ' + json.dumps({'error': f'verdi daemon start failed: {why[-1] if why else proc.returncode}'}))
        return
    try:
        through_daemon()  # warm-up: the worker imports aiida-mlff and torch
        t_daemon = [through_daemon() for _ in range(repeat)]
    finally:
        verdi('daemon', 'stop', timeout=120)
    print(f'broker {broker}: daemon start {t_start:.1f} s')
    print(f'mlff.md, 1 H2O, 10 steps: run_get_node {min(t_run):.2f} s (of {[round(t, 2) for t in t_run]})')
    print(f'                          submit -> finished {min(t_daemon):.2f} s (of {[round(t, 2) for t in t_daemon]})')
    result = {'broker': broker, 't_run': min(t_run), 't_daemon': min(t_daemon), 't_daemon_start': t_start}
    result.update({'t_run_all': t_run, 't_daemon_all': t_daemon})
    print('RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
