"""``aiida-mlff setup``: create what is missing, or say what is there (``--check``)."""

from __future__ import annotations

import click


@click.command('setup')
@click.option('--check', is_flag=True, help='Only report what is there and what is missing; create nothing.')
@click.option(
    '--full',
    is_flag=True,
    help='Create the full deployment: profile `mlff-full` (PostgreSQL, RabbitMQ), computer `slurm-localhost` '
    '(SSH + Slurm), its codes. Needs the services of `scripts/services start`.',
)
@click.pass_context
def cmd_setup(ctx, check, full):
    """Create, only where missing, the embedded profile, `localhost`, the `pw` code and a pseudo family."""
    from aiida_mlff import environment

    profile = getattr(ctx.obj, 'mlff_profile', None)
    if full:
        from aiida_mlff import deployment

        try:
            deployment.setup_full(profile, echo=click.echo)
        except (FileNotFoundError, RuntimeError) as exception:
            raise click.ClickException(str(exception)) from exception
        return
    if check:
        items = environment.check(profile)
        for item in items:
            mark = click.style('ok     ', fg='green') if item.ok else click.style('MISSING', fg='red')
            click.echo(f'{mark} {item.name:<22} {item.message}')
        missing = [item.name for item in items if not item.ok]
        if missing:
            click.echo(f'Missing: {", ".join(missing)}. Run `aiida-mlff setup` to create what can be created.')
            ctx.exit(1)
        click.echo('Everything aiida-mlff needs is in place.')
        return
    try:
        environment.setup(profile, echo=click.echo)
    except FileNotFoundError as exception:
        raise click.ClickException(str(exception)) from exception
