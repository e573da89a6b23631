from __future__ import annotations

import pytest
from click.testing import CliRunner

from aiida_mlff import environment
from aiida_mlff.cli import cmd_root


def test_setup_creates_once_and_keeps_what_exists(aiida_profile):
    computer, _ = environment.ensure_computer()
    code, _ = environment.ensure_pw_code()
    family, _ = environment.ensure_pseudo_family()
    assert {'H', 'C', 'N', 'O', 'Si'} <= set(family.elements)
    assert family.get_recommended_cutoffs(elements=('H', 'O'), unit='Ry') == (30.0, 240.0)
    assert code.computer.pk == computer.pk
    assert 'OMPI_ALLOW_RUN_AS_ROOT=1' in code.prepend_text
    again = [environment.ensure_computer(), environment.ensure_pw_code(), environment.ensure_pseudo_family()]
    assert [created for _, created in again] == [False, False, False]
    assert [node.pk for node, _ in again] == [computer.pk, code.pk, family.pk]


def test_check_reports_every_item(aiida_profile):
    environment.ensure_pseudo_family()
    items = {item.name: item for item in environment.check(aiida_profile.name)}
    assert set(items) == {
        'pw.x',
        'pseudopotential files',
        'profile',
        'computer',
        'pw code',
        'mlff-run code',
        'pseudo family',
    }
    assert items['profile'].ok
    assert items['pseudo family'].ok


def test_check_names_a_missing_profile(aiida_profile):
    items = {item.name: item for item in environment.check('no-such-profile')}
    assert not items['profile'].ok
    assert 'no-such-profile' in items['profile'].message
    assert 'aiida-mlff setup' in items['profile'].message


def test_cli_setup_check_exit_code(aiida_profile):
    environment.ensure_computer()
    environment.ensure_pw_code()
    environment.ensure_mlff_code()
    environment.ensure_pseudo_family()
    runner = CliRunner()
    result = runner.invoke(cmd_root, ['-p', aiida_profile.name, 'setup', '--check'])
    assert result.exit_code == 0, result.output
    assert 'Everything aiida-mlff needs is in place.' in result.output
    result = runner.invoke(cmd_root, ['-p', 'no-such-profile', 'setup', '--check'])
    assert result.exit_code == 1
    assert 'MISSING' in result.output
    assert 'profile' in result.output


def test_missing_pw_executable_is_reported(aiida_profile, monkeypatch):
    monkeypatch.setattr(environment, 'find_pw', lambda: None)
    with pytest.raises(FileNotFoundError, match=r'pw\.x was not found'):
        environment.ensure_pw_code(label='pw-missing')


def test_a_code_whose_executable_is_gone_is_replaced(aiida_profile):
    """A moved checkout leaves a code pointing nowhere: setup relabels it and makes a new one from this install."""
    from aiida import orm

    computer, _ = environment.ensure_computer()
    stale = orm.InstalledCode(
        label='mlff-run-moved',
        computer=computer,
        filepath_executable='/nowhere/.venv/bin/mlff-run',
        default_calc_job_plugin='mlff.train',
    ).store()
    code, created = environment.ensure_mlff_code(label='mlff-run-moved')
    assert created
    assert code.pk != stale.pk
    assert str(code.filepath_executable) == environment.find_mlff_run()
    assert stale.label == f'mlff-run-moved-missing-{stale.pk}'
    assert environment.ensure_mlff_code(label='mlff-run-moved') == (code, False)
