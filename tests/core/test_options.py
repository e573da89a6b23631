"""The options schemas: one definition per option, every problem at once, suggestions for misspelt keys."""

from __future__ import annotations

import pytest

from aiida_mlff.core import files
from aiida_mlff.core.options import ACTIVE_LEARNING, MD, TRAIN, UMBRELLA, OptionsError, Schema


def test_defaults_come_from_one_place():
    merged, errors = files.validate_train_parameters({})
    assert errors == []
    assert merged == TRAIN.defaults()
    md, errors = files.validate_md_parameters({})
    assert errors == []
    assert md == MD.defaults()
    assert UMBRELLA['timestep'] is MD['timestep']  # shared, not copied


def test_unknown_key_suggests_the_close_one_and_every_problem_is_listed():
    _, errors = TRAIN.resolve({'epoch': 10, 'energy_weight': -1.0, 'device': 'gpu'}, 'training')
    assert len(errors) == 3
    assert any(e.startswith("training.epoch: unknown option; did you mean 'epochs'?") for e in errors)
    assert any(e.startswith('training.energy_weight: must be a number >= 0') for e in errors)
    assert any(e.startswith("training.device: must be one of ['auto', 'cpu', 'cuda'], got 'gpu'") for e in errors)


def test_model_hyperparameters_are_checked_against_the_architecture_builder():
    _, errors = TRAIN.resolve({'model': {'hiden': [8]}}, 'training')
    assert errors == [
        "training.model: unknown hyperparameter 'hiden' of bp-chiral; did you mean 'hidden'? "
        "(known: ['activation', 'angular_cutoff', 'chiral', 'committee', 'cutoff', 'hidden', 'n_angular', "
        "'n_radial', 'zetas'])"
    ]
    _, errors = TRAIN.resolve({'model': {'architecture': 'bp-chiracl'}}, 'training')
    assert "did you mean 'bp-chiral'" in errors[0]


@pytest.mark.parametrize(
    ('values', 'message'),
    [
        ({'windows': {'start': -180, 'stop': 180, 'count': 1}}, 'count must be an integer >= 2, got 1'),
        ({'windows': {'centers': []}}, 'at least 2 windows, got 0'),
        ({'windows': {'centers': [10.0]}}, 'at least 2 windows, got 1'),
        ({'windows': {'start': 30, 'stop': 30, 'count': 8}}, 'start and stop are equal'),
        ({'windows': {'start': 0, 'stop': 90, 'cont': 8}}, "did you mean 'count'"),
        ({'timestep': 50.0}, 'umbrella.timestep: must be a number > 0 and <= 5 fs, got 50.0'),
        ({'kappa': -1.0}, 'umbrella.kappa: must be a number > 0'),
    ],
)
def test_umbrella_options(values, message):
    _, errors = UMBRELLA.resolve(values, 'umbrella')
    assert any(message in e for e in errors), errors


def test_cross_checks_and_nested_schemas():
    _, errors = ACTIVE_LEARNING.resolve({'trust_lower': 0.5, 'trust_upper': 0.4}, 'active_learning')
    assert errors == ['active_learning.trust_lower: must be below trust_upper (0.5 >= 0.4 eV/Å)']
    _, errors = ACTIVE_LEARNING.resolve({'explore': {'temperatures': [], 'stepz': 3}}, 'active_learning')
    assert 'active_learning.explore.temperatures: must not be empty' in errors
    assert any(e.startswith("active_learning.explore.stepz: unknown option; did you mean 'steps'?") for e in errors)


def test_overrides_are_checked_but_not_filled():
    overrides = Schema(dict(TRAIN.fields), fill=False)
    merged, errors = overrides.resolve({'epochs': 5})
    assert errors == []
    assert merged == {'epochs': 5}
    with pytest.raises(OptionsError, match='epochs: must be an integer >= 1'):
        overrides.validate({'epochs': 0})


def test_training_takes_its_defaults_from_the_schema():
    from aiida_mlff.core import training

    with pytest.raises(TypeError, match='unknown training options'):
        training.train(None, [], epoch=3)
    with pytest.raises(OptionsError, match=r'training\.learning_rate: must be a number > 0'):
        training.train(None, [], learning_rate=-1.0)
