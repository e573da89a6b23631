"""Campaign files: every bad field is named at once, before anything is stored or submitted (exit status 2)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from aiida import orm
from click.testing import CliRunner

from aiida_mlff.cli import cmd_root
from aiida_mlff.workflows.campaign.config import CampaignConfigError, load_campaign, validate_campaign

DEMO = Path(__file__).parents[2] / 'examples' / 'h2o2-torsion.yaml'


def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def errors_of(config: dict) -> list[str]:
    with pytest.raises(CampaignConfigError) as info:
        validate_campaign(config)
    return info.value.errors


def changed(path: str, value):
    config = demo()
    *parents, last = path.split('.')
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


def test_the_demo_is_valid_and_keeps_only_what_it_sets():
    config = load_campaign(DEMO)
    assert config['training']['protocol'] == 'fast'  # the file's protocol reaches every step
    assert config['umbrella']['protocol'] == 'fast'
    assert 'validation_fraction' not in config['training']  # protocol values are not overwritten by defaults
    assert config['sampling']['rattle']['n'] == 16


@pytest.mark.parametrize(
    ('path', 'value', 'message'),
    [
        ('training.epoch', 10, "training.epoch: unknown option; did you mean 'epochs'?"),
        ('training.device', 'gpu', "training.device: must be one of ['auto', 'cpu', 'cuda'], got 'gpu'"),
        ('training.energy_weight', -1.0, 'training.energy_weight: must be a number >= 0'),
        ('training.model', {'hiden': [8]}, "did you mean 'hidden'"),
        ('umbrella.windows', {'start': 0, 'stop': 90, 'count': 1}, 'umbrella.windows: count must be an integer >= 2'),
        ('umbrella.windows', {'centers': []}, 'umbrella.windows: umbrella sampling needs at least 2 windows'),
        ('umbrella.windows', {'start': 30, 'stop': 30, 'count': 8}, 'umbrella.windows: start and stop are equal'),
        ('umbrella.timestep', 50.0, 'umbrella.timestep: must be a number > 0 and <= 5 fs, got 50.0'),
        ('active_learning.explore.timestep', 50.0, 'active_learning.explore.timestep: must be a number > 0'),
        ('active_learning.trust_upper', 0.1, 'active_learning.trust_lower: must be below trust_upper'),
        ('system.cv', {'type': 'dihedral', 'atoms': [2, 0, 0, 3]}, 'system.cv'),
        ('system.cv', {'type': 'dihedrl', 'atoms': [2, 0, 1, 3]}, "did you mean 'dihedral'"),
        ('system.cv', {'type': 'distance', 'atoms': [0, 9]}, 'system.cv'),
        ('system.box', 0.5, 'system.box: 0.5 Å is too small for the molecule'),
        ('system.molecule', 'H2O3', 'system.molecule: ASE does not know a molecule called'),
        ('sampling.rattle.n', -1, 'sampling.rattle.n: must be an integer >= 0'),
        ('sampling.scan.values', 'all', 'sampling.scan.values: must be a list of numbers'),
        ('dft.max_concurrent', 0, 'dft.max_concurrent: must be an integer >= 1'),
        ('dft.protocol', 'quick', "dft.protocol: must be one of [None, 'fast', 'balanced', 'stringent']"),
        ('states', {'a': [10]}, 'states: a: needs [low, high]'),
        ('transitions', {'cis.1': [-30, 30]}, 'transitions: cis.1: a name must not contain a dot'),
        ('reference.experiment', {}, "reference.experiment: unknown option; did you mean 'experiment_kcal_mol'?"),
        ('umbrela', {}, "umbrela: unknown option; did you mean 'umbrella'?"),
        ('training.initial_potential', 'nowhere.pt', 'training.initial_potential: must be a potential file or the pk'),
        ('training.replay_dataset', 3.5, 'training.replay_dataset: must be an extxyz dataset file or the pk/UUID'),
        ('training.replay_fraction', -0.5, 'training.replay_fraction: must be a number >= 0'),
        ('training.replay_fraction', 0.5, 'training.replay_fraction: rehearsal replays the data of training.initial'),
    ],
)
def test_bad_fields_are_named(path, value, message):
    errors = errors_of(changed(path, value))
    assert any(message in e for e in errors), errors


def test_a_campaign_chooses_its_architecture():
    """MACE and the xTB baseline are a training.model away; their own hyperparameters are checked."""
    models = ({'architecture': 'mace', 'channels': 8}, {'architecture': 'xtb-delta', 'correction': {'hidden': [8]}})
    for model in models:
        assert validate_campaign(changed('training.model', model))['training']['model'] == model
    errors = errors_of(changed('training.model', {'architecture': 'mace', 'hidden': [8]}))
    assert any("unknown hyperparameter 'hidden' of mace" in e for e in errors), errors


def test_a_model_of_another_architecture_replaces_the_protocols(mlff_environment):
    """The train protocol's widths belong to BP: a campaign's xtb-delta or MACE model is taken as it is, while a BP
    model is still completed by the protocol."""
    from aiida_mlff.workflows.campaign.base import CampaignWorkChain

    def train_model(model: dict) -> dict:
        config = validate_campaign(changed('training.model', model))
        builder = CampaignWorkChain.get_builder_from_config(
            mlff_environment['code'], mlff_environment['mlff_code'], config
        )
        return builder.active_learning.train.train.parameters.get_dict()['model']

    delta = {'architecture': 'xtb-delta', 'cutoff': 3.5, 'correction': {'hidden': [8]}}
    assert train_model(delta) == delta
    mace = {'architecture': 'mace', 'channels': 8}
    assert train_model(mace) == mace
    bp = train_model({'n_radial': 4})
    assert bp['n_radial'] == 4
    assert bp['hidden'] == [16, 16]  # the fast protocol's


def test_every_bad_field_at_once():
    config = changed('training.epoch', 10)
    config['umbrella']['timestep'] = 50.0
    config['system']['box'] = 0.5
    config['dft']['max_concurrent'] = 0
    errors = errors_of(config)
    assert len(errors) == 4, errors


def test_states_outside_an_open_window_range_are_refused():
    config = changed('umbrella.windows', {'start': -70, 'stop': 70, 'count': 8})
    config['states'] = {'left': [-60, -20], 'far': [150, 170]}
    config['transitions'] = {}
    errors = errors_of(config)
    assert errors == [
        'states.far: the range [150, 170] deg holds no umbrella window (windows from -70 to 70 deg): widen '
        'umbrella.windows or move the state'
    ]


def test_yaml_alias_bombs_and_missing_files(tmp_path):
    bomb = tmp_path / 'bomb.yaml'
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f'{chr(98 + k)}: &{chr(98 + k)} [*{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}]' for k in range(9)]
    bomb.write_text('reference:\n  ' + '\n  '.join(lines) + '\n')
    with pytest.raises(CampaignConfigError, match='aliases'):
        load_campaign(bomb)
    with pytest.raises(CampaignConfigError, match='does not exist'):
        load_campaign(tmp_path / 'missing.yaml')
    config = demo()
    config['sampling']['path'] = {'to': str(tmp_path / 'nowhere.xyz'), 'images': 4}
    assert any('sampling.path.to:' in e for e in errors_of(config))


def refused_by_the_cli(profile, path: Path, config: dict) -> str:
    """Write ``config`` to ``path`` and ``campaign run`` it: exit status 2 and no node stored. Returns the output."""
    path.write_text(yaml.safe_dump(config))
    before = orm.QueryBuilder().append(orm.Node).count()
    result = CliRunner().invoke(cmd_root, ['-p', profile.name, 'campaign', 'run', str(path)])
    assert result.exit_code == 2, result.output
    assert orm.QueryBuilder().append(orm.Node).count() == before
    return result.output


def test_the_cli_exits_2_and_stores_nothing(aiida_profile, tmp_path):
    config = changed('training.epoch', 10)
    config['umbrella']['windows'] = {'centers': []}
    output = refused_by_the_cli(aiida_profile, tmp_path / 'bad.yaml', config)
    assert 'training.epoch' in output
    assert 'umbrella.windows' in output
    assert 'Traceback' not in output


def test_the_output_folder_is_checked_before_the_run(aiida_profile, tmp_path):
    blocker = tmp_path / 'report'
    blocker.write_text('a file where the report folder should go')
    result = CliRunner().invoke(cmd_root, ['-p', aiida_profile.name, 'campaign', 'run', str(DEMO), '-o', str(blocker)])
    assert result.exit_code == 2, result.output
    assert 'is a file' in result.output
    assert str(blocker) in result.output


def test_an_element_without_pseudopotential_is_refused_before_any_job(mlff_environment, aiida_profile, tmp_path):
    config = copy.deepcopy(demo())
    config['system'] = {'molecule': 'CH3Cl', 'box': 10.0, 'cv': {'type': 'distance', 'atoms': [0, 1]}}
    config['states'], config['transitions'], config['reference'] = {}, {}, {}
    config['umbrella']['windows'] = {'start': 1.0, 'stop': 2.0, 'count': 6}
    config['sampling']['scan'] = {'values': []}
    config['check'] = {'values': []}
    output = refused_by_the_cli(aiida_profile, tmp_path / 'chlorine.yaml', config)
    assert 'dft.pseudo_family' in output
    assert 'Cl' in output


def test_the_campaign_is_a_composite_of_its_children(mlff_environment):
    from aiida.engine import run_get_node

    from aiida_mlff.workflows.campaign.base import CampaignWorkChain

    overrides = {k: v for k, v in demo().items() if k != 'system'}
    overrides['system'] = {'box': 9.0}
    overrides['training']['protocol'] = 'balanced'
    builder = CampaignWorkChain.get_builder_from_protocol(
        mlff_environment['code'],
        mlff_environment['mlff_code'],
        'H2O2',
        {'type': 'dihedral', 'atoms': [2, 0, 1, 3]},
        protocol='fast',
        overrides=overrides,
    )
    spec = CampaignWorkChain.spec().inputs
    assert {'label', 'train', 'explore', 'trust_upper'} <= set(spec['active_learning'])
    assert {'parameters', 'options', 'code'} <= set(spec['umbrella'])
    # each section reached its own step: the training section (balanced) over the balanced protocol ...
    parameters = builder.active_learning.train.train.parameters.get_dict()
    assert parameters['epochs'] == 200
    assert parameters['model']['hidden'] == [16, 16]
    # ... the umbrella section over the fast umbrella protocol (bootstrap from the file, not the protocol)
    assert builder.umbrella.parameters.get_dict()['windows'] == {'start': -180.0, 'stop': 180.0, 'count': 24}
    assert builder.active_learning.trust_upper.value == 0.6
    assert builder.structure.get_formula() == 'H2O2'
    # the composite checks its children's options together before anything runs
    builder.umbrella.parameters = orm.Dict({'windows': {'start': -70.0, 'stop': 70.0, 'count': 8}})
    with pytest.raises(ValueError, match=r'transitions\.trans: the range \[150, 210\] deg holds no umbrella window'):
        run_get_node(builder)
    with pytest.raises(CampaignConfigError, match=r'training\.epoch: unknown option'):
        CampaignWorkChain.get_builder_from_protocol(
            mlff_environment['code'],
            mlff_environment['mlff_code'],
            'H2O2',
            {'type': 'dihedral', 'atoms': [2, 0, 1, 3]},
            overrides={'training': {'epoch': 3}},
        )


# ------------------------------------------------------------------------------------------ free-energy methods
def test_the_method_is_umbrella_unless_the_file_says_otherwise():
    config = load_campaign(DEMO)
    assert config['free_energy'] == {'method': 'umbrella'}
    assert 'exchange' not in config['umbrella']  # plain umbrella sampling: no replica exchange added
    assert config['metadynamics'] == {'protocol': 'fast'}  # a section left out keeps the protocol's values


def test_reus_turns_replica_exchange_on():
    config = validate_campaign(changed('free_energy.method', 'reus'))
    assert config['umbrella']['exchange'] == {'every': 100}
    given = changed('free_energy.method', 'reus')
    given['umbrella']['exchange'] = {'every': 25}
    assert validate_campaign(given)['umbrella']['exchange'] == {'every': 25}


def metadynamics_demo(**section) -> dict:
    config = changed('free_energy.method', 'metadynamics')
    config['metadynamics'] = section
    return config


def test_a_metadynamics_campaign_needs_no_umbrella_windows():
    config = metadynamics_demo(walkers=4, steps=2000)
    del config['umbrella']
    config = validate_campaign(config)
    assert config['metadynamics'] == {'protocol': 'fast', 'walkers': 4, 'steps': 2000}
    assert config['umbrella'] == {'protocol': 'fast'}


@pytest.mark.parametrize(
    ('config', 'message'),
    [
        (
            changed('free_energy.method', 'metadynamic'),
            "free_energy.method: unknown method 'metadynamic'; did you mean 'metadynamics'?",
        ),
        (changed('free_energy.methd', 'reus'), "free_energy.methd: unknown option; did you mean 'method'?"),
        (changed('umbrella.exchange', {'every': 0}), 'umbrella.exchange: every must be an integer >= 1'),
        (changed('metadynamics.walkers', 0), 'metadynamics.walkers: must be an integer >= 1'),
        (metadynamics_demo(pacee=10), "metadynamics.pacee: unknown option; did you mean 'pace'?"),
        (metadynamics_demo(width=[1.0, 2.0]), 'metadynamics.width: give one width per CV (1)'),
        (metadynamics_demo(range=[-180, 300]), 'metadynamics.range[0]: wider than the period'),
        (metadynamics_demo(protocol='quick'), "metadynamics.protocol: must be one of [None, 'fast'"),
    ],
)
def test_bad_method_fields_are_named(config, message):
    errors = errors_of(config)
    assert any(message in e for e in errors), errors


def test_reus_needs_exchange_in_one_batch():
    config = changed('free_energy.method', 'reus')
    config['umbrella']['exchange'] = None
    config['umbrella']['mode'] = 'parallel'
    errors = errors_of(config)
    assert len(errors) == 2, errors
    assert errors[0].startswith('umbrella.exchange: free_energy.method reus exchanges configurations')
    assert errors[1].startswith('umbrella.mode: free_energy.method reus exchanges windows inside one batch')


def test_a_non_periodic_cv_needs_a_metadynamics_range():
    config = metadynamics_demo(walkers=4)
    config['system']['cv'] = {'type': 'distance', 'atoms': [0, 1]}
    config['states'], config['transitions'] = {}, {}
    assert errors_of(config) == ['metadynamics.range: distance(0,1) is not periodic: give its [lower, upper] in Å']
    config['metadynamics']['range'] = [1.2, 1.8]
    assert validate_campaign(config)['metadynamics']['range'] == [1.2, 1.8]


def test_states_are_checked_against_the_metadynamics_range():
    # the demo's umbrella windows do not matter for metadynamics: the whole period holds every state ...
    config = metadynamics_demo()
    config['umbrella']['windows'] = {'start': -70, 'stop': 70, 'count': 8}
    validate_campaign(config)
    # ... and an arc of it only the states it reaches (wrapping through 180 degrees)
    config = metadynamics_demo(range=[100, 260])
    errors = errors_of(config)
    assert errors == [
        'transitions.cis: the range [-30, 30] deg lies outside the metadynamics range [100, 260] deg: widen '
        'metadynamics.range or move the state'
    ]


def test_every_bad_method_field_at_once():
    config = metadynamics_demo(walkers=0, pacee=10)
    config['training']['epoch'] = 10
    errors = errors_of(config)
    assert len(errors) == 3, errors


def test_the_builder_fills_the_namespace_of_the_method(mlff_environment):
    from aiida_mlff.workflows.campaign.base import CampaignWorkChain

    def builder(overrides):
        overrides = {k: v for k, v in overrides.items() if k != 'system'}
        return CampaignWorkChain.get_builder_from_protocol(
            mlff_environment['code'],
            mlff_environment['mlff_code'],
            'H2O2',
            {'type': 'dihedral', 'atoms': [2, 0, 1, 3]},
            overrides={**overrides, 'system': {'box': 9.0}},
        )

    metadynamics = builder(metadynamics_demo(walkers=4, steps=2000))
    assert metadynamics.free_energy.get_dict() == {'method': 'metadynamics'}
    parameters = metadynamics.metadynamics.parameters.get_dict()
    assert parameters['walkers'] == 4
    assert parameters['steps'] == 2000
    assert 'parameters' not in metadynamics.umbrella  # the namespace of the other method stays empty
    reus = builder(changed('free_energy.method', 'reus'))
    assert reus.umbrella.parameters.get_dict()['exchange'] == {'every': 100}
    assert 'parameters' not in reus.metadynamics
    assert 'umbrella' not in metadynamics._inputs(prune=True)  # what runs: the other namespace is left out
    spec = CampaignWorkChain.spec().inputs
    assert {'parameters', 'options', 'code'} <= set(spec['metadynamics'])
    assert not spec['umbrella'].required
    assert not spec['metadynamics'].required


def test_the_composite_checks_the_method_inputs(mlff_environment):
    """The work chain's own validator: the method's namespace, its options and the states against its range."""
    from aiida.engine import run_get_node

    from aiida_mlff.workflows.campaign.base import CampaignWorkChain

    overrides = {k: v for k, v in metadynamics_demo(range=[-70, 70]).items() if k != 'system'}
    overrides['transitions'] = {'cis': [-30, 30]}
    builder = CampaignWorkChain.get_builder_from_protocol(
        mlff_environment['code'],
        mlff_environment['mlff_code'],
        'H2O2',
        {'type': 'dihedral', 'atoms': [2, 0, 1, 3]},
        overrides={**overrides, 'system': {'box': 9.0}},
    )
    builder.transitions = orm.Dict({'trans': [150, 210]})
    with pytest.raises(ValueError, match=r'transitions\.trans: the range \[150, 210\] deg lies outside'):
        run_get_node(builder)
    builder.metadynamics.parameters = orm.Dict({'walkers': 0})
    with pytest.raises(ValueError, match=r'metadynamics\.walkers: must be an integer >= 1'):
        run_get_node(builder)
    builder.free_energy = orm.Dict({'method': 'umbrella'})
    with pytest.raises(ValueError, match=r'umbrella: free_energy\.method umbrella needs the umbrella inputs'):
        run_get_node(builder)


# ------------------------------------------------------------------------------------------------ fine-tuning
def _parent_files(folder: Path) -> tuple[Path, Path]:
    """A small trained BP potential file and its training data (pw.x water frames) in ``folder``."""
    import ase.io
    import torch

    from aiida_mlff.core.models import Potential
    from aiida_mlff.core.training import train

    frames = ase.io.read(Path(__file__).parents[1] / 'data' / 'h2o_pbe_30ry.extxyz', index=':8')
    pot = Potential.build(['H', 'O'], cutoff=3.0, angular_cutoff=2.5, hidden=[4], n_radial=3, n_angular=2)
    train(pot.to(torch.float64), frames[:4], epochs=2, batch_size=4, polish_steps=0)
    train(pot, frames[4:], epochs=2, batch_size=4, polish_steps=0, replay=frames[:4])  # fine-tuned itself
    ase.io.write(folder / 'water.extxyz', frames, format='extxyz')
    return pot.save(folder / 'parent.pt'), folder / 'water.extxyz'


def test_a_campaign_fine_tunes_from_a_file_or_a_node(mlff_environment, tmp_path):
    import hashlib

    from aiida.engine import calcfunction

    from aiida_mlff.data.dataset import TrainingSetData
    from aiida_mlff.data.potential import PotentialData
    from aiida_mlff.workflows.campaign.base import CampaignWorkChain, fine_tuning_inputs

    parent, water = _parent_files(tmp_path)
    config = demo()
    config['system']['molecule'] = 'H2O2'
    config['training'].update(initial_potential='parent.pt', replay_dataset='water.extxyz')
    (tmp_path / 'campaign.yaml').write_text(yaml.safe_dump(config))
    loaded = load_campaign(tmp_path / 'campaign.yaml')  # files are relative to the campaign file
    assert loaded['training']['initial_potential'] == str(parent.resolve())
    builder = CampaignWorkChain.get_builder_from_config(mlff_environment['code'], mlff_environment['mlff_code'], loaded)
    train = builder.active_learning.train.train
    assert isinstance(train.parent_potential, PotentialData)
    assert train.parent_potential.base.attributes.get('content_hash') == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert isinstance(train.replay_dataset, TrainingSetData)
    assert train.replay_dataset.n_structures == 8
    assert 'initial_potential' not in train.parameters.get_dict()

    # a node: the replay set defaults to the dataset its provenance holds (here: through a calcfunction)
    dataset = TrainingSetData.from_extxyz(water).store()

    @calcfunction
    def trained_on(dataset):
        return PotentialData(parent)

    node = trained_on(dataset)
    found = fine_tuning_inputs({'initial_potential': node.pk})
    assert found['parent_potential'].uuid == node.uuid
    assert found['replay_dataset'].uuid == dataset.uuid
    with pytest.raises(CampaignConfigError, match=r'training\.initial_potential: node .* is a TrainingSetData'):
        fine_tuning_inputs({'initial_potential': dataset.uuid})
    # rehearsal needs a replay set: a file has no provenance to find one in
    with pytest.raises(CampaignConfigError, match=r'training\.replay_fraction: no replay set'):
        fine_tuning_inputs({'initial_potential': str(parent), 'replay_fraction': 0.5})
    assert 'replay_dataset' in fine_tuning_inputs({'initial_potential': node.pk, 'replay_fraction': 0.5})
    # the report shows a fine-tuned potential's errors on its parent's data before and after
    from aiida_mlff.report import _model_rows, _potential_summary

    summary = _potential_summary(node)
    assert summary['replay']['before']['n_structures'] == 4
    rows = {row[0]: row[1] for row in _model_rows({'potential': summary})}
    assert 'replay set after fine-tuning: force_mae_meV_per_A' in rows
