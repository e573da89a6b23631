"""``aiida-mlff lineage`` on the synthetic campaign graph of ``test_provenance``."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from aiida_mlff.cli import cmd_root

from .test_provenance import build_campaign_graph


@pytest.fixture(scope='module')
def graph(aiida_profile):
    from aiida_mlff.environment import ensure_computer

    computer, _ = ensure_computer()
    return build_campaign_graph(computer)


def invoke(profile, *args: str, code: int = 0):
    result = CliRunner().invoke(cmd_root, ['-p', profile.name, *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_lineage_of_the_pmf(aiida_profile, graph):
    output = invoke(aiida_profile, 'lineage', str(graph['pmf'].pk), '--dft')
    lines = output.splitlines()
    assert lines[0].startswith(f'XyData<{graph["pmf"].pk}> {graph["pmf"].uuid}')
    assert re.search(r'│   [├└]── PwCalculation x6: ', output)
    assert '└── descendants (0)' in output
    assert (
        f'DFT calculations behind XyData<{graph["pmf"].pk}>: 6, 5 of them with labels in the final datasets' in output
    )
    marked = {line.split()[2] for line in lines if line.startswith('* PwCalculation<')}
    unmarked = {line.split()[1] for line in lines if line.startswith('  PwCalculation<')}
    assert marked == set(graph['dataset'].sources)
    assert unmarked == {graph['duplicate'].uuid}


def test_lineage_of_a_dft_calculation_shows_what_depends_on_it(aiida_profile, graph):
    output = invoke(aiida_profile, 'lineage', graph['first'][0].uuid, '--show', '0')
    assert re.search(r'PotentialData x2$', output, re.M)
    assert re.search(r'MdCalculation x2$', output, re.M)
    assert re.search(r'PMF x1$', output, re.M)


def test_lineage_of_a_missing_node(aiida_profile):
    output = invoke(aiida_profile, 'lineage', '987654321', code=2)
    assert 'no node with PK or UUID' in output
