"""Campaign files: read, fill defaults, and check every field with a message that names it.

A campaign file's sections are the options of the campaign's steps: ``dft`` holds the labelling options
(:data:`aiida_mlff.core.options.LABEL`), ``training`` the training options (``TRAIN``) plus the committee size,
``active_learning``, ``umbrella`` and ``metadynamics`` theirs; each step section may name its own ``protocol``
(default: the file's top-level ``protocol``), whose values the section's keys override. Every default lives in
``core/options.py``; this module only adds the campaign's own fields (system, states, sampling, free_energy, check,
reference). ``free_energy.method`` chooses the free-energy step of every round: ``umbrella`` (the ``umbrella``
section), ``reus`` (the same section with replica exchange on, ``exchange: {every: 100}`` unless given) or
``metadynamics`` (the ``metadynamics`` section).
CV values (windows, states, scans) are in the CV's file unit: degrees for angles and dihedrals, Å for distances.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aiida_mlff.core.options import (
    ACTIVE_LEARNING,
    CONVERGENCE,
    LABEL,
    METADYNAMICS,
    TRAIN,
    UMBRELLA,
    Option,
    Schema,
    suggest,
)

__all__ = [
    'CAMPAIGN',
    'FREE_ENERGY',
    'METHODS',
    'REUS_EXCHANGE',
    'SAMPLING',
    'CampaignConfigError',
    'box_structure',
    'build_structure',
    'check_cv_span',
    'check_cv_values',
    'load_campaign',
    'metadynamics_span',
    'place_structure',
    'solvated',
    'uuid_like',
    'validate_campaign',
]

PROTOCOLS = ('fast', 'balanced', 'stringent')
MAX_YAML_BYTES = 1_000_000
MIN_VACUUM = 4.0  # Å between the molecule and its periodic image, at least (or the model cutoff, if larger)
#: free-energy methods of the rounds: umbrella sampling, replica-exchange umbrella sampling, metadynamics
METHODS = ('umbrella', 'reus', 'metadynamics')
#: replica exchange of ``method: reus`` when the umbrella section gives none (steps between exchange attempts)
REUS_EXCHANGE = {'every': 100}


class CampaignConfigError(ValueError):
    """A campaign file has bad or missing fields; ``errors`` lists each one as 'field: problem'."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__('invalid campaign: ' + '; '.join(errors))


def _protocol(default=None) -> Option:
    return Option(default, kind='choice', choices=(None, *PROTOCOLS), nullable=True, help='protocol of this step')


def _values_problem(value: Any) -> str | None:
    return Option(None, kind='numbers')._numbers_problem(value)


def _ranges_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f'must map names to [low, high] CV ranges, got {value!r}'
    for name, bounds in value.items():
        if '.' in str(name):
            return f'{name}: a name must not contain a dot (names are keys of the results)'
        if (
            not isinstance(bounds, list | tuple)
            or len(bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, int | float) or not np.isfinite(b) for b in bounds)
        ):
            return f'{name}: needs [low, high] in the CV file unit, got {bounds!r}'
        if bounds[0] == bounds[1]:
            return f'{name}: the range [{bounds[0]}, {bounds[1]}] is empty'
    return None


def _method_problem(value: Any) -> str | None:
    if isinstance(value, str) and value in METHODS:
        return None
    return f'unknown method {value!r}{suggest(value, METHODS)} (known: {", ".join(METHODS)})'


def _campaign_reference_problem(value: Any) -> str | None:
    """A campaign named by pk (a positive integer), UUID or name (a non-empty string)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or (isinstance(value, int) and value < 1):
        return f'a campaign pk, UUID or name, got {value!r}'
    if isinstance(value, str) and not value.strip():
        return 'a campaign pk, UUID or name, got an empty string'
    return None


SOLVENT = Schema(
    {
        'waters': Option(
            None, kind='integer', low=1, nullable=True, help='waters around the solute; the box follows the density'
        ),
        'box': Option(
            None, 'Å', low=0, low_open=True, nullable=True, help='cubic box length; the waters follow the density'
        ),
        'density': Option(0.997, 'g/cm^3', low=0, low_open=True, help='of the solution (solute and waters)'),
        'min_distance': Option(2.0, 'Å', low=0, low_open=True, help='closest water atom to a solute atom'),
        'seed': Option(0, kind='integer', low=0, help='of the water sites and orientations'),
    }
)

SYSTEM = Schema(
    {
        'molecule': Option(None, kind='any', nullable=True, help='a name ase.build.molecule knows'),
        'file': Option(None, kind='any', nullable=True, help='a structure file ASE reads (relative to the campaign)'),
        'box': Option(None, 'Å', low=0, low_open=True, nullable=True, help='cubic box; none: the extent + 10 Å'),
        'solvent': SOLVENT,
        'cv': Option(None, kind='any', nullable=True, help="the CV's spec, e.g. {type: dihedral, atoms: [2, 0, 1, 3]}"),
    }
)

SAMPLING = Schema(
    {
        'rattle': Schema(
            {
                'n': Option(10, kind='integer', low=0, help='rattled copies of the structure'),
                'stdev': Option(0.04, 'Å', low=0),
                'seed': Option(0, kind='integer', low=0),
            }
        ),
        'scan': Schema(
            {
                'values': Option([], 'CV file unit', kind='any', check=_values_problem, help='restrained relaxations'),
                'rattle_stdev': Option(0.02, 'Å', low=0),
                'seed': Option(1, kind='integer', low=0),
            }
        ),
        'path': Schema(
            {
                'from': Option(None, kind='any', nullable=True, help='structure file (default: the system)'),
                'to': Option(None, kind='any', nullable=True, help='structure file of the other end'),
                'images': Option(8, kind='integer', low=1, help='structures between the two ends (IDPP)'),
                'rattle_stdev': Option(0.02, 'Å', low=0),
                'seed': Option(2, kind='integer', low=0),
            }
        ),
    }
)

FREE_ENERGY = Schema(
    {
        'method': Option(
            'umbrella',
            kind='any',
            check=_method_problem,
            help='umbrella: the umbrella section; reus: the umbrella section with replica exchange between '
            f'neighbouring windows (exchange {REUS_EXCHANGE} unless the section gives one); metadynamics: the '
            'metadynamics section (walkers adding hills to one bias)',
        ),
    }
)

UMBRELLA_SECTION = Schema(
    {
        'protocol': _protocol(),
        **{k: v for k, v in UMBRELLA.fields.items() if k not in ('windows2', 'kappa2')},  # a campaign has one CV
        'exchange': replace(
            UMBRELLA['exchange'],
            help='replica exchange between neighbouring windows (REUS): {every: steps}; none: independent windows. '
            f'With free_energy.method reus the default is {REUS_EXCHANGE}',
        ),
    },
    fill=False,
)

_UUID = re.compile(r'^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$')


def uuid_like(value: str) -> bool:
    """Whether ``value`` has the shape of a UUID (with or without dashes)."""
    return bool(_UUID.match(value))


def _file_or_node_problem(what: str):
    """A check of a value naming a file or a node (pk or UUID) that holds ``what``."""

    def problem(value) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return None
        if isinstance(value, str) and (_UUID.match(value) or Path(value).is_file()):
            return None
        return f'must be {what} file or the pk/UUID of its node, got {value!r} (no such file)'

    return problem


#: fields of the training section that name inputs (nodes or files), not options of the training job
FINE_TUNING = ('initial_potential', 'replay_dataset')
TRAINING = Schema(
    {
        'protocol': _protocol(),
        'committee': ACTIVE_LEARNING['committee'],
        'initial_potential': Option(
            None,
            kind='any',
            nullable=True,
            check=_file_or_node_problem('a potential'),
            help='fine-tune from this potential (a file, relative to the campaign, whose SHA-256 is recorded, or a '
            'PotentialData pk/UUID) instead of training from scratch; every training of the campaign starts from it',
        ),
        'replay_dataset': Option(
            None,
            kind='any',
            nullable=True,
            check=_file_or_node_problem('an extxyz dataset'),
            help="the initial potential's own data, scored before and after each fine-tuning (forgetting); default: "
            'the dataset its provenance holds, none for a file',
        ),
        **TRAIN.fields,
    },
    TRAIN.checks,
    fill=False,
)

CAMPAIGN = Schema(
    {
        'name': Option('campaign', kind='any'),
        'description': Option('', kind='any'),
        'protocol': Option('balanced', kind='choice', choices=PROTOCOLS, help='of every step that names none'),
        'system': SYSTEM,
        'states': Option({}, 'CV file unit', kind='any', check=_ranges_problem, help='named basins: CV ranges'),
        'transitions': Option({}, 'CV file unit', kind='any', check=_ranges_problem, help='names of barrier tops'),
        'sampling': SAMPLING,
        'dft': Schema({'protocol': _protocol(), **LABEL.fields}, fill=False),
        'training': TRAINING,
        'active_learning': Schema(
            {'protocol': _protocol(), **{k: v for k, v in ACTIVE_LEARNING.fields.items() if k != 'committee'}},
            ACTIVE_LEARNING.checks,
            fill=False,
        ),
        'free_energy': FREE_ENERGY,
        'umbrella': UMBRELLA_SECTION,
        'metadynamics': Schema({'protocol': _protocol(), **METADYNAMICS.fields}, fill=False),
        'convergence': CONVERGENCE,
        'check': Schema(
            {
                'values': Option([], 'CV file unit', kind='any', check=_values_problem, help='relaxed scan vs pw.x'),
                'fmax': Option(0.01, 'eV/Å', low=0, low_open=True),
            }
        ),
        'reference': Schema(
            {
                'experiment_kcal_mol': Option({}, 'kcal/mol', kind='mapping'),
                'compare_with': Option(
                    None,
                    kind='any',
                    nullable=True,
                    check=_campaign_reference_problem,
                    help='another campaign whose barriers this one is compared with, by name (transitions and states '
                    'of the same name; e.g. the gas phase of a solvated campaign): its pk, UUID, or its name (the '
                    'latest campaign of that name in the profile that has barriers)',
                ),
                'compare_label': Option(
                    None, kind='any', nullable=True, help="how the report names it; none: the campaign's name"
                ),
            }
        ),
    }
)


# ------------------------------------------------------------------------------------------------------ reading
def _safe_yaml(text: str):
    """``yaml.safe_load`` that refuses aliases (a small file with nested aliases can expand without bound)."""

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, 'YAML aliases (*name) are not allowed in campaign files', event.start_mark
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliasLoader)


def load_campaign(source: str | Path | dict) -> dict:
    """Return the validated campaign (defaults filled in) from a YAML file path or a mapping."""
    if isinstance(source, dict):
        return validate_campaign(source)
    path = Path(source)
    if not path.is_file():
        raise CampaignConfigError([f'file: {path} does not exist or is not a file'])
    if path.stat().st_size > MAX_YAML_BYTES:
        raise CampaignConfigError([f'file: {path} is larger than {MAX_YAML_BYTES} bytes: not a campaign file'])
    try:
        raw = _safe_yaml(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exception:
        raise CampaignConfigError([f'file: {path} is not valid YAML ({exception})']) from exception
    if not isinstance(raw, dict):
        raise CampaignConfigError([f'file: {path} must hold a mapping of sections'])
    _resolve_paths(raw, path.parent)
    return validate_campaign(raw)


def _resolve_paths(raw: dict, folder: Path) -> None:
    """Structure files named in the campaign are relative to the campaign file."""
    system = raw.get('system')
    if isinstance(system, dict) and isinstance(system.get('file'), str):
        system['file'] = str((folder / system['file']).resolve())
    training = raw.get('training')
    if isinstance(training, dict):
        for key in FINE_TUNING:
            value = training.get(key)
            if isinstance(value, str) and not _UUID.match(value) and (folder / value).is_file():
                training[key] = str((folder / value).resolve())
    path = (raw.get('sampling') or {}).get('path') if isinstance(raw.get('sampling'), dict) else None
    if isinstance(path, dict):
        for key in ('from', 'to'):
            if isinstance(path.get(key), str):
                path[key] = str((folder / path[key]).resolve())


def _read_structure(value: Any, field: str, errors: list[str]):
    from ase.io import read

    try:
        return read(value)
    except Exception as exception:  # ASE raises many kinds
        errors.append(f'{field}: cannot read {value} ({type(exception).__name__}: {exception})')
        return None


def build_structure(config: dict):
    """The campaign's structure (``ase.Atoms``).

    A molecule centred in its cubic periodic box, the molecule in a periodic box of water (``system.solvent``), or
    the file's cell.
    """
    return place_structure(_read_system(config), config['system'])


def solvated(system: dict) -> bool:
    """Whether ``system`` (the checked section) puts the molecule in water."""
    solvent = system.get('solvent') or {}
    return solvent.get('waters') is not None or solvent.get('box') is not None


def place_structure(atoms, system: dict):
    """``atoms`` in the campaign's cell.

    In a box of water (``system.solvent``; the solute's atoms first, in their order, so CV atom indices keep their
    meaning), or boxed by ``system.box`` (:func:`box_structure`).
    """
    if not solvated(system):
        return box_structure(atoms, system.get('box'))
    from aiida_mlff.core.solvate import solvate

    solvent = system['solvent']
    return solvate(
        atoms,
        n_waters=solvent['waters'],
        box_length=solvent['box'],
        density=solvent['density'],
        min_distance=solvent['min_distance'],
        seed=solvent['seed'],
    )


def box_structure(atoms, box: float | None):
    """A molecule centred in a cubic periodic box of ``box`` Å (default: its extent + 10 Å).

    A periodic structure stays as it is when no box is given.
    """
    if box is None and atoms.pbc.any() and atoms.cell.volume > 0:
        return atoms
    box = float(box) if box is not None else _extent(atoms) + 2 * 5.0
    atoms.set_cell([box, box, box])
    atoms.center()
    atoms.pbc = True
    atoms.info['boxed'] = True
    return atoms


def _extent(atoms) -> float:
    positions = atoms.get_positions()
    return float((positions.max(axis=0) - positions.min(axis=0)).max()) if len(atoms) else 0.0


# --------------------------------------------------------------------------------------------------- validation
def validate_campaign(raw: dict, structure=None) -> dict:
    """Fill defaults and check every field; raise :class:`CampaignConfigError` listing every problem.

    ``structure`` (``ase.Atoms``): the campaign's structure when it is not named by ``system.molecule`` or
    ``system.file`` (a campaign built from Python); ``system.box`` then boxes it as it would a file.
    """
    config, errors = CAMPAIGN.resolve(raw)
    atoms = _check_system(config, errors) if structure is None else _given_structure(config, structure, errors)
    cv = _check_cv(config, atoms, errors)
    for section in ('umbrella', 'metadynamics'):
        if not isinstance(raw.get(section), dict):  # left out: the protocol's values, not every default
            config[section] = {}
    for section in ('dft', 'training', 'active_learning', 'umbrella', 'metadynamics'):
        if config[section].get('protocol') is None:
            config[section]['protocol'] = config['protocol']
    method = _check_method(config, errors)
    if cv is not None and method == 'metadynamics':
        span = _check_metadynamics(config, errors)
        if not any(e.startswith('metadynamics.') for e in errors):
            check_cv_span(config.get('states'), config.get('transitions'), cv, span, errors)
    elif cv is not None and method is not None:
        windows = _check_windows(config, cv, errors)
        check_cv_values(config.get('states'), config.get('transitions'), cv, windows, errors)
    _check_sampling(config, atoms, errors)
    _check_rehearsal(config['training'], errors)
    if errors:
        raise CampaignConfigError(errors)
    return config


def _check_rehearsal(training: dict, errors: list[str]) -> None:
    """Rehearsal (``replay_fraction``) replays the initial potential's data: there must be an initial potential."""
    fraction = training.get('replay_fraction')
    if isinstance(fraction, int | float) and fraction > 0 and training.get('initial_potential') is None:
        errors.append(
            'training.replay_fraction: rehearsal replays the data of training.initial_potential, which is not given'
        )


def _given_structure(config: dict, structure, errors: list[str]):
    system = config['system']
    if system.get('molecule') or system.get('file'):
        errors.append('system: the structure is given; system.molecule and system.file must be left out')
        return None
    atoms = _placed(config, structure.copy(), errors)
    if atoms is not None:
        _check_box(config, atoms, errors)
    return atoms


def _placed(config: dict, atoms, errors: list[str]):
    """``atoms`` boxed or solvated as the system section says; None (and the problem named) when that fails."""
    system = config['system']
    if solvated(system):
        solvent = system['solvent']
        if solvent['waters'] is not None and solvent['box'] is not None:
            errors.append('system.solvent: give one of waters (the box follows) and box (the waters follow), not both')
            return None
        if system.get('box') is not None:
            errors.append('system.box: leave it out with system.solvent (solvent.waters or solvent.box sizes the box)')
            return None
    try:
        return place_structure(atoms, system)
    except ValueError as exception:
        errors.append(f'system.solvent: {exception}')
        return None


def _check_system(config: dict, errors: list[str]):
    system = config['system']
    if bool(system.get('molecule')) == bool(system.get('file')):
        errors.append('system: give exactly one of molecule (a name, e.g. H2O2) or file (a structure file)')
        return None
    if system.get('molecule'):
        from ase.build import molecule
        from ase.collections import g2

        try:
            molecule(system['molecule'])
        except (KeyError, TypeError):
            errors.append(
                f'system.molecule: ASE does not know a molecule called {system["molecule"]!r}'
                f'{suggest(system["molecule"], g2.names)}; give system.file for your own structure'
            )
            return None
    elif not Path(str(system['file'])).is_file():
        errors.append(f'system.file: {system["file"]} does not exist')
        return None
    elif _read_structure(system['file'], 'system.file', errors) is None:
        return None
    atoms = _read_system(config)
    if len(atoms) == 0:
        errors.append('system.file: the structure has no atoms')
        return None
    atoms = _placed(config, atoms, errors)
    if atoms is not None:
        _check_box(config, atoms, errors)
    return atoms


def _read_system(config: dict):
    """The molecule or the file's structure, as given (not yet boxed or solvated)."""
    system = config['system']
    if system.get('molecule'):
        from ase.build import molecule

        return molecule(system['molecule'])
    from ase.io import read

    return read(system['file'])


def _check_box(config: dict, atoms, errors: list[str]) -> None:
    from aiida_mlff.core.structures import closest_pair

    box = config['system'].get('box')
    if box is not None:
        extent = _extent(atoms)
        cutoff = float((config['training'].get('model') or {}).get('cutoff', 0.0) or 0.0)
        vacuum = max(MIN_VACUUM, cutoff)
        if box < extent + vacuum:
            errors.append(
                f'system.box: {box} Å is too small for the molecule (extent {extent:.2f} Å): it needs at least '
                f'{extent + vacuum:.1f} Å (the extent plus {vacuum:.1f} Å of vacuum, at least the model cutoff)'
            )
            return
    if len(atoms) > 1:
        i, j, d = closest_pair(atoms)
        if d < 0.5:
            errors.append(f'system: atoms {i} and {j} are {d:.3f} Å apart (at least 0.5 Å): is the structure right?')


def _check_cv(config: dict, atoms, errors: list[str]):
    from aiida_mlff.core.colvars import cv_from_spec, cv_spec_errors

    spec = config['system'].get('cv')
    if spec is None:
        errors.append('system.cv: the reaction coordinate is missing, e.g. {type: dihedral, atoms: [2, 0, 1, 3]}')
        return None
    problems = cv_spec_errors(spec, where='system.cv', n_atoms=len(atoms) if atoms is not None else None)
    errors.extend(problems)
    return None if problems else cv_from_spec(spec)


def _check_windows(config: dict, cv, errors: list[str]):
    from aiida_mlff.workflows.umbrella.base import umbrella_windows

    umbrella = {k: v for k, v in config['umbrella'].items() if k != 'protocol'}
    umbrella = {**UMBRELLA.defaults(), **umbrella}
    if umbrella.get('windows') is None:
        errors.append('umbrella.windows: give centers, or start, stop and count (in the CV file unit)')
        return None
    if any(e.startswith('umbrella.') for e in errors):
        return None
    try:
        return umbrella_windows(cv, umbrella)[0]
    except ValueError as exception:
        errors.append(f'umbrella.windows: {exception}')
        return None


def _check_method(config: dict, errors: list[str]) -> str | None:
    """The free-energy method (None when it is unknown); ``reus`` turns replica exchange on in the umbrella section."""
    method = config['free_energy'].get('method')
    if method not in METHODS:
        return None  # named by CAMPAIGN.resolve
    if method == 'reus':
        umbrella = config['umbrella']
        if 'exchange' not in umbrella:
            umbrella['exchange'] = dict(REUS_EXCHANGE)
        elif umbrella['exchange'] is None:
            errors.append(
                f'umbrella.exchange: free_energy.method reus exchanges configurations between windows: give '
                f'{{every: steps}} or leave it out (default {REUS_EXCHANGE}), or use method umbrella'
            )
        if umbrella.get('mode', UMBRELLA['mode'].default) != 'batched':
            errors.append("umbrella.mode: free_energy.method reus exchanges windows inside one batch: needs 'batched'")
    return method


def _check_metadynamics(config: dict, errors: list[str]) -> tuple[float, float] | None:
    """Check the metadynamics section with the CV; return its range (CV file unit; None: the whole period)."""
    from aiida_mlff.workflows.metadynamics.base import validate_metadynamics

    if any(e.startswith('metadynamics.') for e in errors):
        return None  # its options are named already
    parameters = {k: v for k, v in config['metadynamics'].items() if k != 'protocol'}
    errors.extend(validate_metadynamics([config['system']['cv']], parameters, where='metadynamics'))
    return metadynamics_span(parameters)


def metadynamics_span(parameters: dict) -> tuple[float, float] | None:
    """The range of the first CV that metadynamics samples (CV file unit), or None: the whole period.

    ``parameters``: metadynamics options (``range``: ``[lower, upper]`` or one such pair per CV, or none).
    """
    ranges = parameters.get('range')
    if not ranges:
        return None
    first = ranges[0] if isinstance(ranges[0], list | tuple) else ranges
    return float(first[0]), float(first[1])


def _outside(states: dict | None, transitions: dict | None, points: np.ndarray, period: float | None):
    """``(section, name, low, high)`` of every state or transition whose range holds none of ``points``."""
    from aiida_mlff.core.states import in_range

    for section, ranges in (('states', states), ('transitions', transitions)):
        for name, (a, b) in (ranges or {}).items():
            inside = in_range(points, a, b, period) if period else (points >= min(a, b)) & (points <= max(a, b))
            if not np.any(inside):
                yield section, name, a, b


def check_cv_values(states: dict | None, transitions: dict | None, cv, windows, errors: list[str]) -> None:
    """States and transitions must lie where the windows sample (open ranges) or anywhere (closed ones)."""
    if windows is None or windows.closed:
        return
    centers = np.asarray(cv.to_file(np.asarray(windows.centers, dtype=float)))
    lo, hi = float(centers.min()), float(centers.max())
    for section, name, a, b in _outside(states, transitions, centers, cv.file_period):
        errors.append(
            f'{section}.{name}: the range [{a}, {b}] {cv.file_unit} holds no umbrella window '
            f'(windows from {lo:g} to {hi:g} {cv.file_unit}): widen umbrella.windows or move the state'
        )


#: points per metadynamics range at which states and transitions are looked for
SPAN_POINTS = 721


def check_cv_span(
    states: dict | None, transitions: dict | None, cv, span: tuple[float, float] | None, errors: list[str]
) -> None:
    """States and transitions must overlap the metadynamics range ``span`` (CV file unit; None: the whole period)."""
    if span is None:
        return
    lo, hi = span
    points = np.linspace(lo, hi, SPAN_POINTS)
    for section, name, a, b in _outside(states, transitions, points, cv.file_period):
        errors.append(
            f'{section}.{name}: the range [{a}, {b}] {cv.file_unit} lies outside the metadynamics range '
            f'[{lo:g}, {hi:g}] {cv.file_unit}: widen metadynamics.range or move the state'
        )


def _check_sampling(config: dict, atoms, errors: list[str]) -> None:
    path = config['sampling']['path']
    if path.get('to') is None:
        if path.get('from') is not None:
            errors.append('sampling.path.to: the other end of the path is missing')
        return
    ends = {}
    for key in ('from', 'to'):
        if path.get(key) is None:
            ends[key] = atoms
        elif not Path(str(path[key])).is_file():
            errors.append(f'sampling.path.{key}: {path[key]} does not exist')
        else:
            ends[key] = _read_structure(path[key], f'sampling.path.{key}', errors)
    if atoms is None or any(end is None for end in ends.values()) or len(ends) < 2:
        return
    for key, end in ends.items():
        if end.get_chemical_symbols() != atoms.get_chemical_symbols():
            errors.append(
                f'sampling.path.{key}: its atoms ({end.get_chemical_formula()}, in order) differ from '
                f'the system ({atoms.get_chemical_formula()}): the same atoms in the same order are needed'
            )
