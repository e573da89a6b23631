"""Bad input to ``aiida-mlff``: exit status 2, a message naming the field, file or frame, no traceback, no new node."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from click.testing import CliRunner

from aiida_mlff.cli import cmd_root
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData

from .test_provenance import tiny_potential_file

FAMILY = 'mlff/espresso-deb/PBE'


def n_nodes() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


@pytest.fixture
def cli(aiida_profile):
    """Run ``aiida-mlff -p PROFILE ARGS``; check the exit status, that no exception escaped and no traceback shows."""
    runner = CliRunner()

    def run(*args: str, code: int = 2) -> str:
        result = runner.invoke(cmd_root, ['-p', aiida_profile.name, *args])
        assert result.exit_code == code, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert 'Traceback' not in result.output
        return result.output

    return run


@pytest.fixture
def refused(cli):
    """Like ``cli`` with exit status 2, also checking that no node was stored and that each of ``names`` is named."""

    def run(*args: str, names: tuple[str, ...]) -> str:
        before = n_nodes()
        output = cli(*args, code=2)
        for name in names:
            assert name in ' '.join(output.split()), output  # click wraps long messages
        assert n_nodes() == before
        return output

    return run


# ------------------------------------------------------------------------------------------- dataset import
def _labelled(frames, frame: int, field: str):
    frames = [atoms.copy() for atoms in frames]
    for k, atoms in enumerate(frames):
        results = {'energy': -10.0 - k, 'forces': np.full((len(atoms), 3), 0.1)}
        if k == frame:
            if field == 'energy':
                results['energy'] = np.inf
            elif field == 'forces':
                results['forces'][2, 1] = np.nan
            elif field == 'stress':
                results['stress'] = np.array([0.1, np.nan, 0.1, 0.0, 0.0, 0.0])
            else:
                atoms.positions[2, 0] = np.nan
        atoms.calc = SinglePointCalculator(atoms, **results)
    return frames


@pytest.mark.parametrize(
    ('field', 'names'),
    [
        ('energy', ('frame 1: energy is not finite (inf eV)',)),
        ('forces', ('frame 1, atom 2 (H): force is not finite', 'nan')),
        ('positions', ('frame 1, atom 2 (H): position is not finite',)),
        ('stress', ('frame 1: stress is not finite',)),
    ],
)
def test_dataset_import_refuses_non_finite_labels(refused, labelled_frames, tmp_path, field, names):
    path = tmp_path / f'bad_{field}.extxyz'
    write(path, _labelled(labelled_frames, 1, field), format='extxyz')
    refused('dataset', 'import', str(path), names=(str(path), *names))


def test_dataset_import_of_a_folder_or_garbage(refused, tmp_path):
    refused('dataset', 'import', str(tmp_path), names=(str(tmp_path), 'is a directory'))
    garbage = tmp_path / 'garbage.extxyz'
    garbage.write_text('3\nnot a comment line = = =\nH 0 0\n')
    refused('dataset', 'import', str(garbage), names=(str(garbage), 'not a readable extended-XYZ file'))


# ------------------------------------------------------------------------------------------------ label
@pytest.mark.parametrize(
    ('option', 'value'),
    [
        ('--vacuum', '-5'),
        ('--vacuum', '0'),
        ('--vacuum', '500'),
        ('--rattle', '-1'),
        ('--stdev', '-0.1'),
        ('--stdev', '3'),
        ('--seed', '-1'),
        ('--max-concurrent', '0'),
    ],
)
def test_label_numeric_options_are_bounded(refused, option, value):
    refused('label', option, value, names=(f"'{option}'", value))


def test_label_help_documents_the_vacuum_bound(cli):
    assert 'at most 50' in ' '.join(cli('label', '--help', code=0).split())


def test_label_element_missing_from_the_pseudo_family(refused, mlff_environment, h2o, tmp_path):
    path = tmp_path / 'mixed.extxyz'
    gold = Atoms('Au2', positions=[[0, 0, 0], [2.5, 0, 0]], cell=[8, 8, 8], pbc=True)
    write(path, [h2o, gold], format='extxyz')
    refused(
        'label',
        str(path),
        '--rattle',
        '3',
        names=('Au', f'{path} frame 1', f'the pseudo family `{FAMILY}`', 'for FILES'),
    )


def test_label_bad_structures_are_refused_before_any_node(refused, mlff_environment, tmp_path):
    bare = tmp_path / 'molecule.xyz'
    write(bare, Atoms('H2', positions=[[0, 0, 0], [0.74, 0, 0]]), format='xyz')
    refused('label', str(bare), names=(f'{bare} frame 0', 'no 3D cell', '--vacuum'))
    squashed = tmp_path / 'squashed.extxyz'
    write(squashed, Atoms('H2', positions=[[0, 0, 0], [0.1, 0, 0]], cell=[6, 6, 6], pbc=True), format='extxyz')
    refused('label', str(squashed), names=(f'{squashed} frame 0', 'atoms 0 and 1 are 0.100 Å apart'))
    garbage = tmp_path / 'garbage.xyz'
    garbage.write_text('two\nthree\n')
    refused('label', str(garbage), names=(str(garbage), 'ASE cannot read it'))
    refused('label', str(tmp_path), names=(str(tmp_path), 'is a directory'))


def test_label_code_that_is_missing_or_not_pw(refused, mlff_environment, h2o, tmp_path):
    path = tmp_path / 'water.extxyz'
    write(path, [h2o], format='extxyz')
    refused('label', str(path), '--code', 'nothing@localhost', names=('for --code', 'no code `nothing@localhost`'))
    refused('label', str(path), '--code', 'mlff-run@localhost', names=('for --code', 'expected quantumespresso.pw'))


def test_pseudo_problem_names_element_structure_and_source(mlff_environment):
    from aiida_mlff.workflows.dft.label import pseudo_problem

    assert pseudo_problem({'a': ['H', 'O']}, pseudo_family=FAMILY) is None
    name, message = pseudo_problem({'a': ['H'], 'b': ['Au', 'H']}, pseudo_family=FAMILY)
    assert name == 'ERROR_MISSING_PSEUDOPOTENTIAL'
    assert f'no pseudopotential for Au (in b) in the pseudo family `{FAMILY}`' in message
    name, message = pseudo_problem({'a': ['H', 'O']}, pseudos=['H'])
    assert (name, message) == (
        'ERROR_MISSING_PSEUDOPOTENTIAL',
        'no pseudopotential for O (in a) in the `pseudos` input, which has H',
    )
    name, message = pseudo_problem({'a': ['H']}, pseudo_family='no/such/family')
    assert name == 'ERROR_INVALID_PSEUDO_FAMILY'
    assert '`no/such/family` does not exist' in message


def test_label_with_a_missing_family_is_an_installation_error(cli, mlff_environment, h2o, tmp_path, monkeypatch):
    """A missing family is not the user's input: exit status 1 (``click.ClickException``), still before any node."""
    from aiida_mlff.workflows.dft.label import DftLabelWorkChain

    protocol = DftLabelWorkChain.get_protocol_inputs('fast')
    monkeypatch.setattr(
        DftLabelWorkChain, 'get_protocol_inputs', lambda *_, **__: {**protocol, 'pseudo_family': 'no/such/family'}
    )
    path = tmp_path / 'water.extxyz'
    write(path, [h2o], format='extxyz')
    before = n_nodes()
    assert 'the pseudo family `no/such/family` does not exist' in cli('label', str(path), code=1)
    assert n_nodes() == before


# --------------------------------------------------------------------------------------------- campaign status
def test_campaign_status_of_other_nodes(refused):
    data = orm.Int(3).store()
    refused('campaign', 'status', str(data.pk), names=(f'node {data.pk} is a Int', 'expected a campaign'))
    other = orm.WorkChainNode()
    other.set_process_label('ActiveLearningWorkChain')
    other.store()
    refused('campaign', 'status', str(other.pk), names=(f'node {other.pk} is a ActiveLearningWorkChain',))
    calc = orm.CalcFunctionNode().store()
    refused('campaign', 'status', str(calc.pk), names=(f'node {calc.pk} is a CalcFunctionNode',))
    refused('campaign', 'status', '999999999', names=('for IDENTIFIER', "no node with PK or UUID '999999999'"))
    refused('campaign', 'status', '', names=('for IDENTIFIER', 'empty'))


# ------------------------------------------------------------------------------------------------- outputs
@pytest.fixture
def nodes(aiida_profile, labelled_frames, tmp_path):
    """A dataset, a potential, a PMF and a stand-in campaign with one output."""
    dataset = TrainingSetData(labelled_frames).store()
    potential = PotentialData(tiny_potential_file(tmp_path, seed=1)).store()
    angle = np.radians(np.arange(-180.0, 180.0, 30.0))
    pmf = orm.XyData()
    pmf.set_x(angle, 'cv', 'rad')
    pmf.set_y([np.cos(angle) + 1.0], ['free_energy'], ['eV'])
    pmf.store()
    campaign = orm.WorkChainNode()
    campaign.set_process_label('CampaignWorkChain')
    campaign.store()
    orm.Int(1).store().base.links.add_incoming(campaign, link_type=LinkType.RETURN, link_label='x')
    return {'dataset': dataset, 'potential': potential, 'pmf': pmf, 'campaign': campaign}


def test_file_outputs_get_their_missing_folders(cli, nodes, tmp_path):
    target = tmp_path / 'missing' / 'dir'
    cli('dataset', 'export', str(nodes['dataset'].pk), str(target / 'data.extxyz'), code=0)
    cli('potential', 'export', str(nodes['potential'].pk), str(target / 'pot.pt'), code=0)
    cli('pmf', 'plot', str(nodes['pmf'].pk), '-o', str(target / 'deeper' / 'pmf.png'), code=0)
    assert sorted(p.name for p in target.rglob('*') if p.is_file()) == ['data.extxyz', 'pmf.png', 'pot.pt']


def test_outputs_under_a_file_or_of_the_wrong_kind_are_refused(refused, nodes, tmp_path):
    afile = tmp_path / 'afile'
    afile.write_text('x')
    under = afile / 'out'
    for args in (
        ('dataset', 'export', str(nodes['dataset'].pk), str(under)),
        ('potential', 'export', str(nodes['potential'].pk), str(under)),
        ('pmf', 'plot', str(nodes['pmf'].pk), '-o', str(under)),
        ('campaign', 'report', str(nodes['campaign'].pk), '-o', str(under)),
    ):
        refused(*args, names=(f'{afile} is a file, so {under} cannot be written',))
    refused('campaign', 'report', str(nodes['campaign'].pk), '-o', str(afile), names=(str(afile), 'is a file'))
    refused('dataset', 'export', str(nodes['dataset'].pk), str(tmp_path), names=(str(tmp_path), 'is a directory'))
    assert afile.read_text() == 'x'
    assert not any(tmp_path.glob('report_*'))


def test_empty_or_unknown_identifiers(refused):
    refused('dataset', 'show', '', names=('for NODE', 'empty'))
    refused('lineage', '999999999', names=('for NODE', "no node with PK or UUID '999999999'"))
    refused('pmf', 'show', str(orm.Int(1).store().pk), names=('for NODE', 'expected a PMF'))
