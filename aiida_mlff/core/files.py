"""The job contract between a CalcJob and ``mlff-run`` on the (remote) computer.

A job directory holds ``job.json`` (the task and its validated parameters) and the input files the task needs;
``mlff-run`` writes ``summary.json`` (status, metrics, diagnostics) and the output files named here. Parsers read
only these files. Units: Å, eV, fs, K.
"""

from __future__ import annotations

import hashlib
import json
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
    'REPLAY_DATASET_FILE',
    'SUMMARY_FILE',
    'file_sha256',
    'read_json',
    'validate_md_parameters',
    'validate_train_parameters',
    'write_json',
]

JOB_FILE = 'job.json'
SUMMARY_FILE = 'summary.json'
DATASET_FILE = 'dataset.extxyz'
REPLAY_DATASET_FILE = 'replay_dataset.extxyz'  # the parent's data, scored before and after fine-tuning
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
def validate_train_parameters(params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return ``(parameters with defaults filled in, errors)`` by :data:`aiida_mlff.core.options.TRAIN`."""
    from .options import TRAIN

    return TRAIN.resolve(params, 'parameters')


def _metadynamics_errors(bias: Mapping, where: str) -> list[str]:
    """Problems of a job file's metadynamics bias (``aiida_mlff.core.enhanced.METAD_KEYS``)."""
    from .enhanced import METAD_KEYS

    errors = [f'{where}.{key}: unknown key' for key in bias if key not in METAD_KEYS]
    missing = [key for key in ('cvs', 'grid', 'height', 'widths', 'pace') if key not in bias]
    if missing:
        return [*errors, f'{where}: missing {", ".join(missing)}']
    cvs = bias['cvs'] if isinstance(bias['cvs'], list | tuple) else []
    if not 1 <= len(cvs) <= 2:
        errors.append(f'{where}.cvs: one or two CVs, got {bias["cvs"]!r}')
    for j, cv in enumerate(cvs):
        errors.extend(_cv_errors(cv, f'{where}.cvs[{j}]'))
    for key in ('grid', 'widths'):
        if not isinstance(bias[key], list | tuple) or len(bias[key]) != len(cvs):
            errors.append(f'{where}.{key}: one entry per CV, got {bias[key]!r}')
    walkers = bias.get('walkers', 1)
    if isinstance(walkers, bool) or not isinstance(walkers, int) or walkers < 1:
        errors.append(f'{where}.walkers: must be an integer >= 1, got {walkers!r}')
    return errors


def validate_md_parameters(params: Mapping[str, Any], n_structures: int | None = None) -> tuple[dict, list[str]]:
    """Return ``(parameters with defaults filled in, errors)`` by :data:`aiida_mlff.core.options.MD`.

    ``biases`` is a list of ``{'cv': {'type': ..., 'atoms': [...]}, 'centers': [...], 'kappa': float}`` (centres in
    the CV's internal unit, Å or radians; kappa in eV per internal unit squared), with one centre per replica;
    ``colvars`` lists extra CVs to record. ``temperature`` may be one value or one per replica.
    """
    from .options import MD

    merged, errors = MD.resolve(params, 'parameters')
    replicas = set()
    biases = merged['biases'] if isinstance(merged['biases'], list | tuple) else None
    if biases is None:
        errors.append(f'parameters.biases: must be a list of biases, got {merged["biases"]!r}')
    for k, bias in enumerate(biases or []):
        where = f'parameters.biases[{k}]'
        if isinstance(bias, Mapping) and bias.get('type') == 'metadynamics':
            errors.extend(_metadynamics_errors(bias, where))
            replicas.add(bias.get('walkers', 1))
            continue
        if not isinstance(bias, Mapping) or set(bias) - {'cv', 'centers', 'kappa'} or 'cv' not in bias:
            errors.append(f'{where}: must be a mapping with cv, centers and kappa, got {bias!r}')
            continue
        errors.extend(_cv_errors(bias['cv'], f'{where}.cv'))
        centers = bias.get('centers')
        if not isinstance(centers, list | tuple) or not centers:
            errors.append(f'{where}.centers: must be a non-empty list (one centre per replica), got {centers!r}')
        else:
            replicas.add(len(centers))
        kappa = bias.get('kappa')
        if isinstance(kappa, bool) or not isinstance(kappa, int | float) or not kappa > 0:
            errors.append(f'{where}.kappa: must be a positive number, got {kappa!r}')
    colvars = merged['colvars'] if isinstance(merged['colvars'], list | tuple) else None
    if colvars is None:
        errors.append(f'parameters.colvars: must be a list of CVs, got {merged["colvars"]!r}')
    for k, cv in enumerate(colvars or []):
        errors.extend(_cv_errors(cv, f'parameters.colvars[{k}]'))
    if len(replicas) > 1:
        errors.append(f'parameters.biases: every bias needs the same number of centres, got {sorted(replicas)}')
    exchange = merged.get('exchange')
    if isinstance(exchange, Mapping) and isinstance(exchange.get('pairs'), list | tuple) and len(replicas) == 1:
        n_rep = next(iter(replicas))
        beyond = [p for p in exchange['pairs'] if isinstance(p, list | tuple) and max(p, default=0) >= n_rep]
        if beyond:
            errors.append(f'parameters.exchange.pairs: {beyond[:3]} name replicas beyond the {n_rep} windows')
    if n_structures is not None and replicas and n_structures not in (1, *replicas):
        errors.append(f'{n_structures} structures for {replicas.pop()} bias centres: give one structure or one each')
    if isinstance(merged['temperature'], list | tuple) and n_structures is not None:
        n_rep = max([n_structures, *replicas])
        if len(merged['temperature']) not in (1, n_rep):
            errors.append(f'parameters.temperature: {len(merged["temperature"])} values for {n_rep} replicas')
    return merged, errors


def _cv_errors(cv, where: str) -> list[str]:
    from .colvars import cv_spec_errors

    return cv_spec_errors(cv, where=where)


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of the bytes of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open('rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
