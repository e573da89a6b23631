"""The full deployment: a PostgreSQL + RabbitMQ profile, and a Slurm cluster reached over SSH (``setup --full``).

The services themselves (PostgreSQL, RabbitMQ, sshd on localhost, a single-node Slurm) are started by
``scripts/services start``; this module creates, only where missing, what AiiDA needs to use them:

- the profile ``mlff-full`` (``core.psql_dos`` storage, ``core.rabbitmq`` broker), with its own database user;
- the computer ``slurm-localhost`` (``core.ssh`` transport to ``localhost:PORT``, ``core.slurm`` scheduler);
- the codes ``pw@slurm-localhost`` and ``mlff-run@slurm-localhost``;
- the pseudopotential family of :func:`aiida_mlff.environment.ensure_pseudo_family`.

Nothing that exists is overwritten, and the default AiiDA profile is never changed.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aiida_mlff import environment

__all__ = [
    'FULL_COMPUTER',
    'FULL_PROFILE',
    'FullSettings',
    'ensure_full_codes',
    'ensure_full_profile',
    'ensure_slurm_computer',
    'setup_full',
]

FULL_PROFILE = 'mlff-full'
FULL_COMPUTER = 'slurm-localhost'


@dataclass
class FullSettings:
    """Where the services of ``scripts/services`` listen; the defaults match that script."""

    profile: str = FULL_PROFILE
    email: str = 'aiida@localhost'
    postgres_host: str = 'localhost'
    postgres_port: int = 5432
    rabbitmq_host: str = '127.0.0.1'
    rabbitmq_port: int = 5672
    ssh_port: int = field(default_factory=lambda: int(os.environ.get('MLFF_SSH_PORT', '2222')))
    ssh_key: Path = field(
        default_factory=lambda: Path(os.environ.get('MLFF_SSH_KEY', Path.home() / '.ssh' / 'id_ed25519_mlff'))
    )
    computer: str = FULL_COMPUTER


def _port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_services(settings: FullSettings) -> list[str]:
    """Return a sentence for each service ``settings`` needs that does not answer (an empty list: all answer)."""
    problems = []
    for name, host, port in (
        ('PostgreSQL', settings.postgres_host, settings.postgres_port),
        ('RabbitMQ', settings.rabbitmq_host, settings.rabbitmq_port),
        ('sshd', 'localhost', settings.ssh_port),
    ):
        if not _port_open(host, port):
            problems.append(f'{name} does not answer on {host}:{port}')
    if not settings.ssh_key.exists():
        problems.append(f'the SSH key {settings.ssh_key} does not exist')
    return problems


def _psql(sql: str) -> str:
    """Run ``sql`` with ``psql`` as the ``postgres`` OS user (peer authentication); return its output."""
    command = ['psql', '-X', '-q', '-tA', '-v', 'ON_ERROR_STOP=1', '-c', sql]
    if os.geteuid() == 0:
        command = ['runuser', '-u', 'postgres', '--', *command]
    elif os.environ.get('USER') != 'postgres':
        command = ['sudo', '-u', 'postgres', *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd='/')
    if result.returncode != 0:
        raise RuntimeError(f'psql failed ({sql.split()[0]} ...): {result.stderr.strip()}')
    return result.stdout.strip()


def _database_name(profile: str) -> str:
    return 'aiida_' + ''.join(c if c.isalnum() else '_' for c in profile)


def ensure_database(profile: str) -> dict:
    """Create a PostgreSQL role and database for ``profile``; return the ``core.psql_dos`` storage config.

    A database of that name that already exists is never reused (it may hold another profile's data): that raises.
    The role is created with a fresh random password; an existing role of that name gets a new password, which is
    harmless because only a profile of this name uses it and that profile does not exist yet.
    """
    name = _database_name(profile)
    if _psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == '1':
        raise RuntimeError(
            f'the PostgreSQL database `{name}` exists but no AiiDA profile `{profile}` does: not touching it. '
            f'Drop it yourself (runuser -u postgres -- dropdb {name}) or choose another profile name.'
        )
    password = secrets.token_urlsafe(24)
    if _psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'") == '1':
        _psql(f"ALTER ROLE {name} WITH LOGIN PASSWORD '{password}'")
    else:
        _psql(f"CREATE ROLE {name} WITH LOGIN PASSWORD '{password}'")
    _psql(
        f"CREATE DATABASE {name} OWNER {name} ENCODING 'UTF8' LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8' "
        'TEMPLATE template0'
    )
    return {'database_name': name, 'database_username': name, 'database_password': password}


def ensure_full_profile(settings: FullSettings | None = None) -> tuple[object, bool]:
    """Create the PostgreSQL + RabbitMQ profile ``settings.profile`` unless it exists; load it.

    Returns ``(profile, created)``. The default profile is left as it is.
    """
    from aiida.manage.configuration import create_profile

    settings = settings or FullSettings()
    config = environment._config()
    if settings.profile not in config.profile_names:
        database = ensure_database(settings.profile)
        repository = Path(config.dirpath) / 'repository' / settings.profile
        profile = create_profile(
            config,
            name=settings.profile,
            email=settings.email,
            storage_backend='core.psql_dos',
            storage_config={
                'database_engine': 'postgresql_psycopg',
                'database_hostname': settings.postgres_host,
                'database_port': settings.postgres_port,
                'repository_uri': repository.as_uri(),
                **database,
            },
            broker_backend='core.rabbitmq',
            broker_config={
                'broker_protocol': 'amqp',
                'broker_username': 'guest',
                'broker_password': 'guest',
                'broker_host': settings.rabbitmq_host,
                'broker_port': settings.rabbitmq_port,
                'broker_virtual_host': '',
            },
        )
        created = True
    else:
        profile = config.get_profile(settings.profile)
        created = False
    # Options of this profile only; set where unset so that choices made later by hand are kept.
    for option, value in (('warnings.rabbitmq_version', False), ('runner.poll.interval', 1)):
        if option not in profile.options:
            config.set_option(option, value, scope=profile.name)
    config.store()
    return environment.load_mlff_profile(settings.profile), created


def ensure_slurm_computer(settings: FullSettings | None = None):
    """Return the ``core.ssh`` + ``core.slurm`` computer to localhost, creating and configuring it where missing."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    settings = settings or FullSettings()
    try:
        computer = orm.load_computer(settings.computer)
        created = False
    except NotExistent:
        workdir = Path(environment._config().dirpath) / 'scratch' / f'{settings.profile}-slurm'
        computer = orm.Computer(
            label=settings.computer,
            hostname='localhost',
            description='Single-node Slurm on this machine, reached over SSH (aiida-mlff scripts/services)',
            transport_type='core.ssh',
            scheduler_type='core.slurm',
            workdir=str(workdir),
        ).store()
        computer.set_mpirun_command(['mpirun', '-np', '{tot_num_mpiprocs}'])
        computer.set_default_mpiprocs_per_machine(1)
        created = True
    if not computer.is_configured:
        import getpass

        computer.configure(
            username=getpass.getuser(),
            port=settings.ssh_port,
            key_filename=str(settings.ssh_key),
            look_for_keys=False,
            load_system_host_keys=True,
            key_policy='RejectPolicy',
            timeout=30,
            use_login_shell=False,
            safe_interval=0.5,
        )
        computer.set_minimum_job_poll_interval(2)
    return computer, created


def ensure_full_codes(computer_label: str = FULL_COMPUTER) -> list[tuple[object, bool]]:
    """Return ``[(pw code, created), (mlff-run code, created)]`` on ``computer_label``, creating what is missing."""
    return [
        environment.ensure_pw_code(computer_label=computer_label),
        environment.ensure_mlff_code(computer_label=computer_label),
    ]


def setup_full(profile: str | None = None, echo=print) -> None:
    """Create whatever of the full deployment is missing; the services must run (``scripts/services start``)."""
    settings = FullSettings(profile=profile or FULL_PROFILE)
    problems = check_services(settings)
    if problems:
        raise RuntimeError('; '.join(problems) + '. Start the services first: scripts/services start')
    _, created = ensure_full_profile(settings)
    state = 'created (PostgreSQL storage, RabbitMQ broker)' if created else 'exists, kept as it is'
    echo(f'profile `{settings.profile}`: {state}')
    computer, created = ensure_slurm_computer(settings)
    echo(
        f'computer `{computer.label}` ({computer.transport_type} to localhost:{settings.ssh_port}, '
        f'{computer.scheduler_type}): {"created" if created else "exists, kept"}'
    )
    for code, created in ensure_full_codes(computer.label):
        echo(f'code `{code.full_label}` -> {code.filepath_executable}: {"created" if created else "exists, kept"}')
    family, created = environment.ensure_pseudo_family()
    elements = ', '.join(sorted(family.elements))
    echo(f'pseudo family `{family.label}` ({elements}): {"created" if created else "exists, kept"}')
    echo(f'Start the daemon with: verdi -p {settings.profile} daemon start 1')
