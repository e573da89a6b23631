"""(e) Security of what runs on the compute node: job files stay in their folder; potentials load weights only."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

pytestmark = pytest.mark.deployment


def _write_unlabelled(path):
    from ase.build import molecule
    from ase.io import write

    atoms = molecule('H2O')
    atoms.center(vacuum=3.0)
    write(path, [atoms], format='extxyz')


@pytest.mark.parametrize('where', ['relative', 'absolute', 'symlink'])
@pytest.mark.parametrize(('task', 'key'), [('train', 'dataset'), ('md', 'structures'), ('md', 'potential')])
def test_job_file_cannot_point_outside_workdir(tmp_path, where, task, key):
    """A job file whose input path leaves the working directory is refused as bad input, before the file is read."""
    from aiida_mlff.core import files
    from aiida_mlff.core.run import main

    outside = tmp_path / 'secret.extxyz'
    _write_unlabelled(outside)
    workdir = tmp_path / 'work'
    workdir.mkdir()
    _write_unlabelled(workdir / 'structures.extxyz')
    name = {'relative': '../secret.extxyz', 'absolute': str(outside), 'symlink': 'link.extxyz'}[where]
    job = {'task': task, 'parameters': {}}
    if task == 'train':
        job['dataset'] = name
    else:
        import torch

        from aiida_mlff.core.models import Potential

        tiny = {'cutoff': 3.0, 'angular_cutoff': 2.5, 'hidden': [8], 'n_radial': 4, 'n_angular': 2, 'zetas': [1, 4]}
        Potential.build(['H', 'O'], committee=1, seed=0, dtype=torch.float64, **tiny).save(workdir / 'potential.pt')
        params = {'steps': 2, 'stride': 1, 'device': 'cpu', 'dtype': 'float64', 'temperature': 100.0}
        job.update({'potential': 'potential.pt', 'structures': 'structures.extxyz', 'parameters': params})
        job[key] = name
        if key == 'potential':
            other = Potential.build(['H', 'O'], committee=1, seed=1, dtype=torch.float64, **tiny)
            other.save(outside.with_suffix('.pt'))
            job[key] = name.replace('.extxyz', '.pt')
    if where == 'symlink':
        (workdir / job[key]).symlink_to(outside.with_suffix(Path(job[key]).suffix))
    (workdir / 'job.json').write_text(json.dumps(job))

    status = main([task, str(workdir / 'job.json')])
    summary = json.loads((workdir / files.SUMMARY_FILE).read_text())
    # Without the check, the outside file is used: training fails on its *content* ("structure 0 of ../secret.extxyz
    # has no energy and forces") and MD runs to the end (status 0) on the outside structures or potential.
    assert status == files.EXIT_BAD_INPUT, f'mlff-run {task} used {job[key]} from outside its working directory'
    assert 'points outside the job directory' in summary['error'], summary['error']


class _Payload:
    """Pickled, it calls ``Path.touch(marker)`` when unpickled: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_potential_with_pickle_payload_is_refused(tmp_path):
    """A ``.pt`` file (torch zip) with a ``__reduce__`` payload is refused and the payload does not run."""
    import torch

    from aiida_mlff.core.potential_io import FORMAT, PotentialFileError, load_potential

    marker = tmp_path / 'payload-ran'
    path = tmp_path / 'evil.pt'
    torch.save({'format': FORMAT, 'state_dict': {}, 'extra': _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(PotentialFileError):
        load_potential(path)
    assert not marker.exists(), 'the pickle payload ran while loading a potential'


def test_plain_pickle_as_potential_is_refused(tmp_path):
    """A plain pickle (not a torch archive) named ``.pt`` is refused without unpickling it."""
    from aiida_mlff.core.potential_io import PotentialFileError, load_potential

    marker = tmp_path / 'payload-ran'
    path = tmp_path / 'evil.pt'
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PotentialFileError):
        load_potential(path)
    assert not marker.exists(), 'the pickle payload ran while loading a potential'
