"""Campaign files: read, fill defaults, and check every field with a message that names it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from aiida_mlff.core.files import CV_ATOMS

__all__ = ['DEFAULTS', 'CampaignConfigError', 'load_campaign', 'validate_campaign']


class CampaignConfigError(ValueError):
    """A campaign file has bad or missing fields; ``errors`` lists each one as 'field: problem'."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__('invalid campaign: ' + '; '.join(errors))


DEFAULTS: dict[str, Any] = {
    'name': 'campaign',
    'description': '',
    'system': {'box': 10.0},
    'sampling': {
        'rattle': {'n': 10, 'stdev': 0.04, 'seed': 0},
        'dihedral_scan': {'angles': [], 'rattle_stdev': 0.02, 'seed': 1},
    },
    'dft': {'protocol': 'fast', 'max_concurrent': 2, 'max_failure_fraction': 0.25},
    'training': {
        'protocol': 'fast',
        'committee': 4,
        'model': {'cutoff': 3.5},
        'epochs': 400,
        'patience': 100,
        'batch_size': 4,
        'learning_rate': 0.005,
        'energy_weight': 10.0,
        'forces_weight': 1.0,
        'lr_patience': 20,
        'polish_steps': 200,
        'device': 'auto',
    },
    'active_learning': {
        'max_iterations': 3,
        'max_candidates': 10,
        'trust_lower': 0.1,
        'trust_upper': 0.4,
        'stop_rule': {'accurate_fraction': 0.95, 'consecutive': 2},
        'explore': {'temperatures': [300.0], 'steps': 1000, 'stride': 20, 'timestep': 0.5},
        'umbrella_windows': 0,
    },
    'umbrella': {
        'windows': {'start': -180.0, 'stop': 180.0, 'count': 24},
        'kappa': 1.0,
        'temperature': 300.0,
        'equilibration_steps': 1000,
        'production_steps': 8000,
        'timestep': 0.5,
        'bins': 72,
        'bootstrap': 20,
        'refit_rounds': 1,
        'mode': 'batched',
        'device': 'auto',
    },
    'check': {'relaxed_scan_angles': []},
    'reference': {'experiment_kcal_mol': {}},
}


def _merge(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (new or {}).items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_campaign(source: str | Path | dict) -> dict:
    """Return the validated campaign (defaults filled in) from a YAML file path or a mapping."""
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.exists():
            raise CampaignConfigError([f'file: {path} does not exist'])
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exception:
            raise CampaignConfigError([f'file: {path} is not valid YAML ({exception})']) from exception
        if not isinstance(raw, dict):
            raise CampaignConfigError([f'file: {path} must hold a mapping of sections'])
        system = raw.get('system', {})
        if isinstance(system, dict) and system.get('file'):
            system['file'] = str((path.parent / system['file']).resolve())
    return validate_campaign(raw)


def _number(errors, where, value, positive=True, integer=False, allow_zero=False):
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if ok and positive:
        ok = value > 0 or (allow_zero and value == 0)
    if not ok:
        kind = 'an integer' if integer else 'a number'
        sign = ' >= 0' if allow_zero else ' > 0' if positive else ''
        errors.append(f'{where}: must be {kind}{sign}, got {value!r}')


def validate_campaign(raw: dict) -> dict:
    """Fill defaults and check every field; raise :class:`CampaignConfigError` listing every problem."""
    errors: list[str] = []
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        errors.append(f'{", ".join(unknown)}: unknown section(s); known: {", ".join(sorted(DEFAULTS))}')
    config = _merge(DEFAULTS, {k: v for k, v in raw.items() if k in DEFAULTS})

    system = config['system']
    if not system.get('molecule') and not system.get('file'):
        errors.append('system.molecule: give a molecule name (e.g. H2O2) or system.file')
    elif system.get('molecule'):
        from ase.build import molecule

        try:
            atoms = molecule(system['molecule'])
        except KeyError:
            errors.append(f'system.molecule: ASE does not know a molecule called {system["molecule"]!r}')
            atoms = None
    else:
        from ase.io import read

        try:
            atoms = read(system['file'])
        except Exception as exception:  # ASE raises many kinds
            errors.append(f'system.file: cannot read {system["file"]} ({exception})')
            atoms = None
    _number(errors, 'system.box', system.get('box'))
    cv = system.get('cv')
    if not isinstance(cv, dict) or cv.get('type') not in CV_ATOMS:
        errors.append(f'system.cv: needs type (one of {sorted(CV_ATOMS)}) and atoms, got {cv!r}')
    elif atoms is not None:
        indices = cv.get('atoms')
        if (
            not isinstance(indices, list)
            or len(indices) != CV_ATOMS[cv['type']]
            or not all(isinstance(i, int) and 0 <= i < len(atoms) for i in indices)
        ):
            errors.append(
                f'system.cv.atoms: {CV_ATOMS[cv["type"]]} atom indices below {len(atoms)} needed, got {indices!r}'
            )

    rattle = config['sampling']['rattle']
    _number(errors, 'sampling.rattle.n', rattle.get('n'), integer=True, allow_zero=True)
    _number(errors, 'sampling.rattle.stdev', rattle.get('stdev'), allow_zero=True)
    angles = config['sampling']['dihedral_scan'].get('angles', [])
    if not isinstance(angles, list) or not all(isinstance(a, int | float) for a in angles):
        errors.append(f'sampling.dihedral_scan.angles: must be a list of degrees, got {angles!r}')
    elif angles and (not isinstance(cv, dict) or cv.get('type') != 'dihedral'):
        errors.append('sampling.dihedral_scan: needs system.cv of type dihedral')

    if config['dft'].get('protocol') not in ('fast', 'balanced', 'stringent'):
        errors.append(f'dft.protocol: must be fast, balanced or stringent, got {config["dft"].get("protocol")!r}')
    _number(errors, 'dft.max_concurrent', config['dft'].get('max_concurrent'), integer=True)

    training = config['training']
    _number(errors, 'training.committee', training.get('committee'), integer=True)
    if isinstance(training.get('committee'), int) and training['committee'] < 2:
        errors.append('training.committee: needs at least 2 members for uncertainty')
    for key in ('epochs', 'patience', 'batch_size', 'lr_patience'):
        _number(errors, f'training.{key}', training.get(key), integer=True)
    _number(errors, 'training.polish_steps', training.get('polish_steps'), integer=True, allow_zero=True)
    _number(errors, 'training.learning_rate', training.get('learning_rate'))

    al = config['active_learning']
    for key in ('max_iterations', 'max_candidates'):
        _number(errors, f'active_learning.{key}', al.get(key), integer=True)
    _number(errors, 'active_learning.trust_lower', al.get('trust_lower'))
    _number(errors, 'active_learning.trust_upper', al.get('trust_upper'))
    trust = [al.get(k) for k in ('trust_lower', 'trust_upper')]
    if all(isinstance(t, int | float) for t in trust) and trust[0] >= trust[1]:
        errors.append('active_learning.trust_lower: must be below active_learning.trust_upper')
    temps = al['explore'].get('temperatures')
    if not isinstance(temps, list) or not temps or not all(isinstance(t, int | float) and t > 0 for t in temps):
        errors.append(f'active_learning.explore.temperatures: a list of positive K, got {temps!r}')
    for key in ('steps', 'stride'):
        _number(errors, f'active_learning.explore.{key}', al['explore'].get(key), integer=True)
    _number(errors, 'active_learning.explore.timestep', al['explore'].get('timestep'))

    umbrella = config['umbrella']
    windows = umbrella.get('windows', {})
    if not isinstance(windows, dict) or not ({'centers'} <= set(windows) or {'start', 'stop', 'count'} <= set(windows)):
        errors.append('umbrella.windows: give centers (degrees) or start, stop and count')
    elif 'count' in windows:
        _number(errors, 'umbrella.windows.count', windows['count'], integer=True)
    for key in ('kappa', 'temperature', 'timestep'):
        _number(errors, f'umbrella.{key}', umbrella.get(key))
    for key in ('production_steps', 'bins'):
        _number(errors, f'umbrella.{key}', umbrella.get(key), integer=True)
    for key in ('equilibration_steps', 'bootstrap', 'refit_rounds'):
        _number(errors, f'umbrella.{key}', umbrella.get(key), integer=True, allow_zero=True)
    if umbrella.get('mode') not in ('batched', 'parallel'):
        errors.append(f'umbrella.mode: must be batched or parallel, got {umbrella.get("mode")!r}')
    scan = config['check'].get('relaxed_scan_angles', [])
    if not isinstance(scan, list) or not all(isinstance(a, int | float) for a in scan):
        errors.append(f'check.relaxed_scan_angles: must be a list of degrees, got {scan!r}')
    if errors:
        raise CampaignConfigError(errors)
    return config
