"""``aiida-mlff pmf show|plot`` on a PMF made by a stand-in calcfunction (with its barriers and rates)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import calcfunction
from click.testing import CliRunner
from matplotlib.image import imread

from aiida_mlff.cli import cmd_root


@calcfunction
def fake_umbrella(height: orm.Float) -> dict:
    """A PMF (degrees, eV) with a cosine barrier of ``height`` eV, and its barriers and rates."""
    angle = np.linspace(-180.0, 180.0, 37)
    free = height.value * (1 + np.cos(np.radians(angle))) / 2
    pmf = orm.XyData()
    pmf.set_x(angle, 'dihedral', 'degrees')
    pmf.set_y([free, np.full_like(free, 0.002)], ['free_energy', 'error'], ['eV', 'eV'])
    barriers = orm.Dict(
        {'trans': {'eV': height.value, 'kcal_mol': height.value * 23.06}, 'cis': {'eV': 0.3, 'kcal_mol': 6.9}}
    )
    return {'pmf': pmf, 'barriers': barriers, 'rates': orm.Dict({'trans': 1.5e12, 'cis': 2.5e7})}


@pytest.fixture
def outputs(aiida_profile):
    return fake_umbrella(orm.Float(0.1))


def invoke(profile, *args: str, code: int = 0):
    result = CliRunner().invoke(cmd_root, ['-p', profile.name, *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_show(aiida_profile, outputs):
    output = invoke(aiida_profile, 'pmf', 'show', str(outputs['pmf'].pk), '--every', '6')
    assert f'PMF XyData<{outputs["pmf"].pk}>' in output
    assert '37 points' in output
    assert len([line for line in output.splitlines() if line.strip().startswith(('-180.00', '-120.00', '0.00'))]) == 3
    assert 'highest point: 0.1000 eV (2.31 kcal/mol) at 0.0' in output
    assert f'trans barrier: 0.1000 eV (2.31 kcal/mol)  [Dict<{outputs["barriers"].pk}>]' in output
    assert 'cis rate: 2.5e+07 s^-1' in output


def test_plot(aiida_profile, outputs, tmp_path):
    path = tmp_path / 'pmf.png'
    output = invoke(aiida_profile, 'pmf', 'plot', outputs['pmf'].uuid, '-o', str(path))
    assert str(path) in output
    assert np.asarray(imread(path)[..., :3]).var() > 1e-3


def test_errors(aiida_profile, outputs):
    output = invoke(aiida_profile, 'pmf', 'show', str(outputs['barriers'].pk), code=2)
    assert 'is a Dict, expected a PMF' in output
    xy = orm.XyData()
    xy.set_x(np.arange(3.0), 'x', 'A')
    xy.set_y([np.arange(3.0)], ['y'], ['eV'])
    xy.store()
    output = invoke(aiida_profile, 'pmf', 'plot', str(xy.pk), code=2)
    assert "has no 'free_energy' array" in output
    assert 'no node with PK or UUID' in invoke(aiida_profile, 'pmf', 'show', '999999999', code=2)
