"""``aiida-mlff potential``: list, show and export ``mlff.potential`` nodes."""

from __future__ import annotations

import click

from aiida_mlff.cli._common import echo_table, load_node_of_type, load_profile_from_context, output_path

__all__ = ['cmd_potential']

EXPECTED = 'a PotentialData (mlff.potential) node'


@click.group('potential')
def cmd_potential():
    """Trained potentials (mlff.potential): list, show, export; import a MACE model file."""


#: columns of ``potential list`` after the identity: (heading, where the number comes from, key)
_LIST_COLUMNS = (
    ('E RMSE meV/atom', 'metrics', 'energy_rmse_meV_per_atom'),
    ('F MAE meV/Å', 'metrics', 'force_mae_meV_per_A'),
    ('calib. Spearman', 'calibration', 'spearman'),
    ('calib. coverage 95%', 'calibration', 'coverage_95'),
)


@cmd_potential.command('list')
@click.option('-l', '--limit', type=click.IntRange(min=1), default=None, help='Show at most this many (newest first).')
@click.pass_context
def cmd_potential_list(ctx, limit):
    """List the potentials in the profile, newest first, with their errors.

    The errors are those measured by the training job on its validation split (``set`` says `validation`), or on
    its training split when it held none out (`train`). The calibration columns (Spearman rank correlation of the
    committee deviation with the error, and the fraction of errors inside the 95% band) appear when any potential
    carries a calibration.
    """
    from aiida_mlff.report import potential_metrics

    load_profile_from_context(ctx)
    rows = []
    for pk, ctime, label, arch, elements, size, metrics, calibration in _query_potentials(limit):
        split, errors = potential_metrics(metrics)
        values = {'metrics': errors, 'calibration': calibration if isinstance(calibration, dict) else {}}
        identity = (pk, ctime.strftime('%Y-%m-%d %H:%M'), label or '-', arch or '-', ','.join(elements or []), size)
        numbers = tuple(_number(values[source].get(key)) for _, source, key in _LIST_COLUMNS)
        rows.append((*identity, split or '-', *numbers))
    if not rows:
        click.echo('No potentials in this profile.')
        return
    headers = ['PK', 'created', 'label', 'architecture', 'elements', 'members', 'set', *(h for h, *_ in _LIST_COLUMNS)]
    if all(row[-1] == row[-2] == '-' for row in rows):  # no calibration anywhere: leave its columns out
        headers, rows = headers[:-2], [row[:-2] for row in rows]
    echo_table(headers, rows)


def _query_potentials(limit: int | None) -> list[tuple]:
    """Rows of (pk, ctime, label, architecture, elements, committee size, metrics, calibration), newest first."""
    from aiida import orm

    from aiida_mlff.data.potential import PotentialData

    projections = ['architecture', 'elements', 'committee_size', 'metrics', 'calibration']
    qb = orm.QueryBuilder().append(
        PotentialData, project=['id', 'ctime', 'label', *(f'attributes.{name}' for name in projections)]
    )
    qb.order_by({PotentialData: {'id': 'desc'}})
    if limit:
        qb.limit(limit)
    return qb.all()


def _number(value) -> str:
    """A number with two decimals, or ``'-'`` when there is none."""
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
    from aiida_mlff.report import potential_metrics

    split, errors = potential_metrics(attributes.get('metrics', {}))
    if errors:
        click.echo(f'{split} metrics:')
        for key, value in sorted(errors.items()):
            click.echo(f'  {key:<28}{value:.4g}')
    calibration = attributes.get('calibration', None)
    if isinstance(calibration, dict) and calibration:
        click.echo('calibration:')
        for key, value in sorted(calibration.items()):
            click.echo(f'  {key:<28}{value:.4g}' if isinstance(value, int | float) else f'  {key:<28}{value}')
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


@cmd_potential.command('import-mace')
@click.argument('model_file', type=click.Path(exists=True, dir_okay=False))
@click.argument('output', type=click.Path(dir_okay=False, writable=True))
@click.option(
    '--committee',
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help='Members: the model, and beyond one, copies of it with seeded noise (as fine-tuning grows a committee).',
)
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the noise of the copies.')
@click.option('--dtype', type=click.Choice(['float32', 'float64']), default=None, help="Default: the model's.")
@click.option('-f', '--force', is_flag=True, help='Overwrite OUTPUT if it exists.')
def cmd_potential_import_mace(model_file, output, committee, seed, dtype, force):
    """Convert the MACE model MODEL_FILE (a mace-torch `.model` file) into the potential file OUTPUT.

    OUTPUT is an aiida-mlff potential file of architecture `mace` that gives the MACE model's energies, forces and
    stress, with the SHA-256 of MODEL_FILE in its metadata (`imported_from`). Give it as `training.initial_potential`
    of a campaign to fine-tune the model. A `.model` file is a pickle: reading it runs code the file names, so only
    convert files you trust (OUTPUT itself loads weights-only, like every potential file). Needs mace-torch; no
    profile.
    """
    from aiida_mlff.core.architectures import ArchitectureError
    from aiida_mlff.core.foreign import ForeignModelError, import_mace_model

    path = output_path(output, force=force)
    try:
        potential = import_mace_model(model_file, committee=committee, seed=seed, dtype=dtype)
    except (ForeignModelError, ArchitectureError) as error:
        raise click.ClickException(str(error)) from error
    potential.save(path)
    source = potential.metadata['imported_from']
    click.echo(
        f'Wrote {path}: architecture mace, elements {",".join(potential.elements)}, cutoff {potential.cutoff:g} Å, '
        f'{potential.committee_size} member(s), {potential.dtype} (from {source["file"]}, sha256 {source["sha256"]})'
    )
