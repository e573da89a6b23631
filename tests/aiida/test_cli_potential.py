"""``aiida-mlff potential`` and ``verdi data mlff potential``: list, show, export, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_mlff.cli import cmd_root
from aiida_mlff.data.potential import PotentialData

from .test_provenance import tiny_potential_file
from .test_report import eight_frames, trained_potential


@pytest.fixture
def invoke(aiida_profile):
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(cmd_root, ['-p', aiida_profile.name, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


@pytest.fixture
def potential(aiida_profile, tmp_path):
    node = PotentialData(tiny_potential_file(tmp_path, seed=5))
    node.label = 'tiny'
    return node.store()


def test_list_and_show(invoke, potential):
    listed = invoke('potential', 'list').output
    row = next(line for line in listed.splitlines() if line.startswith(f'{potential.pk} '))
    assert 'tiny' in row
    assert 'bp-chiral' in row
    assert 'H,O' in row
    shown = invoke('potential', 'show', str(potential.pk)).output
    assert potential.uuid in shown
    assert 'cutoff (Å):       3' in shown
    assert 'committee size:   1' in shown
    assert potential.base.attributes.get('content_hash') in shown
    assert 'hyperparameters:' in shown


def test_export_loads_with_potential_load_and_in_ase(invoke, potential, h2o, tmp_path):
    from aiida_mlff.core.models import Potential

    output = tmp_path / 'exported.pt'
    result = invoke('potential', 'export', potential.uuid, str(output))
    assert 'Potential.load' in result.output
    loaded = Potential.load(output)
    reference = potential.load_potential()
    atoms = h2o.copy()
    atoms.calc = loaded.calculator()
    energy = atoms.get_potential_energy()
    atoms.calc = reference.calculator()
    assert energy == atoms.get_potential_energy()
    assert np.isfinite(atoms.get_forces()).all()
    assert invoke('potential', 'export', str(potential.pk), str(output), code=2).output.count('exists') == 1


def test_wrong_pk_and_wrong_type(invoke, aiida_profile):
    result = invoke('potential', 'show', '999999999', code=2)
    assert 'expected a PotentialData (mlff.potential) node' in result.output
    other = orm.Dict({'a': 1}).store()
    result = invoke('potential', 'export', str(other.pk), 'x.pt', code=2)
    assert f'node {other.pk} is a Dict, expected a PotentialData' in result.output
    result = invoke('potential', 'show', 'not-a-uuid', code=2)
    assert 'no node with PK or UUID' in result.output


def test_verdi_data_mlff_potential(potential):
    from aiida_mlff.cli.verdi import cmd_mlff

    result = CliRunner().invoke(cmd_mlff, ['potential', 'show', str(potential.pk)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert potential.uuid in result.output
    result = CliRunner().invoke(cmd_mlff, ['potential', 'list'], catch_exceptions=False)
    assert str(potential.pk) in result.output


def test_list_shows_the_validation_errors_and_calibration(invoke, labelled_frames, tmp_path):
    """A trained potential's ``metrics`` are {'train': {...}, 'validation': {...}}: the list shows validation's."""
    from aiida_mlff.data.dataset import TrainingSetData

    dataset = TrainingSetData(eight_frames(labelled_frames), label_method='synthetic').store()
    calibration = {'scale': 1.5, 'spearman': 0.812, 'coverage_95': 0.934}
    trained = trained_potential(dataset, tmp_path, calibration=calibration)
    validation = trained.base.attributes.get('metrics')['validation']
    lines = invoke('potential', 'list').output.splitlines()
    assert lines[0].endswith('set         E RMSE meV/atom  F MAE meV/Å  calib. Spearman  calib. coverage 95%')
    row = next(line for line in lines if line.startswith(f'{trained.pk} ')).split()
    assert row[-5:] == [
        'validation',
        f'{validation["energy_rmse_meV_per_atom"]:.2f}',
        f'{validation["force_mae_meV_per_A"]:.2f}',
        '0.81',
        '0.93',
    ]
    shown = invoke('potential', 'show', str(trained.pk)).output
    assert 'validation metrics:' in shown
    assert f'  force_mae_meV_per_A         {validation["force_mae_meV_per_A"]:.4g}' in shown
    assert '  spearman                    0.812' in shown


def test_list_without_calibration_leaves_its_columns_out(invoke, potential):
    lines = invoke('potential', 'list', '--limit', '1').output.splitlines()
    assert lines[0].endswith('E RMSE meV/atom  F MAE meV/Å')  # no calibration columns
    row = next(line for line in lines if line.startswith(f'{potential.pk} ')).split()
    assert row[-3:] == ['-', '-', '-']  # untrained: no errors, no split
