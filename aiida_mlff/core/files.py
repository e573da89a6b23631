"""The job contract between a CalcJob and ``mlff-run`` on the (remote) computer.

A job directory holds ``job.json`` (the task and its validated parameters) and the input files the task needs;
``mlff-run`` writes ``summary.json`` (status, metrics, diagnostics) and the output files named here. Parsers read
only these files. Units: Å, eV, fs, K.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    'DATASET_FILE',
    'EXIT_BAD_INPUT',
    'EXIT_CRASH',
    'EXIT_NAN_LOSS',
    'EXIT_OK',
    'EXIT_UNSTABLE_MD',
    'EXIT_WALLTIME',
    'JOB_FILE',
    'SUMMARY_FILE',
    'read_json',
    'validate_md_parameters',
    'validate_train_parameters',
    'write_json',
]

JOB_FILE = 'job.json'
SUMMARY_FILE = 'summary.json'
DATASET_FILE = 'dataset.extxyz'
POTENTIAL_FILE = 'potential.pt'
PARENT_POTENTIAL_FILE = 'parent_potential.pt'
CHECKPOINT_FILE = 'checkpoint.pt'
LEARNING_CURVE_FILE = 'learning_curve.json'
STRUCTURES_FILE = 'structures.extxyz'
TRAJECTORY_FILE = 'trajectory.npz'
FINAL_STRUCTURES_FILE = 'final.extxyz'
MD_CHECKPOINT_FILE = 'md_state.npz'

#: Exit statuses of ``mlff-run`` (the parser maps each onto a numbered exit code of the CalcJob).
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_NAN_LOSS = 10
EXIT_WALLTIME = 11
EXIT_UNSTABLE_MD = 12


def write_json(path: str | Path, content: Mapping[str, Any]) -> Path:
    """Write ``content`` as indented JSON (atomically: a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True, default=_default))
    tmp.replace(path)
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def _default(value):
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'cannot write {type(value).__name__} to JSON')


# ------------------------------------------------------------------------------------------------ validation
TRAIN_DEFAULTS: dict[str, Any] = {
    'model': {'cutoff': 5.0},
    'epochs': 200,
    'learning_rate': 3e-3,
    'batch_size': 16,
    'energy_weight': 1.0,
    'forces_weight': 10.0,
    'validation_fraction': 0.1,
    'patience': 50,
    'seed': 0,
    'max_time': None,  # s of training before a graceful stop with a checkpoint (walltime)
    'device': 'auto',
    'dtype': 'float32',
    'checkpoint_every': 10,
    'lr_patience': 20,  # epochs without improvement before the learning rate is halved
    'min_learning_rate': 1e-5,
    'weight_decay': 1e-6,
    'polish_steps': 0,  # full-batch L-BFGS iterations after AdamW (from the best weights)
    'precision': 'float64',  # arithmetic of the optimisation: 'float64' or 'model' (the model's dtype)
}

MD_DEFAULTS: dict[str, Any] = {
    'ensemble': 'langevin',
    'timestep': 0.5,
    'steps': 1000,
    'temperature': 300.0,
    'friction': 0.01,
    'stride': 10,
    'seed': 0,
    'device': 'auto',
    'dtype': 'float32',
    'max_force_deviation': None,
    'min_distance': 0.5,
    'max_energy_jump': 1.0,
    'biases': [],
    'colvars': [],
    'max_time': None,
    'checkpoint_every': 1000,
}

CV_ATOMS = {'distance': 2, 'angle': 3, 'dihedral': 4, 'distance_difference': 4}


def _positive(errors, params, key, kind=float, allow_none=False, allow_zero=False):
    value = params.get(key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        errors.append(f'`{key}` must be {"an integer" if kind is int else "a number"}, got {value!r}')
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        errors.append(f'`{key}` must be {"non-negative" if allow_zero else "positive"}, got {value!r}')


def _choice(errors, params, key, choices):
    if params.get(key) not in choices:
        errors.append(f'`{key}` must be one of {sorted(choices)}, got {params.get(key)!r}')


def _unknown(errors, params, defaults):
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        errors.append(f'unknown parameter(s) {unknown}: allowed are {sorted(defaults)}')


def validate_train_parameters(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return ``(parameters with defaults filled in, errors)``; each error names the bad field."""
    errors: list[str] = []
    _unknown(errors, params, TRAIN_DEFAULTS)
    merged = {**TRAIN_DEFAULTS, **params}
    if not isinstance(merged['model'], Mapping):
        errors.append(f'`model` must be a mapping of hyperparameters, got {merged["model"]!r}')
    else:
        merged['model'] = {**TRAIN_DEFAULTS['model'], **merged['model']}
        _positive(errors, merged['model'], 'cutoff')
    for key in ('epochs', 'batch_size', 'patience', 'checkpoint_every', 'lr_patience'):
        _positive(errors, merged, key, kind=int)
    _positive(errors, merged, 'polish_steps', kind=int, allow_zero=True)
    for key in ('learning_rate', 'min_learning_rate'):
        _positive(errors, merged, key)
    _positive(errors, merged, 'weight_decay', allow_zero=True)
    _choice(errors, merged, 'precision', {'float64', 'model'})
    for key in ('energy_weight', 'forces_weight'):
        _positive(errors, merged, key, allow_zero=True)
    if not errors and merged['energy_weight'] == 0 and merged['forces_weight'] == 0:
        errors.append('`energy_weight` and `forces_weight` cannot both be zero')
    vf = merged['validation_fraction']
    if isinstance(vf, bool) or not isinstance(vf, int | float) or not 0 <= vf < 1:
        errors.append(f'`validation_fraction` must lie in [0, 1), got {vf!r}')
    _positive(errors, merged, 'seed', kind=int, allow_zero=True)
    _positive(errors, merged, 'max_time', allow_none=True)
    _choice(errors, merged, 'device', {'auto', 'cpu', 'cuda'})
    _choice(errors, merged, 'dtype', {'float32', 'float64'})
    return merged, errors


def validate_md_parameters(params: Mapping[str, Any], n_structures: int | None = None) -> tuple[dict, list[str]]:
    """Return ``(parameters with defaults filled in, errors)``; each error names the bad field.

    ``biases`` is a list of ``{'cv': {'type': ..., 'atoms': [...]}, 'centers': [...], 'kappa': float}`` (kappa in eV
    per CV unit squared; radians for angles), with one centre per replica; ``colvars`` lists extra CVs to record.
    ``temperature`` may be one value or one per replica.
    """
    errors: list[str] = []
    _unknown(errors, params, MD_DEFAULTS)
    merged = {**MD_DEFAULTS, **params}
    _choice(errors, merged, 'ensemble', {'nve', 'langevin'})
    for key in ('timestep', 'friction'):
        _positive(errors, merged, key)
    for key in ('steps', 'stride', 'checkpoint_every'):
        _positive(errors, merged, key, kind=int)
    _positive(errors, merged, 'seed', kind=int, allow_zero=True)
    for key in ('max_force_deviation', 'max_time'):
        _positive(errors, merged, key, allow_none=True)
    _positive(errors, merged, 'min_distance', allow_zero=True)
    _positive(errors, merged, 'max_energy_jump')
    temps = merged['temperature'] if isinstance(merged['temperature'], list | tuple) else [merged['temperature']]
    for t in temps:
        _positive(errors, {'temperature': t}, 'temperature', allow_zero=True)
    _choice(errors, merged, 'device', {'auto', 'cpu', 'cuda'})
    _choice(errors, merged, 'dtype', {'float32', 'float64'})
    timestep = merged['timestep']
    if isinstance(timestep, int | float) and timestep > 5.0:
        errors.append(f'`timestep` of {timestep} fs is too large for atomistic MD (at most 5 fs)')

    replicas = set()
    for k, bias in enumerate(merged['biases'] or []):
        where = f'`biases[{k}]`'
        if not isinstance(bias, Mapping) or set(bias) - {'cv', 'centers', 'kappa'} or 'cv' not in bias:
            errors.append(f'{where} must be a mapping with `cv`, `centers` and `kappa`, got {bias!r}')
            continue
        errors.extend(_cv_errors(bias['cv'], f'{where}.cv', n_atoms=None))
        centers = bias.get('centers')
        if not isinstance(centers, list | tuple) or not centers:
            errors.append(f'{where}.centers must be a non-empty list (one centre per replica), got {centers!r}')
        else:
            replicas.add(len(centers))
        _positive(errors, {'kappa': bias.get('kappa')}, 'kappa')
    for k, cv in enumerate(merged['colvars'] or []):
        errors.extend(_cv_errors(cv, f'`colvars[{k}]`', n_atoms=None))
    if len(replicas) > 1:
        errors.append(f'every bias needs the same number of centres (one per replica), got {sorted(replicas)}')
    if n_structures is not None and replicas and n_structures not in (1, *replicas):
        errors.append(f'{n_structures} structures for {replicas.pop()} bias centres: give one structure or one each')
    if isinstance(merged['temperature'], list | tuple) and n_structures is not None:
        n_rep = max([n_structures, *replicas])
        if len(merged['temperature']) not in (1, n_rep):
            errors.append(f'`temperature` has {len(merged["temperature"])} values for {n_rep} replicas')
    return merged, errors


def _cv_errors(cv, where: str, n_atoms: int | None) -> list[str]:
    if not isinstance(cv, Mapping) or cv.get('type') not in CV_ATOMS:
        return [f'{where} must be a mapping with `type` in {sorted(CV_ATOMS)} and `atoms`, got {cv!r}']
    atoms = cv.get('atoms')
    need = CV_ATOMS[cv['type']]
    if (
        not isinstance(atoms, list | tuple)
        or len(atoms) != need
        or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in atoms)
    ):
        return [f'{where}.atoms must be {need} atom indices for a {cv["type"]}, got {atoms!r}']
    return []
