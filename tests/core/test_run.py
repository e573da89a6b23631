"""``mlff-run`` as a program: bad input, a killed training that resumes, an MD run that continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from aiida_mlff.core import files
from aiida_mlff.core.models import Potential
from aiida_mlff.core.sampling import rattle

TINY = {'cutoff': 3.0, 'angular_cutoff': 2.5, 'hidden': [8], 'n_radial': 4, 'n_angular': 2, 'zetas': [1, 4]}


def labelled_water(n: int = 16):
    base = molecule('H2O')
    base.center(vacuum=3.0)
    frames = rattle(base, n=n, stdev=0.05, seed=3)
    for atoms in frames:
        d = atoms.positions - base.positions
        atoms.calc = SinglePointCalculator(atoms, energy=float(5.0 * (d**2).sum()), forces=-10.0 * d)
    return frames


def mlff_run(workdir: Path, task: str, job: dict, background: bool = False):
    files.write_json(workdir / files.JOB_FILE, job)
    cmd = [sys.executable, '-m', 'aiida_mlff.core.run', task, files.JOB_FILE]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    if background:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False)


def train_job(**changes):
    params = {'model': TINY, 'epochs': 40, 'batch_size': 4, 'device': 'cpu', 'dtype': 'float64', 'seed': 2}
    params.update(changes)
    return {'task': 'train', 'dataset': files.DATASET_FILE, 'parameters': params}


@pytest.fixture
def train_dir(tmp_path):
    write(tmp_path / files.DATASET_FILE, labelled_water(), format='extxyz')
    return tmp_path


def test_bad_input_writes_a_summary_naming_the_field(train_dir):
    result = mlff_run(train_dir, 'train', train_job(batch_size=0))
    assert result.returncode == files.EXIT_BAD_INPUT
    summary = files.read_json(train_dir / files.SUMMARY_FILE)
    assert 'parameters.batch_size: must be an integer >= 1, got 0' in summary['error']


def test_wrong_task_is_bad_input(train_dir):
    result = mlff_run(train_dir, 'md', train_job())
    assert result.returncode == files.EXIT_BAD_INPUT
    assert "not 'md'" in files.read_json(train_dir / files.SUMMARY_FILE)['error']


def test_killed_training_resumes_from_its_checkpoint(train_dir, tmp_path_factory):
    # reference: the same training, never interrupted
    reference_dir = tmp_path_factory.mktemp('reference')
    write(reference_dir / files.DATASET_FILE, labelled_water(), format='extxyz')
    assert mlff_run(reference_dir, 'train', train_job(checkpoint_every=2)).returncode == 0
    reference = files.read_json(reference_dir / files.LEARNING_CURVE_FILE)

    process = mlff_run(train_dir, 'train', train_job(checkpoint_every=2), background=True)
    checkpoint = train_dir / files.CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    epochs_at_kill = 0
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists():
            try:
                epochs_at_kill = torch.load(checkpoint, weights_only=True)['state']['epoch']
            except Exception:  # the file may be half-replaced at this instant
                epochs_at_kill = 0
            if epochs_at_kill >= 4:
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epochs_at_kill = torch.load(checkpoint, weights_only=True)['state']['epoch']
    assert 0 < epochs_at_kill < 40, 'the kill must land mid-training'
    assert not (train_dir / files.POTENTIAL_FILE).exists()

    job = train_job(checkpoint_every=2)
    job['resume'] = True
    result = mlff_run(train_dir, 'train', job)
    assert result.returncode == 0, result.stderr
    resumed = files.read_json(train_dir / files.LEARNING_CURVE_FILE)
    # the second run did only the remaining epochs: its history starts with the epochs of the killed run
    assert resumed['epoch'][:epochs_at_kill] == list(range(1, epochs_at_kill + 1))
    assert resumed['epoch'] == reference['epoch']
    np.testing.assert_allclose(resumed['train_loss'], reference['train_loss'], rtol=1e-10)
    assert files.read_json(train_dir / files.SUMMARY_FILE)['epoch'] == reference['epoch'][-1]


def test_resume_without_checkpoint_is_bad_input(train_dir):
    job = train_job()
    job['resume'] = True
    assert mlff_run(train_dir, 'train', job).returncode == files.EXIT_BAD_INPUT


def test_md_walltime_then_continue(tmp_path):
    pot = Potential.build(['H', 'O'], committee=2, seed=0, dtype=torch.float64, **TINY)
    pot.save(tmp_path / files.POTENTIAL_FILE)
    water = molecule('H2O')
    water.center(vacuum=3.0)
    write(tmp_path / files.STRUCTURES_FILE, [water, water], format='extxyz')
    params = {
        'steps': 60,
        'stride': 5,
        'checkpoint_every': 20,
        'max_time': 1e-6,  # stop after the first chunk, as at a walltime
        'device': 'cpu',
        'dtype': 'float64',
        'temperature': 100.0,
    }
    job = {'task': 'md', 'potential': files.POTENTIAL_FILE, 'structures': files.STRUCTURES_FILE, 'parameters': params}
    result = mlff_run(tmp_path, 'md', job)
    assert result.returncode == files.EXIT_WALLTIME, result.stderr
    first = json.loads((tmp_path / files.SUMMARY_FILE).read_text())
    assert first['steps_done'] == 20
    with np.load(tmp_path / files.TRAJECTORY_FILE) as data:
        assert data['step'].tolist() == [0, 5, 10, 15, 20]

    job['parameters'] = {**params, 'max_time': None}
    job['resume'] = True
    result = mlff_run(tmp_path, 'md', job)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / files.TRAJECTORY_FILE) as data:
        assert data['step'].tolist() == list(range(0, 61, 5))
        assert data['positions'].shape == (13, 2, 3, 3)
        assert np.isfinite(data['total_energy']).all()


@pytest.mark.parametrize('name', ['../outside.extxyz', '/etc/passwd', 'sub/../../x.extxyz'])
def test_job_files_cannot_point_outside_the_job_directory(train_dir, name):
    job = train_job()
    job['dataset'] = name
    result = mlff_run(train_dir, 'train', job)
    assert result.returncode == files.EXIT_BAD_INPUT
    assert 'outside the job directory' in files.read_json(train_dir / files.SUMMARY_FILE)['error']


@pytest.mark.parametrize(
    ('content', 'expected'),
    [
        ('{"task": "train", "dataset": ', 'is not valid JSON'),
        ('[1, 2]', 'holds an array, expected a JSON object'),
        ('"train"', 'holds a string, expected a JSON object'),
        ('{"dataset": "dataset.extxyz"}', 'has no `task`'),
        ('{"task": "train"}', '`dataset` is missing'),
        (
            '{"task": "train", "dataset": 3, "parameters": [1], "resume": "yes"}',
            '`dataset` must be a string, got 3; `parameters` must be an object, got [1]; '
            "`resume` must be true or false, got 'yes'",
        ),
        ('{"task": "md", "potential": "p.pt"}', "not 'train'"),
        ('\udcff', 'cannot be read'),
    ],
)
def test_malformed_job_file_is_bad_input(tmp_path, monkeypatch, capsys, content, expected):
    from aiida_mlff.core.run import main

    (tmp_path / files.JOB_FILE).write_bytes(content.encode('utf-8', 'surrogateescape'))
    monkeypatch.chdir(tmp_path)
    assert main(['train', files.JOB_FILE]) == files.EXIT_BAD_INPUT
    summary = files.read_json(tmp_path / files.SUMMARY_FILE)
    assert summary['exit_status'] == files.EXIT_BAD_INPUT
    assert expected in summary['error']
    assert files.JOB_FILE in summary['error']
    err = capsys.readouterr().err
    assert expected in err
    assert 'Traceback' not in err


def test_md_job_without_its_files_names_them(tmp_path, monkeypatch, capsys):
    from aiida_mlff.core.run import main

    files.write_json(tmp_path / files.JOB_FILE, {'task': 'md', 'structure_keys': 'a'})
    monkeypatch.chdir(tmp_path)
    assert main(['md']) == files.EXIT_BAD_INPUT
    error = files.read_json(tmp_path / files.SUMMARY_FILE)['error']
    assert '`structures` is missing; `potential` is missing; `structure_keys` must be a list' in error
    assert 'Traceback' not in capsys.readouterr().err


def test_job_file_that_is_a_folder_or_missing(tmp_path, capsys):
    from aiida_mlff.core.run import main

    assert main(['train', str(tmp_path)]) == files.EXIT_BAD_INPUT
    assert 'is a directory' in files.read_json(tmp_path / files.SUMMARY_FILE)['error']
    assert main(['train', str(tmp_path / 'missing' / files.JOB_FILE)]) == files.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert 'does not exist' in err
    assert 'Traceback' not in err


def test_npt_job_records_the_cell_of_every_frame(tmp_path):
    """An NPT job writes each frame's cell, volume and pressure, and ends in the cell it reached."""
    from aiida_mlff.core.solvate import solvate

    pot = Potential.build(['H', 'O'], seed=0, dtype=torch.float64, **TINY)
    pot.save(tmp_path / files.POTENTIAL_FILE)
    box = solvate(molecule('H2O'), n_waters=7, density=1.0, seed=0)
    write(tmp_path / files.STRUCTURES_FILE, [box], format='extxyz')
    params = {
        'ensemble': 'npt',
        'steps': 20,
        'stride': 5,
        'timestep': 0.5,
        'tau_p': 20.0,
        'device': 'cpu',
        'dtype': 'float64',
        'temperature': 300.0,
    }
    job = {'task': 'md', 'potential': files.POTENTIAL_FILE, 'structures': files.STRUCTURES_FILE, 'parameters': params}
    result = mlff_run(tmp_path, 'md', job)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / files.TRAJECTORY_FILE) as data:
        cells, volume, pressure = data['frame_cells'], data['volume'], data['pressure']
    assert cells.shape == (5, 1, 3, 3)
    np.testing.assert_allclose(volume, np.abs(np.linalg.det(cells)), rtol=1e-10)
    assert abs(volume[-1, 0] / volume[0, 0] - 1) > 1e-6  # the cell moved
    assert np.isfinite(pressure).all()
    final = ase.io.read(tmp_path / files.FINAL_STRUCTURES_FILE)
    np.testing.assert_allclose(final.cell.array, cells[-1, 0], atol=1e-8)
