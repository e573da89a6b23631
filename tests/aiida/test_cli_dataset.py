"""``aiida-mlff dataset`` and ``verdi data mlff dataset``: import, export, show, list, and their errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from aiida import orm
from ase.io import read, write
from click.testing import CliRunner

from aiida_mlff.cli import cmd_root
from aiida_mlff.data.dataset import TrainingSetData


@pytest.fixture
def invoke(aiida_profile):
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(cmd_root, ['-p', aiida_profile.name, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


@pytest.fixture
def extxyz(labelled_frames, tmp_path):
    path = tmp_path / 'frames.extxyz'
    write(path, labelled_frames, format='extxyz')
    return path


def stored_dataset(labelled_frames) -> TrainingSetData:
    return TrainingSetData(labelled_frames, sources=['a' * 8, '', 'b' * 8, ''], label_method='synthetic').store()


def test_import_then_show_and_list(invoke, extxyz, labelled_frames):
    result = invoke('dataset', 'import', str(extxyz), '-L', 'water', '--label-method', 'made up')
    pk = int(result.output.split('TrainingSetData<')[1].split('>')[0])
    dataset = orm.load_node(pk)
    assert isinstance(dataset, TrainingSetData)
    assert dataset.label == 'water'
    assert dataset.n_structures == 4
    np.testing.assert_allclose(dataset.get_array('energy'), [a.get_potential_energy() for a in labelled_frames])
    shown = invoke('dataset', 'show', str(pk)).output
    assert 'structures:' in shown
    assert ' 4\n' in shown
    assert 'made up' in shown
    assert dataset.content_hash in shown
    shown_by_uuid = invoke('dataset', 'show', dataset.uuid).output
    assert shown_by_uuid == shown
    listed = invoke('dataset', 'list').output
    row = next(line for line in listed.splitlines() if line.startswith(f'{pk} '))
    assert 'water' in row
    assert 'H,O' in row
    assert 'made up' in row


def test_export_roundtrip_keeps_labels_and_sources(invoke, labelled_frames, tmp_path):
    dataset = stored_dataset(labelled_frames)
    output = tmp_path / 'out.extxyz'
    invoke('dataset', 'export', str(dataset.pk), str(output))
    frames = read(output, index=':')
    assert len(frames) == 4
    np.testing.assert_allclose(frames[1].get_forces(), labelled_frames[1].get_forces())
    assert frames[0].info['source'] == 'a' * 8
    again = TrainingSetData.from_extxyz(output)
    assert again.sources == dataset.sources
    refused = invoke('dataset', 'export', str(dataset.pk), str(output), code=2)
    assert 'exists' in refused.output
    invoke('dataset', 'export', str(dataset.pk), str(output), '--force')


def test_show_reports_sources_and_creator(invoke, labelled_frames):
    dataset = stored_dataset(labelled_frames)
    shown = invoke('dataset', 'show', str(dataset.pk)).output
    assert re.search(r'^labels with a source:\s+2 of 4$', shown, re.M)
    assert re.search(r'^created by:\s+-$', shown, re.M)


def test_list_with_limit(invoke, labelled_frames):
    newest = [stored_dataset(labelled_frames).pk for _ in range(3)]
    listed = invoke('dataset', 'list', '--limit', '2').output.splitlines()
    assert [int(line.split()[0]) for line in listed[2:]] == newest[::-1][:2]


def test_wrong_pk_and_wrong_type(invoke):
    result = invoke('dataset', 'show', '999999999', code=2)
    assert 'no node with PK or UUID' in result.output
    assert 'TrainingSetData (mlff.dataset)' in result.output
    node = orm.Int(3).store()
    result = invoke('dataset', 'export', str(node.pk), 'x.extxyz', code=2)
    assert f'node {node.pk} is a Int, expected a TrainingSetData (mlff.dataset) node' in result.output


def test_import_of_a_file_without_labels(invoke, h2o, tmp_path):
    path = tmp_path / 'bare.xyz'
    write(path, [h2o], format='extxyz')
    result = invoke('dataset', 'import', str(path), code=2)
    assert f'{path}: frame 0 has no energy and forces' in ' '.join(result.output.split())
    assert 'expected an extxyz with labels' in result.output


def test_missing_profile_is_a_clear_error():
    result = CliRunner().invoke(cmd_root, ['-p', 'no-such-profile-here', 'dataset', 'list'])
    assert result.exit_code == 1
    assert 'profile `no-such-profile-here` was not found' in result.output


def test_verdi_data_mlff_dataset(aiida_profile, labelled_frames, tmp_path):
    from aiida_mlff.cli.verdi import cmd_mlff

    dataset = stored_dataset(labelled_frames)
    runner = CliRunner()
    result = runner.invoke(cmd_mlff, ['dataset', 'show', str(dataset.pk)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert dataset.uuid in result.output
    result = runner.invoke(cmd_mlff, ['dataset', 'export', str(dataset.pk), str(tmp_path / 'v.extxyz')])
    assert result.exit_code == 0, result.output
    assert len(read(tmp_path / 'v.extxyz', index=':')) == 4
    result = runner.invoke(cmd_mlff, ['dataset', 'show', str(orm.Int(1).store().pk)])
    assert result.exit_code == 2
    assert 'expected a TrainingSetData' in result.output


def test_through_verdi_data(aiida_profile, labelled_frames, monkeypatch):
    """``verdi -p PROFILE data mlff dataset show PK``, as verdi loads it from the ``aiida.cmdline.data`` group.

    Until the entry point is installed (pyproject + ``pip install -e .``) the loader is pointed at ``cmd_mlff``.
    """
    from importlib.metadata import entry_points

    from aiida.cmdline.commands.cmd_verdi import verdi
    from aiida.cmdline.utils import pluginable

    from aiida_mlff.cli.verdi import cmd_mlff

    if not any(ep.name == 'mlff' for ep in entry_points(group='aiida.cmdline.data')):
        original = pluginable.load_entry_point

        def load(group, name):
            return cmd_mlff if (group, name) == ('aiida.cmdline.data', 'mlff') else original(group, name)

        monkeypatch.setattr(pluginable, 'load_entry_point', load)
    dataset = stored_dataset(labelled_frames)
    runner = CliRunner()
    result = runner.invoke(verdi, ['-p', aiida_profile.name, 'data', 'mlff', 'dataset', 'show', str(dataset.pk)])
    assert result.exit_code == 0, result.output
    assert dataset.uuid in result.output
    result = runner.invoke(verdi, ['-p', aiida_profile.name, 'data', 'mlff', 'potential', 'show', str(dataset.pk)])
    assert result.exit_code == 2
    assert 'expected a PotentialData (mlff.potential) node' in result.output
