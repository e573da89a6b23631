"""``mlff-run``: the executable a CalcJob runs on the (remote) computer.

``mlff-run train job.json`` and ``mlff-run md job.json`` read the job file and its input files from the working
directory, write outputs and ``summary.json``, and exit with the statuses of :mod:`aiida_mlff.core.files`.
The device is ``auto`` by default: CUDA when present, else the CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from . import files

__all__ = ['JOB_FIELDS', 'main', 'read_job', 'run_md', 'run_train']


class BadInputError(ValueError):
    """The job file or an input file is unusable; the message names what is wrong."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is bad input."""
    import torch

    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise BadInputError('`device` is cuda, but no CUDA device is available on this machine')
    return name


def inside(workdir: Path, name: object, field: str) -> Path:
    """Return ``workdir / name`` after checking that it stays inside ``workdir`` (no absolute paths, no ``..``)."""
    if not isinstance(name, str) or not name:
        raise BadInputError(f'`{field}` must be a file name in the job directory, got {name!r}')
    path = (workdir / name).resolve()
    if Path(name).is_absolute() or workdir.resolve() not in path.parents:
        raise BadInputError(f'`{field}` = {name!r} points outside the job directory: only files inside it are read')
    return path


def configure_threads(n_atoms: int) -> int:
    """Set torch's CPU threads: ``MLFF_THREADS`` if set, else 1 below 2000 atoms in the batch, else up to 4.

    Small batches gain nothing from more threads, and on a loaded machine extra threads slow them down many times.
    """
    import os

    import torch

    wanted = os.environ.get('MLFF_THREADS')
    threads = int(wanted) if wanted else (1 if n_atoms < 2000 else min(4, os.cpu_count() or 1))
    torch.set_num_threads(max(1, threads))
    return threads


def _dtype(name: str):
    import torch

    return {'float32': torch.float32, 'float64': torch.float64}[name]


# ------------------------------------------------------------------------------------------------------- md
def run_md(job: dict[str, Any], workdir: Path) -> int:
    """Run the MD job in ``workdir`` in chunks, checkpointing the state; return the exit status."""
    from ase.io import read, write

    from .md import MDState, simulate
    from .models import Potential

    params, errors = files.validate_md_parameters(job.get('parameters', {}))
    if errors:
        raise BadInputError('; '.join(errors))
    started = time.monotonic()
    device = resolve_device(params['device'])
    dtype = _dtype(params['dtype'])
    potential = Potential.load(inside(workdir, job.get('potential'), 'potential'), device=device).to(dtype)
    structures = read(inside(workdir, job.get('structures'), 'structures'), index=':', format='extxyz')
    biases_spec = params['biases'] or []
    n_centres = _replicas_of(biases_spec)
    configure_threads(sum(len(s) for s in structures) * max(1, n_centres))
    keys = list(job.get('structure_keys') or range(len(structures)))
    from .colvars import cv_from_spec
    from .enhanced import bias_from_spec

    temperature = params['temperature'] if not isinstance(params['temperature'], list) else params['temperature'][0]
    biases = [bias_from_spec(b, temperature) for b in biases_spec]
    exchange = None
    if params['exchange'] is not None:
        from .md.exchange import ReplicaExchange

        exchange = ReplicaExchange([tuple(p) for p in params['exchange']['pairs']], params['exchange']['every'])
    extra = [cv_from_spec(cv) for cv in params['colvars'] or []]
    for structure in structures:
        for cv in [cv for b in biases for cv in b.cvs] + extra:
            if max(cv.atoms) >= len(structure):
                raise BadInputError(f'{cv.name} uses atom {max(cv.atoms)}, but a structure has {len(structure)} atoms')
    steering = None
    if n_centres and len(structures) == 1:
        if params['steer_steps'] and not job.get('resume') and hasattr(biases[0], 'centers'):
            structures, steering = _steered(potential, structures[0], biases[0], params, device, dtype)
        else:
            structures = [structures[0].copy() for _ in range(n_centres)]
        keys = [keys[0]] * n_centres

    checkpoint = workdir / files.MD_CHECKPOINT_FILE
    state = None
    if job.get('resume'):
        if not checkpoint.exists():
            raise BadInputError(f'resume asked for, but {files.MD_CHECKPOINT_FILE} is missing')
        state = MDState.load(checkpoint, device=device, dtype=dtype)
    done = int(state.step) if state is not None else 0
    previous = workdir / files.TRAJECTORY_FILE
    chunks: list = []
    if job.get('resume') and previous.exists():
        with np.load(previous) as data:
            chunks.append({k: data[k] for k in data.files})

    total = params['steps']
    chunk_steps = math.ceil(params['checkpoint_every'] / params['stride']) * params['stride']
    common = {
        'ensemble': params['ensemble'],
        'timestep': params['timestep'],
        'temperature': params['temperature'],
        'friction': params['friction'],
        'pressure': params['pressure'],
        'compressibility': params['compressibility'],
        'tau_p': params['tau_p'],
        'barostat_mode': params['barostat_mode'],
        'biases': biases,
        'exchange': exchange,
        'colvars': extra,
        'stride': params['stride'],
        'seed': params['seed'],
        'device': device,
        'dtype': dtype,
        'max_force_deviation': params['max_force_deviation'],
        'min_distance': params['min_distance'],
        'max_energy_jump': params['max_energy_jump'],
    }
    result = None
    walltime = False
    while done < total:
        n = min(chunk_steps, total - done)
        result = simulate(potential, structures if state is None else None, steps=n, state=state, **common)
        state = result.final_state
        chunks.append(_result_arrays(result))
        done += n
        state.save(checkpoint)
        _write_md_outputs(workdir, chunks, result, structures, keys, params, biases, done, started, device)
        if all(s != 'ok' for s in result.status):
            break
        if params['max_time'] is not None and time.monotonic() - started > params['max_time'] and done < total:
            walltime = True
            break
    if result is None:  # zero steps asked for
        result = simulate(potential, structures, steps=0, **common)
        chunks.append(_result_arrays(result))
        _write_md_outputs(workdir, chunks, result, structures, keys, params, biases, done, started, device)
    if potential.committee_size > 1:
        _add_member_energies(workdir, potential, structures, device, dtype)
    blown = [i for i, s in enumerate(result.status) if s == 'blown_up']
    status = files.EXIT_UNSTABLE_MD if blown else files.EXIT_WALLTIME if walltime else files.EXIT_OK
    summary = files.read_json(workdir / files.SUMMARY_FILE)
    summary['exit_status'] = status
    if steering is not None:
        summary['steering'] = steering
    if blown:
        summary['error'] = '; '.join(result.diagnostic[i] for i in blown)
    files.write_json(workdir / files.SUMMARY_FILE, summary)
    write(workdir / files.FINAL_STRUCTURES_FILE, _final_structures(result, structures), format='extxyz')
    return status


def _replicas_of(biases_spec: list[dict]) -> int:
    """Replicas the biases ask for: the centres of a harmonic bias, the walkers of metadynamics (0: none)."""
    for spec in biases_spec:
        if spec.get('type') == 'metadynamics':
            return int(spec.get('walkers', 1))
        return len(spec['centers'])
    return 0


def _steered(potential, atoms, bias, params: dict, device: str, dtype) -> tuple[list, dict]:
    """One start per bias centre, pulled there by restrained MD from its nearest neighbour (``steer_steps`` each).

    Only the first bias is steered. Returns the starts and what the pulls reached (achieved CV value per window, the
    windows that fell back to a neighbour's structure), which goes into the summary.
    """
    from .steering import steered_starts

    temperature = params['temperature']
    temperature = float(temperature[0] if isinstance(temperature, list | tuple) else temperature)
    starts, info = steered_starts(
        potential,
        atoms,
        bias.cv,
        bias.centers.tolist(),
        kappa=float(bias.kappa.max()),
        temperature=temperature,
        timestep=float(params['timestep']),
        steps_per_window=int(params['steer_steps']),
        friction=float(params['friction']),
        min_distance=float(params['min_distance']),
        seed=int(params['seed']),
        device=device,
        dtype=dtype,
    )
    return starts, info


def _add_member_energies(workdir: Path, potential, structures, device: str, dtype, chunk: int = 1024) -> None:
    """Add ``member_energies`` (frames, replicas, M) in eV to the trajectory file (NaN for stopped frames).

    Free energies per committee member are then obtained by reweighting, without extra MD.
    """
    import torch
    from ase import Atoms

    from .atoms import AtomsBatch

    path = workdir / files.TRAJECTORY_FILE
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    positions, mask = arrays['positions'], arrays['atom_mask']
    n_frames, n_rep = positions.shape[:2]
    out = np.full((n_frames, n_rep, potential.committee_size), np.nan)
    todo = [(f, r) for f in range(n_frames) for r in range(n_rep) if np.isfinite(positions[f, r, mask[r]]).all()]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        frames = [
            Atoms(
                numbers=structures[r].numbers,
                positions=positions[f, r, mask[r]],
                cell=arrays['frame_cells'][f, r] if 'frame_cells' in arrays else structures[r].cell,
                pbc=structures[r].pbc,
            )
            for f, r in part
        ]
        batch = AtomsBatch.from_atoms(frames, dtype=dtype, device=device)
        with torch.no_grad():
            energies = potential.evaluate(batch, forces=False)['energies'].double().cpu().numpy()  # (M, B)
        for k, (f, r) in enumerate(part):
            out[f, r] = energies[:, k]
    arrays['member_energies'] = out
    tmp = workdir / (files.TRAJECTORY_FILE + '.tmp.npz')
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def _result_arrays(result) -> dict[str, np.ndarray]:
    arrays = {
        'step': np.asarray(result.step),
        'time': np.asarray(result.time),
        'positions': result.positions,
        'atom_mask': result.atom_mask,
        'numbers': result.numbers,
        'colvars': result.colvars,
        'max_force_deviation': result.max_force_deviation,
        'energy_std': result.energy_std,
        'flagged': result.flagged,
        'walker': result.walker,
    }
    for key in ('potential_energy', 'bias_energy', 'kinetic_energy', 'total_energy', 'temperature'):
        arrays[key] = getattr(result, key)
    # the cell of every frame (F, R, 3, 3) Å and its volume (F, R) Å^3: they move under NPT; NPT adds the
    # instantaneous pressure (F, R) bar
    for key, name in (('cell', 'frame_cells'), ('volume', 'volume'), ('pressure', 'pressure')):
        if key in result.extra:
            arrays[name] = result.extra[key]
    return arrays


def _concatenate(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    merged = {}
    for key in chunks[-1]:
        if key in ('atom_mask', 'numbers'):
            merged[key] = chunks[-1][key]
        else:
            merged[key] = np.concatenate([c[key] for c in chunks], axis=0)
    return merged


def _final_structures(result, structures):
    from ase import Atoms

    frames = []
    positions = result.final_state.batch.positions.detach().cpu().numpy()
    cells = result.final_state.batch.cell.detach().cpu().double().numpy()  # NPT: the cell the run ended in
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in structures])])
    for r, structure in enumerate(structures):
        atoms = Atoms(
            numbers=structure.numbers,
            positions=positions[offsets[r] : offsets[r + 1]],
            cell=cells[r],
            pbc=structure.pbc,
        )
        frames.append(atoms)
    return frames


def _write_md_outputs(workdir, chunks, result, structures, keys, params, biases, done, started, device) -> None:
    arrays = _concatenate(chunks)
    arrays['cells'] = np.stack([s.cell.array for s in structures])
    arrays['pbc'] = np.stack([s.pbc for s in structures])
    harmonic = [b for b in biases if hasattr(b, 'centers')]
    if harmonic:
        arrays['centers'] = np.stack([b.centers.numpy() for b in harmonic], axis=-1)
    for b in biases:
        if hasattr(b, 'ct_at'):  # metadynamics: c(t) per frame, the final bias on its grid and every hill
            arrays['metad_ct'] = b.ct_at(arrays['step'])
            arrays['metad_bias'] = b.bias_on_grid()
            arrays['metad_grid'] = np.asarray(b.grid_spec, dtype=float)
            arrays.update({f'metad_hills_{k}': v for k, v in b.hills().items()})
    tmp = workdir / (files.TRAJECTORY_FILE + '.tmp.npz')
    np.savez_compressed(tmp, **arrays)
    tmp.replace(workdir / files.TRAJECTORY_FILE)
    files.write_json(
        workdir / files.SUMMARY_FILE,
        {
            'exit_status': files.EXIT_OK,
            'status': list(result.status),
            'diagnostic': list(result.diagnostic),
            'stop_step': [int(s) for s in result.stop_step],
            'replica_structures': [str(k) for k in keys],
            'colvar_names': list(result.colvar_names),
            'kappa': [b.kappa.tolist() for b in harmonic] or None,
            'temperature': params['temperature'],
            'steps_done': done,
            'wall_time': time.monotonic() - started,
            'device': device,
            'n_neighbor_builds': int(result.n_neighbor_builds),
            'exchange': _exchange_summary(result.exchange),
        },
    )


def _exchange_summary(exchange: dict | None) -> dict | None:
    """The replica-exchange counts of a run for the JSON summary (acceptance NaN -> None)."""
    if exchange is None:
        return None
    acceptance = [float(a) if np.isfinite(a) else None for a in exchange['acceptance']]
    return {
        'every': int(exchange['every']),
        'pairs': np.asarray(exchange['pairs']).tolist(),
        'attempts': np.asarray(exchange['attempts']).tolist(),
        'accepted': np.asarray(exchange['accepted']).tolist(),
        'acceptance': acceptance,
    }


# ---------------------------------------------------------------------------------------------------- train
def run_train(job: dict[str, Any], workdir: Path) -> int:
    """Train one potential (possibly a committee trained in one batched pass) in ``workdir``; return the status."""
    from ase.io import read

    from .models import Potential
    from .training import JOB_ONLY, train

    params, errors = files.validate_train_parameters(job.get('parameters', {}))
    if errors:
        raise BadInputError('; '.join(errors))
    started = time.monotonic()
    device = resolve_device(params['device'])
    dtype = _dtype(params['dtype'])
    frames = read(inside(workdir, job.get('dataset'), 'dataset'), index=':', format='extxyz')
    if not frames:
        raise BadInputError(f'{job["dataset"]} holds no structures')
    for k, atoms in enumerate(frames):
        if atoms.calc is None or 'energy' not in atoms.calc.results or 'forces' not in atoms.calc.results:
            raise BadInputError(f'structure {k} of {job["dataset"]} has no energy and forces')
    elements = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    configure_threads(params['batch_size'] * max(len(a) for a in frames))
    if job.get('parent_potential'):
        pot = _parent_potential(job, params, elements, workdir, device, dtype)
    else:
        model = dict(params['model'])
        pot = Potential.build(elements, seed=params['seed'], dtype=dtype, device=device, **model)
    replay = _replay_frames(job, workdir)
    if params.get('replay_fraction', 0) > 0 and replay is None:
        raise BadInputError("training.replay_fraction > 0 needs a replay_dataset (the parent potential's data)")
    checkpoint = workdir / files.CHECKPOINT_FILE
    if job.get('resume') and not checkpoint.exists():
        raise BadInputError(f'resume asked for, but {files.CHECKPOINT_FILE} is missing')
    options = {key: value for key, value in params.items() if key not in JOB_ONLY}
    report = train(pot, frames, checkpoint=checkpoint, replay=replay, **options)
    curve = report['learning_curve']
    columns = sorted({key for row in curve for key in row})
    files.write_json(workdir / files.LEARNING_CURVE_FILE, {key: [row.get(key) for row in curve] for key in columns})
    summary = {
        'epoch': report['epochs_run'],
        'best_epoch': report['best_epoch'],
        'metrics': {'train': report['train'], 'validation': report['validation']},
        'statistics': report['statistics'],
        'device': device,
        'n_structures': len(frames),
        'elements': elements,
        'committee_size': pot.committee_size,
        'wall_time': time.monotonic() - started,
    }
    if 'replay' in report:
        summary['metrics']['replay'] = report['replay']
    bad = next((row['epoch'] for row in curve if not math.isfinite(row['train_loss'])), None)
    if bad is not None:
        summary.update(exit_status=files.EXIT_NAN_LOSS, epoch=bad, metrics=None)
        files.write_json(workdir / files.SUMMARY_FILE, summary)
        return files.EXIT_NAN_LOSS
    if not report['finished']:
        summary['exit_status'] = files.EXIT_WALLTIME
        files.write_json(workdir / files.SUMMARY_FILE, summary)
        return files.EXIT_WALLTIME
    pot.save(workdir / files.POTENTIAL_FILE)
    summary['exit_status'] = files.EXIT_OK
    files.write_json(workdir / files.SUMMARY_FILE, summary)
    return files.EXIT_OK


def _parent_potential(job: dict, params: dict, elements: list[str], workdir: Path, device: str, dtype):
    """The potential a training starts from (fine-tuning): the parent file, resized to the committee asked for."""
    from .finetune import resize_committee
    from .models import Potential

    pot = Potential.load(inside(workdir, job['parent_potential'], 'parent_potential'), device=device).to(dtype)
    unknown = sorted(set(elements) - set(pot.elements))
    if unknown:
        raise BadInputError(f'the parent potential knows {pot.elements}, the dataset also has {unknown}')
    model = params['model']
    asked = model.get('architecture')
    if asked is not None and asked != pot.hyperparameters()['architecture']:
        raise BadInputError(
            f'model.architecture is {asked!r} but the parent potential is {pot.hyperparameters()["architecture"]!r}'
        )
    if model.get('committee') is not None:
        pot = resize_committee(pot, int(model['committee']), seed=params['seed'])
    return pot


def _replay_frames(job: dict, workdir: Path) -> list | None:
    """The labelled frames of ``replay_dataset`` (the parent's data, scored before and after), or None."""
    from ase.io import read

    if not job.get('replay_dataset'):
        return None
    frames = read(inside(workdir, job['replay_dataset'], 'replay_dataset'), index=':', format='extxyz')
    if not frames:
        raise BadInputError(f'{job["replay_dataset"]} holds no structures')
    return frames


# ----------------------------------------------------------------------------------------------------- main
#: The fields of a job file by task: ``name: (JSON type, required)``. ``parameters`` are checked by the task itself.
JOB_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    'train': {
        'dataset': (str, True),
        'parameters': (dict, False),
        'parent_potential': (str, False),
        'replay_dataset': (str, False),
        'resume': (bool, False),
    },
    'md': {
        'structures': (str, True),
        'potential': (str, True),
        'structure_keys': (list, False),
        'parameters': (dict, False),
        'resume': (bool, False),
    },
}
_JSON_TYPES = {str: 'a string', dict: 'an object', list: 'a list', bool: 'true or false'}


def read_job(path: str | Path, task: str) -> dict[str, Any]:
    """Read and check the job file of ``task``; raise :class:`BadInputError` naming every bad field.

    A field set to ``null`` counts as absent (and is dropped from the returned job).
    """
    import json

    try:
        text = Path(path).read_text(encoding='utf-8')
    except FileNotFoundError:
        raise BadInputError(f'the job file {path} does not exist') from None
    except IsADirectoryError:
        raise BadInputError(f'the job file {path} is a directory, not a file') from None
    except (OSError, UnicodeDecodeError) as exception:
        raise BadInputError(f'the job file {path} cannot be read: {exception}') from None
    try:
        job = json.loads(text)
    except json.JSONDecodeError as exception:
        raise BadInputError(
            f'the job file {path} is not valid JSON: {exception.msg} '
            f'(line {exception.lineno}, column {exception.colno})'
        ) from None
    if not isinstance(job, dict):
        kind = {list: 'an array', str: 'a string', bool: 'a boolean', type(None): 'null'}.get(type(job), 'a number')
        raise BadInputError(f'the job file {path} holds {kind}, expected a JSON object with a `task`')
    if 'task' not in job:
        raise BadInputError(f'the job file {path} has no `task` (expected {task!r})')
    if job['task'] != task:
        raise BadInputError(f'the job file {path} is for task {job["task"]!r}, not {task!r}')
    job = {key: value for key, value in job.items() if value is not None}
    errors = []
    for name, (kind, required) in JOB_FIELDS[task].items():
        if name not in job:
            if required:
                errors.append(f'`{name}` is missing')
        elif not isinstance(job[name], kind) or (kind is not bool and isinstance(job[name], bool)):
            errors.append(f'`{name}` must be {_JSON_TYPES[kind]}, got {job[name]!r}')
    if errors:
        raise BadInputError(f'the job file {path}: ' + '; '.join(errors))
    return job


def _write_summary(workdir: Path, content: dict[str, Any]) -> None:
    """Write ``summary.json``, or say on stderr why it cannot be written (e.g. the job's folder does not exist)."""
    try:
        files.write_json(workdir / files.SUMMARY_FILE, content)
    except OSError as exception:
        print(f'mlff-run: cannot write {files.SUMMARY_FILE} in {workdir}: {exception}', file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlff-run`` console script.

    Exit statuses are those of :mod:`aiida_mlff.core.files`: an unreadable or malformed job file, or a bad field or
    input file, is bad input (2) with ``summary.json`` saying what is wrong, never a crash (1).
    """
    parser = argparse.ArgumentParser(prog='mlff-run', description=__doc__.splitlines()[0])
    parser.add_argument('task', choices=['train', 'md'])
    parser.add_argument('job', nargs='?', default=files.JOB_FILE, help='the job file (default: job.json)')
    args = parser.parse_args(argv)
    from .potential_io import PotentialFileError

    job_path = Path(args.job).resolve()
    workdir = job_path if job_path.is_dir() else job_path.parent  # a folder given as the job: the summary goes in it
    try:
        job = read_job(args.job, args.task)
        runner = run_train if args.task == 'train' else run_md
        status = runner(job, workdir)
    except (BadInputError, FileNotFoundError, PotentialFileError) as exception:
        _write_summary(workdir, {'exit_status': files.EXIT_BAD_INPUT, 'error': str(exception)})
        print(f'mlff-run: bad input: {exception}', file=sys.stderr)
        return files.EXIT_BAD_INPUT
    except Exception as exception:
        traceback.print_exc()
        _write_summary(workdir, {'exit_status': files.EXIT_CRASH, 'error': f'{type(exception).__name__}: {exception}'})
        return files.EXIT_CRASH
    print(f'mlff-run {args.task}: finished with status {status}')
    return status


if __name__ == '__main__':
    sys.exit(main())
