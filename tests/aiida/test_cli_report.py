"""``aiida-mlff campaign report`` (``cmd_campaign_report``) on a stand-in campaign node with the output contract."""

from __future__ import annotations

import json

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from click.testing import CliRunner

from aiida_mlff.cli.report import cmd_campaign_report

from .test_report import convergence_dict, synthetic_outputs


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


def campaign_node(outputs: dict, exit_status: int = 0) -> orm.WorkChainNode:
    """A finished campaign node (stored, sealed) that returned ``outputs``, as the work chain leaves it."""
    node = orm.WorkChainNode(process_type='aiida.workflows:mlff.campaign')
    node.set_process_label('CampaignWorkChain')
    node.store()
    for label, output in outputs.items():
        output.base.links.add_incoming(node, link_type=LinkType.RETURN, link_label=label)
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(exit_status)
    node.seal()
    return node


@pytest.fixture
def campaign(aiida_profile, labelled_frames, tmp_path):
    outputs = synthetic_outputs(labelled_frames, tmp_path)
    return campaign_node(outputs), outputs


def test_report_of_a_campaign_node(aiida_profile, campaign, tmp_path):
    node, outputs = campaign
    output = run_report(aiida_profile, str(node.pk), '-o', str(tmp_path / 'out'))
    for name in ('parity_energy', 'parity_forces', 'learning_curve', 'history', 'pmf', 'summary', 'html'):
        assert name in output
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['campaign']['pk'] == node.pk
    assert summary['convergence']['converged'] is True
    assert summary['parity']['validation']['n_structures'] == 2
    assert 'label_scan' in summary['parity']['held_out']['reason']  # this stand-in ran no relaxed-scan check
    assert summary['outputs']['potential']['uuid'] == outputs['potential'].uuid
    assert summary['missing'] == []
    text = (tmp_path / 'out' / 'index.html').read_text()
    assert node.uuid in text
    assert '<div class="banner ok"><strong>Converged</strong>' in text


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


def run_status(profile, identifier: str, code: int) -> list[str]:
    """``aiida-mlff -p PROFILE campaign status IDENTIFIER``: check the exit status and return the lines printed."""
    from aiida_mlff.cli import cmd_root

    result = CliRunner().invoke(cmd_root, ['-p', profile.name, 'campaign', 'status', identifier])
    assert result.exit_code == code, result.output
    assert 'Traceback' not in result.output
    return result.output.splitlines()


def test_status_of_a_converged_campaign(aiida_profile, campaign):
    node, _ = campaign
    lines = run_status(aiida_profile, str(node.pk), code=0)
    assert lines[0] == 'Converged: yes (converged in round 2)'  # the verdict first
    assert '  barrier_error 0.22 kcal/mol, target <= 0.3 kcal/mol: pass (cis 0.22, trans 0.2)' in lines
    assert '  labels used 52 of a budget of 52; rounds run 2 of at most 4' in lines
    assert '  best round 2, final round 2' in lines
    assert lines[6].startswith(f'CampaignWorkChain<{node.pk}> finished (exit status 0)')  # then what came before
    assert 'Steps (finished ok / failed / running):' in lines


def test_status_of_an_unconverged_campaign_exits_3(aiida_profile, campaign):
    from aiida_mlff.cli.campaign import _failure_message

    _, outputs = campaign
    node = campaign_node({**outputs, 'convergence': convergence_dict(converged=False)}, exit_status=410)
    lines = run_status(aiida_profile, node.uuid, code=3)
    assert lines[:2] == [
        'Converged: NO (label budget (52) spent: barrier_error 0.62 > 0.3 kcal/mol)',
        '  barrier_error 0.62 kcal/mol, target <= 0.3 kcal/mol: FAIL (cis 0.62, trans 0.2)',
    ]
    assert '  best round 1, final round 2; rounds worse than the best: 2' in lines
    assert f'CampaignWorkChain<{node.pk}> finished (exit status 410)' in lines
    assert _failure_message(node) == (
        'the campaign did not converge (exit status 410): barrier_error 0.62 > 0.3 kcal/mol'
    )


def test_status_help_documents_exit_status_3(aiida_profile):
    from aiida_mlff.cli import cmd_root

    result = CliRunner().invoke(cmd_root, ['campaign', 'status', '--help'])
    assert '3 when the campaign finished without converging' in ' '.join(result.output.split())
