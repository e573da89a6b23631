"""What ``mlff.train`` and ``mlff.md`` write for ``mlff-run``, and the input checks before submission."""

from __future__ import annotations

import json

import pytest
from aiida import orm
from aiida.plugins import CalculationFactory
from ase.build import molecule
from ase.io import read

from aiida_mlff.core.models import Potential
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData

TrainCalculation = CalculationFactory('mlff.train')
MdCalculation = CalculationFactory('mlff.md')
TINY = {'cutoff': 3.0, 'angular_cutoff': 2.5, 'hidden': [8], 'n_radial': 4, 'n_angular': 2, 'zetas': [1, 4]}


@pytest.fixture
def potential_node(tmp_path):
    pot = Potential.build(['H', 'O'], committee=2, seed=0, **TINY)
    return PotentialData(pot.save(tmp_path / 'pot.pt')).store()


@pytest.fixture
def water_structure():
    atoms = molecule('H2O')
    atoms.center(vacuum=3.0)
    return orm.StructureData(ase=atoms)


def test_train_writes_job_and_dataset(mlff_environment, labelled_frames, prepare, file_regression):
    dataset = TrainingSetData(labelled_frames).store()
    parameters = orm.Dict({'model': {'cutoff': 3.5, 'committee': 2}, 'epochs': 20, 'seed': 4})
    folder, calcinfo = prepare(
        TrainCalculation,
        code=mlff_environment['mlff_code'],
        dataset=dataset,
        parameters=parameters,
        metadata={'options': {'resources': {'num_machines': 1}}},
    )
    file_regression.check((folder / 'job.json').read_text(), extension='.json')
    frames = read(folder / 'dataset.extxyz', index=':')
    assert len(frames) == 4
    assert frames[2].get_potential_energy() == pytest.approx(labelled_frames[2].get_potential_energy())
    assert calcinfo.codes_info[0].cmdline_params == ['train', 'job.json']
    assert set(calcinfo.retrieve_list) >= {'summary.json', 'potential.pt', 'learning_curve.json'}
    assert calcinfo.local_copy_list == []


def test_train_copies_parent_potential(mlff_environment, labelled_frames, prepare, potential_node):
    folder, calcinfo = prepare(
        TrainCalculation,
        code=mlff_environment['mlff_code'],
        dataset=TrainingSetData(labelled_frames).store(),
        parameters=orm.Dict({'epochs': 5}),
        parent_potential=potential_node,
    )
    assert calcinfo.local_copy_list == [(potential_node.uuid, 'potential.pt', 'parent_potential.pt')]
    assert json.loads((folder / 'job.json').read_text())['parent_potential'] == 'parent_potential.pt'


def test_train_parameters_are_checked_before_submission(mlff_environment, labelled_frames, prepare):
    with pytest.raises(ValueError, match=r'parameters\.learning_rate: must be a number > 0') as info:
        prepare(
            TrainCalculation,
            code=mlff_environment['mlff_code'],
            dataset=TrainingSetData(labelled_frames).store(),
            parameters=orm.Dict({'learning_rate': -1.0, 'bogus': 1}),
        )
    assert 'parameters.bogus: unknown option' in str(info.value)


def test_md_writes_job_and_structures(mlff_environment, prepare, potential_node, water_structure, file_regression):
    parameters = orm.Dict(
        {
            'steps': 100,
            'temperature': 300.0,
            'biases': [{'cv': {'type': 'angle', 'atoms': [1, 0, 2]}, 'centers': [1.7, 1.8, 1.9], 'kappa': 2.0}],
        }
    )
    folder, calcinfo = prepare(
        MdCalculation,
        code=mlff_environment['mlff_code'],
        potential=potential_node,
        structures={'water': water_structure},
        parameters=parameters,
    )
    file_regression.check((folder / 'job.json').read_text(), extension='.json')
    assert len(read(folder / 'structures.extxyz', index=':')) == 1
    assert calcinfo.local_copy_list == [(potential_node.uuid, 'potential.pt', 'potential.pt')]
    assert calcinfo.codes_info[0].cmdline_params == ['md', 'job.json']


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'timestep': -0.5}, 'parameters.timestep: must be a number > 0'),
        ({'temperature': -10.0}, 'parameters.temperature: must be a temperature in K (>= 0)'),
        ({'ensemble': 'nph'}, "parameters.ensemble: must be one of ['nve', 'langevin', 'npt']"),
        ({'ensemble': 'npt', 'tau_p': 0.0}, 'parameters.tau_p: must be a number > 0'),
        ({'steps': 10.5}, 'parameters.steps: must be an integer'),
        (
            {'biases': [{'cv': {'type': 'dihedral', 'atoms': [0, 1]}, 'centers': [0.0], 'kappa': 1.0}]},
            'parameters.biases[0].cv.atoms: a dihedral needs 4',
        ),
        ({'colvars': [{'type': 'distance', 'atoms': [0, 7]}]}, 'uses atoms [7], but a structure has only 3 atoms'),
    ],
)
def test_md_bad_parameters_name_the_field(mlff_environment, prepare, potential_node, water_structure, changes, message):
    with pytest.raises(ValueError, match='invalid MD input') as info:
        prepare(
            MdCalculation,
            code=mlff_environment['mlff_code'],
            potential=potential_node,
            structures={'water': water_structure},
            parameters=orm.Dict({'steps': 10, **changes}),
        )
    assert message in str(info.value)


def test_md_elements_not_covered_by_the_potential(mlff_environment, prepare, potential_node):
    methane = molecule('CH4')
    methane.center(vacuum=3.0)
    with pytest.raises(ValueError, match=r"structure `ch4` has \['C'\], which the potential \(\['H', 'O'\]\)"):
        prepare(
            MdCalculation,
            code=mlff_environment['mlff_code'],
            potential=potential_node,
            structures={'ch4': orm.StructureData(ase=methane)},
            parameters=orm.Dict({'steps': 10}),
        )


def test_corrupt_potential_file_is_refused(aiida_profile, tmp_path):
    from aiida_mlff.core.potential_io import PotentialFileError

    path = Potential.build(['H', 'O'], seed=0, **TINY).save(tmp_path / 'pot.pt')
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b'\x00' * 64
    (tmp_path / 'bad.pt').write_bytes(bytes(data))
    with pytest.raises(PotentialFileError, match=r'bad\.pt'):
        PotentialData(tmp_path / 'bad.pt')
    (tmp_path / 'text.pt').write_text('not a potential')
    with pytest.raises(PotentialFileError, match='not a readable potential file'):
        PotentialData(tmp_path / 'text.pt')
