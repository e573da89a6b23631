from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlff.calculations.functions import merge_datasets
from aiida_mlff.data.dataset import TrainingSetData


def test_roundtrip_through_storage(aiida_profile, labelled_frames):
    dataset = TrainingSetData(labelled_frames, label_method='synthetic').store()
    loaded = orm.load_node(dataset.pk)
    assert isinstance(loaded, TrainingSetData)
    assert loaded.n_structures == 4
    assert loaded.elements == ['H', 'O']
    assert loaded.base.attributes.get('n_atoms_total') == 12
    assert loaded.base.attributes.get('has_stress') is False
    frames = loaded.to_atoms()
    for original, back in zip(labelled_frames, frames, strict=True):
        np.testing.assert_array_equal(back.positions, original.positions)
        np.testing.assert_array_equal(back.numbers, original.numbers)
        assert back.get_potential_energy() == original.get_potential_energy()
        np.testing.assert_array_equal(back.get_forces(), original.get_forces())


def test_structures_of_varying_size_and_optional_stress(aiida_profile, labelled_frames):
    si = bulk('Si', cubic=True)
    stress = np.array([0.01, 0.02, 0.03, 0.004, 0.005, 0.006])
    si.calc = SinglePointCalculator(si, energy=-10.0, forces=np.zeros((8, 3)), stress=stress)
    dataset = TrainingSetData([*labelled_frames[:2], si])
    assert dataset.get_array('natoms').tolist() == [3, 3, 8]
    assert dataset.base.attributes.get('has_stress') is True
    back = dataset.to_atoms()
    assert back[2].pbc.all()
    np.testing.assert_allclose(back[2].get_stress(), stress)
    assert 'stress' not in back[0].calc.results  # no stress was given for the molecules


def test_content_hash_tells_contents_apart(aiida_profile, labelled_frames):
    a = TrainingSetData(labelled_frames)
    b = TrainingSetData(labelled_frames)
    c = TrainingSetData(labelled_frames[:3])
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash


def test_extxyz_roundtrip(aiida_profile, labelled_frames, tmp_path):
    dataset = TrainingSetData(labelled_frames, sources=['a', 'b', 'c', 'd'])
    path = dataset.to_extxyz(tmp_path / 'set.extxyz')
    again = TrainingSetData.from_extxyz(path)
    assert again.n_structures == 4
    np.testing.assert_allclose(again.get_array('forces'), dataset.get_array('forces'))
    np.testing.assert_allclose(again.get_array('energy'), dataset.get_array('energy'))
    assert again.sources == ['a', 'b', 'c', 'd']


def test_extxyz_without_labels_is_refused(aiida_profile, h2o, tmp_path):
    from ase.io import write

    write(tmp_path / 'bare.extxyz', [h2o], format='extxyz')
    with pytest.raises(ValueError, match='frame 0 has no energy and forces'):
        TrainingSetData.from_extxyz(tmp_path / 'bare.extxyz')


def test_frames_without_labels_are_refused(aiida_profile, h2o):
    with pytest.raises(ValueError, match='carries no energy and forces'):
        TrainingSetData([h2o])
    with pytest.raises(ValueError, match='at least one structure'):
        TrainingSetData([])


def test_merge_drops_exact_duplicates_and_keeps_order(aiida_profile, labelled_frames):
    first = TrainingSetData(labelled_frames[:3]).store()
    second = TrainingSetData(labelled_frames[1:]).store()  # frames 1 and 2 repeat
    merged = merge_datasets(a=first, b=second)
    assert merged.n_structures == 4
    assert merged.base.attributes.get('n_duplicates_dropped') == 2
    np.testing.assert_array_equal(merged.get_array('energy'), [a.get_potential_energy() for a in labelled_frames])
    # provenance: the merged set is created by the calcfunction from both inputs
    creator = merged.creator
    assert {link.node.pk for link in creator.base.links.get_incoming().all()} == {first.pk, second.pk}


def test_merge_keeps_relabelled_structures(aiida_profile, labelled_frames):
    relabelled = [a.copy() for a in labelled_frames[:1]]
    relabelled[0].calc = SinglePointCalculator(relabelled[0], energy=123.0, forces=np.zeros((3, 3)))
    merged = merge_datasets(a=TrainingSetData(labelled_frames[:1]).store(), b=TrainingSetData(relabelled).store())
    assert merged.n_structures == 2  # same structure, other labels: not an exact duplicate


@pytest.mark.parametrize(
    ('field', 'value', 'expected'),
    [
        ('energy', np.nan, 'frame 2: energy is not finite (nan eV)'),
        ('energy', np.inf, 'frame 2: energy is not finite (inf eV)'),
        ('forces', np.nan, 'frame 2, atom 1 (H): force is not finite'),
        ('positions', -np.inf, 'frame 2, atom 1 (H): position is not finite'),
        ('stress', np.nan, 'frame 2: stress is not finite'),
    ],
)
def test_non_finite_labels_are_refused_naming_frame_and_atom(aiida_profile, labelled_frames, field, value, expected):
    frames = [atoms.copy() for atoms in labelled_frames]
    for original, atoms in zip(labelled_frames, frames, strict=True):
        atoms.calc = SinglePointCalculator(atoms, **original.calc.results)
    bad = frames[2]
    results = dict(bad.calc.results)
    if field == 'energy':
        results['energy'] = value
    elif field == 'forces':
        results['forces'] = results['forces'].copy()
        results['forces'][1, 2] = value
    elif field == 'positions':
        bad.positions[1, 0] = value
    else:
        results['stress'] = np.array([0.1, 0.1, value, 0.0, 0.0, 0.0])
    bad.calc = SinglePointCalculator(bad, **results)
    with pytest.raises(ValueError, match='not finite') as info:
        TrainingSetData(frames)
    assert expected in str(info.value)


def test_non_finite_arrays_set_directly_are_not_stored(aiida_profile, labelled_frames):
    before = orm.QueryBuilder().append(TrainingSetData).count()
    dataset = TrainingSetData(labelled_frames)
    forces = dataset.get_array('forces')
    forces[7, 0] = np.nan  # frame 2 (3 atoms each), atom 1
    dataset.set_array('forces', forces)
    with pytest.raises(ValueError, match=r'not stored: frame 2, atom 1 \(H\): force is not finite'):
        dataset.store()
    assert not dataset.is_stored
    assert orm.QueryBuilder().append(TrainingSetData).count() == before
