"""``aiida-mlff campaign run|submit|status``: the main job, in-process or through the daemon."""

from __future__ import annotations

import time

import click


def _load(ctx):
    from aiida_mlff.environment import load_mlff_profile

    try:
        return load_mlff_profile(getattr(ctx.obj, 'mlff_profile', None))
    except ValueError as exception:
        raise click.ClickException(str(exception)) from exception


def _builder(ctx, path: str, pw_code: str, mlff_code: str, output: str | None = None):
    """Check everything that can be checked before the first pw.x job, then build the campaign (nothing stored)."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    from aiida_mlff.workflows.campaign.base import CampaignWorkChain
    from aiida_mlff.workflows.campaign.config import CampaignConfigError, load_campaign

    try:
        config = load_campaign(path)
    except CampaignConfigError as exception:
        raise click.BadParameter('\n  ' + '\n  '.join(exception.errors), param_hint=f'campaign file {path}') from None
    if output:
        from aiida_mlff.cli._common import output_path

        output_path(output, folder=True, param_hint='--output')
    _load(ctx)
    codes = {}
    for option, label in (('--pw-code', pw_code), ('--mlff-code', mlff_code)):
        try:
            codes[option] = orm.load_code(label)
        except NotExistent:
            raise click.BadParameter(f'no code `{label}`: run `aiida-mlff setup`', param_hint=option) from None
    _check_pseudos(config, path)
    builder = CampaignWorkChain.get_builder_from_config(codes['--pw-code'], codes['--mlff-code'], config)
    return builder, config


def _check_pseudos(config: dict, path: str) -> None:
    """Every element of the campaign must have a pseudopotential in the family the labels will use."""
    from aiida_mlff.workflows.campaign.config import build_structure
    from aiida_mlff.workflows.dft.label import DftLabelWorkChain, pseudo_problem

    family = DftLabelWorkChain.get_protocol_inputs(
        config['dft']['protocol'], {k: v for k, v in config['dft'].items() if k != 'protocol'}
    )['pseudo_family']
    problem = pseudo_problem({'system': build_structure(config).get_chemical_symbols()}, pseudo_family=family)
    if problem is not None:
        raise click.BadParameter(f'dft.pseudo_family: {problem[1]}', param_hint=f'campaign file {path}')


def _convergence(node) -> dict | None:
    """The contents of the campaign's ``convergence`` output, or None when it has none (yet)."""
    return node.outputs.convergence.get_dict() if 'convergence' in node.outputs else None


def _summary(node) -> None:
    """Print the convergence verdict first, then the state, active learning, barriers, scan, dataset, potential."""
    outputs = node.outputs
    convergence = _convergence(node)
    if convergence is not None:
        from aiida_mlff.report import convergence_lines

        for line in convergence_lines(convergence):
            click.echo(line)
    elif node.is_terminated:
        click.echo('Converged: unknown (this campaign has no convergence output)')
    else:
        click.echo('Converged: not decided yet (the campaign is still running)')
    click.echo(
        f'{node.process_label}<{node.pk}> {node.process_state.value if node.process_state else "?"}'
        f' (exit status {node.exit_status})'
    )
    if 'history' in outputs:
        history = outputs.history.get_dict()
        click.echo('Active learning:')
        for row in history.get('iterations', []):
            val = row.get('validation') or {}
            click.echo(
                f'  iteration {row["iteration"]}: {row["n_structures"]} structures, accurate {row["accurate"]:.2f}, '
                f'candidate {row["candidate"]:.2f}, failed {row["failed"]:.2f}, '
                f'force MAE {val.get("force_mae_meV_per_A", float("nan")):.0f} meV/Å, '
                f'blown-up replicas {row.get("n_blown_up", 0)}, failed labels {row.get("n_label_failures", 0)}'
            )
        click.echo(f'  stopped: {history.get("stop_reason")}')
    if 'barriers' in outputs:
        from aiida_mlff.report import barrier_lines

        rates = outputs.rates.get_dict() if 'rates' in outputs else None
        for line in barrier_lines(outputs.barriers.get_dict(), rates):
            click.echo(line)
    if 'comparison' in outputs:
        from aiida_mlff.report import comparison_lines

        for line in comparison_lines(outputs.comparison.get_dict()):
            click.echo(line)
    diff = outputs.scan.base.attributes.get('max_abs_difference_kcal_mol', None) if 'scan' in outputs else None
    if diff is not None:
        click.echo(f'Relaxed scan: potential vs pw.x within {diff:.2f} kcal/mol (max abs difference)')
    if 'dataset' in outputs:
        click.echo(f'Dataset TrainingSetData<{outputs.dataset.pk}>: {outputs.dataset.n_structures} pw.x labels')
    if 'potential' in outputs:
        click.echo(f'Potential PotentialData<{outputs.potential.pk}> (committee of {outputs.potential.committee_size})')


@click.group('campaign')
def cmd_campaign():
    """Run, submit and follow campaigns (a YAML file: system, sampling, DFT, training, active learning, umbrella)."""


@cmd_campaign.command('run')
@click.argument('path', type=click.Path(dir_okay=False))
@click.option('--pw-code', default='pw@localhost', show_default=True, help='The pw.x code.')
@click.option('--mlff-code', default='mlff-run@localhost', show_default=True, help='The mlff-run code.')
@click.option('--submit', is_flag=True, help='Hand the campaign to the daemon instead of running it here.')
@click.option('-o', '--output', type=click.Path(file_okay=False), default=None, help='Write the report here.')
@click.option('-v', '--verbose', is_flag=True, help="Also print AiiDA's report line of every step.")
@click.pass_context
def cmd_run(ctx, path, pw_code, mlff_code, submit, output, verbose):
    """Run the campaign in PATH on this profile (in-process, with a progress display), or submit it.

    The display shows the stage, round, active-learning iteration, labels used of the budget, umbrella windows
    (untrusted), the elapsed time and, once a round has finished, an estimate of the time left. After the run the
    convergence verdict comes first, then the results. The command fails (exit status 1) when the campaign did not
    finish well, e.g. when it did not converge; the message names the failed criteria.
    """
    builder, config = _builder(ctx, path, pw_code, mlff_code, output)
    if submit:
        _do_submit(builder)
        return
    from aiida.engine import run_get_node

    from aiida_mlff.cli.progress import live_progress

    click.echo(f'Running campaign `{config["name"]}`' + (' (report lines shown)' if verbose else ''))
    started = time.monotonic()
    with live_progress(verbose=verbose):
        _, node = run_get_node(builder)
    click.echo(f'Finished in {(time.monotonic() - started) / 60:.1f} min.')
    _summary(node)
    if output:
        from aiida_mlff.report import write_campaign_report

        paths = write_campaign_report(node, output)
        click.echo(f'Report written to {output} ({len(paths)} files)')
    if not node.is_finished_ok:
        raise click.ClickException(_failure_message(node))


def _failure_message(node) -> str:
    """Why the campaign did not finish well: the failed criteria when it did not converge, else its exit message."""
    convergence = _convergence(node)
    if convergence is not None and not convergence.get('converged', True):
        from aiida_mlff.report import failed_criteria_text

        failed = failed_criteria_text(convergence) or 'no criterion named'
        return f'the campaign did not converge (exit status {node.exit_status}): {failed}'
    return f'the campaign ended with exit status {node.exit_status}: {node.exit_message}'


def _do_submit(builder):
    from aiida.engine import submit
    from aiida.manage import get_manager

    profile = get_manager().get_profile()
    if profile.process_control_backend is None:
        raise click.ClickException(
            f'profile `{profile.name}` has no broker, so nothing can be submitted: run without --submit, or use a '
            'profile with RabbitMQ or ZeroMQ (aiida-mlff setup --full) and start the daemon (verdi daemon start)'
        )
    node = submit(builder)
    click.echo(f'Submitted {node.process_label}<{node.pk}>; follow it with `aiida-mlff campaign status {node.pk}`')


@cmd_campaign.command('submit')
@click.argument('path', type=click.Path(dir_okay=False))
@click.option('--pw-code', default='pw@localhost', show_default=True)
@click.option('--mlff-code', default='mlff-run@localhost', show_default=True)
@click.pass_context
def cmd_submit(ctx, path, pw_code, mlff_code):
    """Submit the campaign in PATH to the daemon."""
    builder, _ = _builder(ctx, path, pw_code, mlff_code)
    _do_submit(builder)


#: exit status of ``campaign status`` for a finished campaign that did not converge
NOT_CONVERGED_STATUS = 3


@cmd_campaign.command('status')
@click.argument('identifier')
@click.pass_context
def cmd_status(ctx, identifier):
    """Say where campaign IDENTIFIER (PK or UUID) stands: verdict, state, steps run, and results so far.

    The convergence verdict comes first. Exit status: 0, or 3 when the campaign finished without converging (its
    ``convergence`` output says so), so that scripts can tell; 2 for a bad IDENTIFIER.
    """
    _load(ctx)
    from aiida import orm

    from aiida_mlff.cli._common import load_node_of_type

    expected = 'a campaign (CampaignWorkChain) node'
    node = load_node_of_type(identifier, orm.WorkflowNode, expected, param_hint='IDENTIFIER')
    if node.process_label != 'CampaignWorkChain':
        raise click.BadParameter(
            f'node {node.pk} is a {node.process_label or type(node).__name__}, expected {expected}',
            param_hint='IDENTIFIER',
        )
    _summary(node)
    _steps(node)
    convergence = _convergence(node)
    if node.is_finished and convergence is not None and not convergence.get('converged', True):
        ctx.exit(NOT_CONVERGED_STATUS)


def _steps(node) -> None:
    """Count the processes the campaign called, by label: finished ok, failed, running."""
    steps = sorted(node.called_descendants, key=lambda n: n.ctime)
    counts: dict[str, list[int]] = {}
    for child in steps:
        ok = child.is_finished_ok
        entry = counts.setdefault(child.process_label, [0, 0, 0])
        entry[0 if ok else 1 if child.is_finished else 2] += 1
    click.echo('Steps (finished ok / failed / running):')
    for label, (ok, failed, running) in counts.items():
        click.echo(f'  {label:<28} {ok:>4} {failed:>4} {running:>4}')


from aiida_mlff.cli.report import cmd_campaign_report  # noqa: E402

cmd_campaign.add_command(cmd_campaign_report, name='report')
