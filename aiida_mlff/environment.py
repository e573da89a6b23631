"""Set up, and check, what aiida-mlff needs in AiiDA.

That is a profile, the ``localhost`` computer, a ``pw`` code and a pseudopotential family with recommended cutoffs.
Everything is created only where missing; nothing is overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    'DEFAULT_FAMILY',
    'DEFAULT_PROFILE',
    'PSEUDO_TABLE',
    'CheckItem',
    'check',
    'ensure_computer',
    'ensure_mlff_code',
    'ensure_profile',
    'ensure_pseudo_family',
    'ensure_pw_code',
    'load_mlff_profile',
    'setup',
]

DEFAULT_PROFILE = 'mlff'
DEFAULT_COMPUTER = 'localhost'
DEFAULT_PW_CODE = 'pw'
DEFAULT_MLFF_CODE = 'mlff-run'
DEFAULT_FAMILY = 'mlff/espresso-deb/PBE'
PSEUDO_DIR = Path('/usr/share/espresso/pseudo')

#: One PBE pseudopotential per element from Debian's ``quantum-espresso-data``, with the cutoffs (Ry) of the
#: ``standard`` stringency: (file name, ecutwfc, ecutrho). Demo-level cutoffs, about 30 Ry; use SSSP for production.
PSEUDO_TABLE: dict[str, tuple[str, float, float]] = {
    'H': ('H.pbe-kjpaw.UPF', 30.0, 240.0),
    'B': ('B.pbe-n-kjpaw_psl.1.0.0.UPF', 35.0, 280.0),
    'C': ('C.pbe-rrkjus.UPF', 30.0, 240.0),
    'N': ('N.pbe-n-rrkjus_psl.1.0.0.UPF', 35.0, 280.0),
    'O': ('O.pbe-rrkjus.UPF', 30.0, 240.0),
    'Si': ('Si.pbe-rrkj.UPF', 30.0, 120.0),
    'Ge': ('Ge.pbe-kjpaw.UPF', 35.0, 280.0),
    'I': ('I.pbe-n-kjpaw_psl.1.0.0.UPF', 35.0, 280.0),
}


@dataclass
class CheckItem:
    """One thing setup looks after: its name, whether it is there, and a sentence about it."""

    name: str
    ok: bool
    message: str


def _config():
    from aiida.manage.configuration import get_config

    return get_config(create=True)


def load_mlff_profile(name: str | None = None):
    """Load ``name``, else the ``mlff`` profile if it exists, else AiiDA's default profile; return it.

    Raises ``ValueError`` with a hint to run ``aiida-mlff setup`` when no profile can be found.
    """
    from aiida import load_profile
    from aiida.manage import get_manager

    config = _config()
    names = config.profile_names
    if name is None:
        name = DEFAULT_PROFILE if DEFAULT_PROFILE in names else config.default_profile_name
    if name is None or name not in names:
        wanted = f'profile `{name}`' if name else 'an AiiDA profile'
        raise ValueError(f'{wanted} was not found: run `aiida-mlff setup` first (existing: {names or "none"})')
    loaded = get_manager().get_profile()
    if loaded is not None and loaded.name == name:
        return loaded
    return load_profile(name, allow_switch=True)


def ensure_profile(name: str = DEFAULT_PROFILE, email: str = 'aiida@localhost') -> tuple[object, bool]:
    """Create an embedded profile (SQLite storage, no broker) called ``name`` unless it exists; load it.

    Returns ``(profile, created)``. An existing profile of that name is used as it is.
    """
    from aiida.manage.configuration import create_profile

    config = _config()
    if name in config.profile_names:
        return load_mlff_profile(name), False
    profile = create_profile(
        config,
        name=name,
        email=email,
        storage_backend='core.sqlite_dos',
        storage_config={},
        broker_backend=None,
        broker_config=None,
    )
    config.set_option('runner.poll.interval', 1, scope=profile.name)
    if config.default_profile_name is None:
        config.set_default_profile(profile.name)
    config.store()
    return load_mlff_profile(name), True


def ensure_computer(label: str = DEFAULT_COMPUTER):
    """Return the computer ``label``, creating a ``core.local`` + ``core.direct`` one if it is missing."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer(label)
        created = False
    except NotExistent:
        from aiida.manage import get_manager

        workdir = Path(_config().dirpath) / 'scratch' / get_manager().get_profile().name
        computer = orm.Computer(
            label=label,
            hostname='localhost',
            description='This machine, set up by aiida-mlff',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=str(workdir),
        ).store()
        created = True
    if not computer.is_configured:
        computer.configure(safe_interval=0, use_login_shell=False)
        computer.set_minimum_job_poll_interval(1)
        computer.set_default_mpiprocs_per_machine(1)
    return computer, created


def find_pw() -> str | None:
    """Absolute path of ``pw.x`` on this machine (``$PATH``, then Debian's location), or None."""
    found = shutil.which('pw.x')
    if found:
        return found
    return '/usr/bin/pw.x' if Path('/usr/bin/pw.x').exists() else None


def _ensure_code(label: str, computer_label: str, find, missing: str, plugin: str, description: str, prepend_text: str):
    """Return ``(code, created)``: the code ``label@computer_label``, created from ``find()`` if it is missing.

    A code whose executable is gone from this machine (a moved checkout, a recreated venv) is relabelled
    ``<label>-missing-<pk>`` (calculations that used it keep it) and replaced by a new one from ``find()``.
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        existing = orm.load_code(f'{label}@{computer_label}')
    except NotExistent:
        existing = None
    if existing is not None:
        gone = isinstance(existing, orm.InstalledCode) and not Path(str(existing.filepath_executable)).exists()
        if not gone or find() is None:
            return existing, False
        existing.label = f'{label}-missing-{existing.pk}'
    executable = find()
    if executable is None:
        raise FileNotFoundError(missing)
    computer, _ = ensure_computer(computer_label)
    code = orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=executable,
        default_calc_job_plugin=plugin,
        description=description,
        prepend_text=prepend_text,
    ).store()
    return code, True


def ensure_pw_code(label: str = DEFAULT_PW_CODE, computer_label: str = DEFAULT_COMPUTER):
    """Return the ``pw`` code on ``computer_label``, creating it from the ``pw.x`` found here if missing.

    The code's prepend text lets Open MPI run as root, so it also works in containers where the user is root.
    """
    return _ensure_code(
        label,
        computer_label,
        find_pw,
        'pw.x was not found on this machine: install Quantum ESPRESSO (Debian: apt-get install quantum-espresso)',
        'quantumespresso.pw',
        'pw.x (Quantum ESPRESSO), set up by aiida-mlff',
        'export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1',
    )


def find_mlff_run() -> str | None:
    """Absolute path of the ``mlff-run`` console script of this installation, or None."""
    import sys

    beside = Path(sys.executable).parent / 'mlff-run'
    if beside.exists():
        return str(beside)
    return shutil.which('mlff-run')


def ensure_mlff_code(label: str = DEFAULT_MLFF_CODE, computer_label: str = DEFAULT_COMPUTER):
    """Return the ``mlff-run`` code on ``computer_label``, creating it from this installation if missing."""
    return _ensure_code(
        label,
        computer_label,
        find_mlff_run,
        'mlff-run was not found: install aiida-mlff (pip install -e .) in this environment',
        'mlff.train',
        'mlff-run (aiida-mlff) for training and MD, set up by aiida-mlff',
        'export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}',
    )


def ensure_pseudo_family(label: str = DEFAULT_FAMILY, pseudo_dir: Path = PSEUDO_DIR):
    """Return the pseudo family ``label``, creating it with recommended cutoffs from ``pseudo_dir`` if missing."""
    from aiida.orm import QueryBuilder
    from aiida_pseudo.data.pseudo import UpfData
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    existing = QueryBuilder().append(CutoffsPseudoPotentialFamily, filters={'label': label}).first(flat=True)
    if existing is not None:
        return existing, False
    available = {el: row for el, row in PSEUDO_TABLE.items() if (pseudo_dir / row[0]).exists()}
    if not available:
        raise FileNotFoundError(
            f'no pseudopotentials found in {pseudo_dir}: install them (Debian: apt-get install quantum-espresso-data)'
        )
    with tempfile.TemporaryDirectory() as tmp:
        for filename, _, _ in available.values():
            shutil.copy(pseudo_dir / filename, Path(tmp) / filename)
        family = CutoffsPseudoPotentialFamily.create_from_folder(
            Path(tmp),
            label,
            description=f'PBE pseudopotentials from {pseudo_dir} (demo cutoffs), set up by aiida-mlff',
            pseudo_type=UpfData,
        )
    cutoffs = {el: {'cutoff_wfc': wfc, 'cutoff_rho': rho} for el, (_, wfc, rho) in available.items()}
    family.set_cutoffs(cutoffs, 'standard', unit='Ry')
    return family, True


def setup(profile: str | None = None, echo=print) -> None:
    """Create whatever is missing: profile, computer, ``pw`` code, pseudo family. Safe to run again."""
    name = profile or DEFAULT_PROFILE
    _, created = ensure_profile(name)
    echo(f'profile `{name}`: {"created (SQLite, no broker)" if created else "exists, kept as it is"}')
    computer, created = ensure_computer()
    echo(f'computer `{computer.label}`: {"created" if created else "exists, kept"}')
    code, created = ensure_pw_code()
    echo(f'code `{code.full_label}` -> {code.filepath_executable}: {"created" if created else "exists, kept"}')
    code, created = ensure_mlff_code()
    echo(f'code `{code.full_label}` -> {code.filepath_executable}: {"created" if created else "exists, kept"}')
    family, created = ensure_pseudo_family()
    elements = sorted(family.elements)
    echo(f'pseudo family `{family.label}` ({", ".join(elements)}): {"created" if created else "exists, kept"}')


def _code_item(name: str, full_label: str) -> CheckItem:
    """Whether the code ``full_label`` exists and its executable is on this machine."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        code = orm.load_code(full_label)
    except NotExistent:
        return CheckItem(name, False, f'code `{full_label}` is missing')
    exists = os.path.exists(str(code.filepath_executable))
    missing = '' if exists else ' (that file does not exist)'
    return CheckItem(name, exists, f'code `{code.full_label}` -> {code.filepath_executable}{missing}')


def check(profile: str | None = None) -> list[CheckItem]:
    """Say, item by item, what is there and what is missing. Creates nothing."""
    items: list[CheckItem] = []
    pw = find_pw()
    items.append(
        CheckItem('pw.x', pw is not None, f'pw.x found at {pw}' if pw else 'pw.x is missing: install quantum-espresso')
    )
    have_pseudos = PSEUDO_DIR.is_dir() and any(PSEUDO_DIR.glob('*.UPF'))
    items.append(
        CheckItem(
            'pseudopotential files',
            have_pseudos,
            f'UPF files in {PSEUDO_DIR}'
            if have_pseudos
            else f'no UPF files in {PSEUDO_DIR}: install quantum-espresso-data',
        )
    )
    try:
        loaded = load_mlff_profile(profile)
    except ValueError as exception:
        items.append(CheckItem('profile', False, str(exception)))
        return items
    items.append(CheckItem('profile', True, f'profile `{loaded.name}` (storage {loaded.storage_backend})'))
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    try:
        computer = orm.load_computer(DEFAULT_COMPUTER)
        items.append(
            CheckItem(
                'computer',
                computer.is_configured,
                f'computer `{computer.label}` ({computer.transport_type}, {computer.scheduler_type})'
                + ('' if computer.is_configured else ' is not configured for this user'),
            )
        )
    except NotExistent:
        items.append(CheckItem('computer', False, f'computer `{DEFAULT_COMPUTER}` is missing'))
    items.append(_code_item('pw code', f'{DEFAULT_PW_CODE}@{DEFAULT_COMPUTER}'))
    items.append(_code_item('mlff-run code', f'{DEFAULT_MLFF_CODE}@{DEFAULT_COMPUTER}'))
    family = orm.QueryBuilder().append(CutoffsPseudoPotentialFamily, filters={'label': DEFAULT_FAMILY}).first(flat=True)
    if family is None:
        items.append(CheckItem('pseudo family', False, f'pseudo family `{DEFAULT_FAMILY}` is missing'))
    else:
        items.append(
            CheckItem('pseudo family', True, f'pseudo family `{family.label}`: {", ".join(sorted(family.elements))}')
        )
    return items
