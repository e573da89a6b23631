"""``aiida-mlff campaign report``: figures, an HTML page and a JSON summary of a finished campaign."""

from __future__ import annotations

import click

from aiida_mlff.cli._common import load_node_of_type, load_profile_from_context, output_path

__all__ = ['cmd_campaign_report']


@click.command('report')
@click.argument('node')
@click.option(
    '-o',
    '--output',
    'directory',
    type=click.Path(file_okay=False),
    default=None,
    help='Folder to write into, created if missing (not an existing file) [default: report_<PK>].',
)
@click.pass_context
def cmd_campaign_report(ctx, node, directory):
    """Write the report of the campaign NODE (PK or UUID of a `mlff.campaign` work chain) into a folder.

    The convergence verdict first (a banner: converged or not, the failed criteria with values and targets, the
    per-round table), then parity plots on frames no training saw (the validation split and the held-out pw.x labels
    of the relaxed-scan check), learning curve, active-learning history and the PMF (naming its estimator) as PNG
    files, an index.html that links them and lists the key numbers with the PK and UUID of the node behind each, and
    a summary.json.
    """
    from aiida import orm

    from aiida_mlff.report import campaign_outputs, write_campaign_report

    load_profile_from_context(ctx)
    process = load_node_of_type(node, orm.WorkflowNode, 'a campaign (mlff.campaign work chain) node')
    name = f'{process.process_label or type(process).__name__}<{process.pk}>'
    if not campaign_outputs(process):
        raise click.BadParameter(f'{name} has no outputs to report', param_hint='NODE')
    directory = output_path(directory or f'report_{process.pk}', folder=True, param_hint='-o/--output')
    if not process.is_finished_ok:
        state = process.process_state.value if process.process_state else 'unknown'
        click.echo(f'Warning: {name} is {state} (exit status {process.exit_status}); reporting what it has')
    paths = write_campaign_report(process, directory)
    for name, path in paths.items():
        click.echo(f'{name:<16}{path}')
