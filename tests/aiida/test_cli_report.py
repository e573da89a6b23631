"""``aiida-mlff campaign report`` (``cmd_campaign_report``) on a stand-in campaign node with the output contract."""

from __future__ import annotations

import json

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from click.testing import CliRunner

from aiida_mlff.cli.report import cmd_campaign_report

from .test_report import synthetic_outputs


def run_report(profile, *args: str, code: int = 0) -> str:
    """Invoke the command as the lead's ``campaign`` group will: below the root group, which loads the profile."""
    import click

    from aiida_mlff.cli import cmd_root

    root = click.Group('aiida-mlff', params=cmd_root.params, callback=cmd_root.callback)
    root.add_command(click.Group('campaign', commands=[cmd_campaign_report]))
    from aiida.cmdline.groups import VerdiCommandGroup

    root.context_class = VerdiCommandGroup.context_class
    result = CliRunner().invoke(root, ['-p', profile.name, 'campaign', 'report', *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def campaign(aiida_profile, labelled_frames, tmp_path):
    outputs = synthetic_outputs(labelled_frames, tmp_path)
    node = orm.WorkChainNode(process_type='aiida.workflows:mlff.campaign')
    node.set_process_label('CampaignWorkChain')
    node.store()
    for label, output in outputs.items():
        output.base.links.add_incoming(node, link_type=LinkType.RETURN, link_label=label)
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(0)
    node.seal()
    return node, outputs


def test_report_of_a_campaign_node(aiida_profile, campaign, tmp_path):
    node, outputs = campaign
    output = run_report(aiida_profile, str(node.pk), '-o', str(tmp_path / 'out'))
    for name in ('parity_energy', 'parity_forces', 'learning_curve', 'history', 'pmf', 'summary', 'html'):
        assert name in output
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['campaign']['pk'] == node.pk
    assert summary['outputs']['potential']['uuid'] == outputs['potential'].uuid
    assert summary['missing'] == []
    assert node.uuid in (tmp_path / 'out' / 'index.html').read_text()


def test_report_errors(aiida_profile, tmp_path):
    data = orm.Int(5).store()
    output = run_report(aiida_profile, str(data.pk), '-o', str(tmp_path / 'x'), code=2)
    assert 'expected a campaign (mlff.campaign work chain) node' in output
    empty = orm.WorkChainNode().store()
    output = run_report(aiida_profile, str(empty.pk), code=2)
    assert 'has no outputs to report' in output
    assert 'no node with PK or UUID' in run_report(aiida_profile, '999999999', code=2)


def test_campaign_summary_names_every_state_and_transition(aiida_profile, campaign, capsys):
    from aiida_mlff.cli.campaign import _summary

    _, outputs = campaign
    node = orm.WorkChainNode(process_type='aiida.workflows:mlff.campaign')
    node.set_process_label('CampaignWorkChain')
    node.store()
    for label in ('barriers', 'rates'):
        outputs[label].base.links.add_incoming(node, link_type=LinkType.RETURN, link_label=label)
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(0)
    node.seal()
    _summary(node)
    lines = capsys.readouterr().out.splitlines()
    assert '  A: 0.00 ± 0.09 kcal/mol, minimum at -115 deg, range [-180, 0]' in lines
    rates = outputs['rates'].get_dict()['cis']
    assert (
        '  cis (A -> B, TS at 0 deg): forward 6.92 ± 0.13, backward 6.92 ± 0.13 kcal/mol; '
        f'TST rate {rates["forward"]:.3g} s^-1 forward, {rates["backward"]:.3g} s^-1 backward; experiment 7 kcal/mol'
    ) in lines
    assert [line.split(' (')[0] for line in lines if line.startswith('  ') and '->' in line] == ['  trans', '  cis']
