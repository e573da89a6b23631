"""``aiida-mlff potential``: list, show and export ``mlff.potential`` nodes."""

from __future__ import annotations

import click

from aiida_mlff.cli._common import echo_table, load_node_of_type, load_profile_from_context, output_path

__all__ = ['cmd_potential']

EXPECTED = 'a PotentialData (mlff.potential) node'


@click.group('potential')
def cmd_potential():
    """Trained potentials (mlff.potential): list, show, export."""


@cmd_potential.command('list')
@click.option('-l', '--limit', type=click.IntRange(min=1), default=None, help='Show at most this many (newest first).')
@click.pass_context
def cmd_potential_list(ctx, limit):
    """List the potentials in the profile, newest first, with their validation errors."""
    from aiida import orm

    from aiida_mlff.data.potential import PotentialData

    load_profile_from_context(ctx)
    qb = orm.QueryBuilder().append(
        PotentialData,
        project=[
            'id',
            'ctime',
            'label',
            'attributes.architecture',
            'attributes.elements',
            'attributes.committee_size',
            'attributes.metrics',
        ],
    )
    qb.order_by({PotentialData: {'id': 'desc'}})
    if limit:
        qb.limit(limit)
    rows = []
    for pk, ctime, label, arch, elements, size, metrics in qb.all():
        metrics = metrics or {}
        rows.append(
            (
                pk,
                ctime.strftime('%Y-%m-%d %H:%M'),
                label or '-',
                arch or '-',
                ','.join(elements or []),
                size,
                _number(metrics.get('energy_rmse_meV_per_atom')),
                _number(metrics.get('force_mae_meV_per_A')),
            )
        )
    if not rows:
        click.echo('No potentials in this profile.')
        return
    echo_table(
        ['PK', 'created', 'label', 'architecture', 'elements', 'members', 'E RMSE meV/atom', 'F MAE meV/Å'], rows
    )


def _number(value) -> str:
    return '-' if value is None else f'{float(value):.2f}'


@cmd_potential.command('show')
@click.argument('node')
@click.pass_context
def cmd_potential_show(ctx, node):
    """Show the architecture, hyperparameters, validation metrics and versions of the potential NODE."""
    from aiida_mlff.data.potential import PotentialData

    load_profile_from_context(ctx)
    potential = load_node_of_type(node, PotentialData, EXPECTED)
    attributes = potential.base.attributes
    creator = potential.creator
    rows = [
        ('PK / UUID', f'{potential.pk} / {potential.uuid}'),
        ('label', potential.label or '-'),
        ('architecture', attributes.get('architecture', '-')),
        ('elements', ', '.join(potential.elements)),
        ('cutoff (Å)', f'{potential.cutoff:g}'),
        ('committee size', potential.committee_size),
        ('dtype', attributes.get('dtype', '-') or '-'),
        (
            'versions',
            f'aiida-mlff {attributes.get("package_version", "?")}, torch {attributes.get("torch_version", "?")}',
        ),
        ('created by', f'{creator.process_label or type(creator).__name__}<{creator.pk}>' if creator else '-'),
        ('content hash', attributes.get('content_hash', '-')),
    ]
    for key, value in rows:
        click.echo(f'{key + ":":<18}{value}')
    metrics = attributes.get('metrics', {}) or {}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    if scalars:
        click.echo('validation metrics:')
        for key, value in sorted(scalars.items()):
            click.echo(f'  {key:<28}{value:.4g}')
    hyper = attributes.get('hyperparameters', {}) or {}
    if hyper:
        click.echo('hyperparameters:')
        for key, value in sorted(hyper.items()):
            click.echo(f'  {key:<28}{value}')


@cmd_potential.command('export')
@click.argument('node')
@click.argument('output', type=click.Path(dir_okay=False, writable=True))
@click.option('-f', '--force', is_flag=True, help='Overwrite OUTPUT if it exists.')
@click.pass_context
def cmd_potential_export(ctx, node, output, force):
    """Write the potential file of NODE to OUTPUT.

    The file loads anywhere with ``aiida_mlff.core.models.Potential.load(OUTPUT)``; ``.calculator()`` of that gives
    an ASE calculator. Missing parent folders of OUTPUT are created.
    """
    from aiida_mlff.data.potential import PotentialData

    load_profile_from_context(ctx)
    potential = load_node_of_type(node, PotentialData, EXPECTED)
    path = potential.export(output_path(output, force=force))
    click.echo(f'Wrote PotentialData<{potential.pk}> to {path}')
    click.echo(f"Load it with: Potential.load('{path}').calculator()  (from aiida_mlff.core.models import Potential)")
