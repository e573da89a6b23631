"""``aiida-mlff pmf show|plot`` on the outputs of ``pmf_states`` (PMF in degrees, its barriers and rates)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from click.testing import CliRunner
from matplotlib.image import imread

from aiida_mlff.calculations.states import pmf_states
from aiida_mlff.cli import cmd_root

from .test_states_calcfunction import knots


@pytest.fixture
def outputs(aiida_profile):
    """An H2O2-like PMF on a 10° grid (minima at ±110°, 0.05 eV at 180°, 0.3 eV at 0°) through ``pmf_states``."""
    angle = np.arange(-180.0, 180.0, 10.0)
    free = knots(angle, [(-180, 0.05), (-110, 0.0), (0, 0.3), (110, 0.0), (180, 0.05)])
    pmf = orm.XyData()
    pmf.set_x(np.radians(angle), 'cv', 'rad')
    pmf.set_y([free, np.full_like(free, 0.002)], ['free_energy', 'error'], ['eV', 'eV'])
    settings = {
        'cv': {'type': 'dihedral', 'atoms': [2, 0, 1, 3]},
        'temperature': 300.0,
        'transitions': {'trans': [150.0, -150.0], 'cis': [-30.0, 30.0]},
        'experiment_kcal_mol': {'trans': 1.1},
    }
    return pmf_states(pmf, orm.Dict(settings))


def invoke(profile, *args: str, code: int = 0):
    result = CliRunner().invoke(cmd_root, ['-p', profile.name, *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_show(aiida_profile, outputs):
    output = invoke(aiida_profile, 'pmf', 'show', str(outputs['pmf'].pk), '--every', '6')
    assert f'PMF XyData<{outputs["pmf"].pk}>' in output
    assert '36 points' in output
    assert 'dihedral(2,0,1,3) (deg)' in output
    assert len([line for line in output.splitlines() if line.strip().startswith(('-180.00', '-120.00', '0.00'))]) == 3
    assert 'highest point: 0.3000 eV (6.92 kcal/mol) at 0.0' in output
    assert f'States and transitions [Dict<{outputs["barriers"].pk}>, rates Dict<{outputs["rates"].pk}>]:' in output
    assert '  A: 0.00 ± 0.05 kcal/mol, minimum at -110 deg, range [-180, 0]' in output
    assert '  B: 0.00 ± 0.05 kcal/mol, minimum at 110 deg, range [0, -180]' in output
    rates = outputs['rates'].get_dict()
    assert (
        '  trans (A -> B, TS at -180 deg): forward 1.15 ± 0.07, backward 1.15 ± 0.07 kcal/mol; '
        f'TST rate {rates["trans"]["forward"]:.3g} s^-1 forward, {rates["trans"]["backward"]:.3g} s^-1 backward; '
        'experiment 1.1 kcal/mol'
    ) in output
    assert '  cis (A -> B, TS at 0 deg): forward 6.92 ± 0.07, backward 6.92 ± 0.07 kcal/mol; TST rate' in output


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
