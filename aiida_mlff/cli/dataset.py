"""``aiida-mlff dataset``: import, export, show and list ``mlff.dataset`` nodes (extended XYZ in and out)."""

from __future__ import annotations

import click

from aiida_mlff.cli._common import echo_table, load_node_of_type, load_profile_from_context, output_path

__all__ = ['cmd_dataset']

EXPECTED = 'a TrainingSetData (mlff.dataset) node'


@click.group('dataset')
def cmd_dataset():
    """Labelled training sets (mlff.dataset): import, export, show, list."""


@cmd_dataset.command('import')
@click.argument('file', type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option('-L', '--label', default='', help='Label of the new node.')
@click.option('-D', '--description', default='', help='Description of the new node.')
@click.option('--label-method', default='imported from extxyz', show_default=True, help='How the labels were made.')
@click.pass_context
def cmd_dataset_import(ctx, file, label, description, label_method):
    """Store the labelled frames of the extended-XYZ FILE (energy in eV, forces in eV/Å) as one dataset.

    Every frame needs an energy and forces; a NaN or infinite energy, force, stress, position or cell is refused,
    naming the frame and atom (counted from 0), and nothing is stored.
    """
    from aiida_mlff.data.dataset import TrainingSetData

    load_profile_from_context(ctx)
    try:
        dataset = TrainingSetData.from_extxyz(file, label_method=label_method)
    except ValueError as exception:  # the message names the file, frame and atom
        raise click.BadParameter(str(exception), param_hint='FILE') from exception
    dataset.label = label
    dataset.description = description
    dataset.store()
    click.echo(
        f'Stored TrainingSetData<{dataset.pk}> {dataset.uuid}: {dataset.n_structures} structures, '
        f'{", ".join(dataset.elements)}'
    )


@cmd_dataset.command('export')
@click.argument('node')
@click.argument('output', type=click.Path(dir_okay=False, writable=True))
@click.option('-f', '--force', is_flag=True, help='Overwrite OUTPUT if it exists.')
@click.pass_context
def cmd_dataset_export(ctx, node, output, force):
    """Write the dataset NODE (PK or UUID) to the extended-XYZ file OUTPUT, with each label's source UUID.

    Missing parent folders of OUTPUT are created.
    """
    from aiida_mlff.data.dataset import TrainingSetData

    load_profile_from_context(ctx)
    dataset = load_node_of_type(node, TrainingSetData, EXPECTED)
    path = dataset.to_extxyz(output_path(output, force=force))
    click.echo(f'Wrote {dataset.n_structures} structures of TrainingSetData<{dataset.pk}> to {path}')


@cmd_dataset.command('show')
@click.argument('node')
@click.pass_context
def cmd_dataset_show(ctx, node):
    """Summarise the dataset NODE (PK or UUID): size, elements, label ranges and where the labels came from."""
    import numpy as np

    from aiida_mlff.data.dataset import TrainingSetData

    load_profile_from_context(ctx)
    dataset = load_node_of_type(node, TrainingSetData, EXPECTED)
    attributes = dataset.base.attributes
    natoms = dataset.get_array('natoms')
    energy = dataset.get_array('energy')
    forces = dataset.get_array('forces')
    sources = dataset.sources
    known = sum(1 for s in sources if s)
    creator = dataset.creator
    rows = [
        ('PK / UUID', f'{dataset.pk} / {dataset.uuid}'),
        ('label', dataset.label or '-'),
        ('structures', dataset.n_structures),
        ('atoms', f'{int(natoms.sum())} in all, {int(natoms.min())} to {int(natoms.max())} per structure'),
        ('elements', ', '.join(dataset.elements)),
        ('energy per atom (eV)', f'{(energy / natoms).min():.4f} to {(energy / natoms).max():.4f}'),
        ('max |force| (eV/Å)', f'{float(np.linalg.norm(forces, axis=1).max()):.4f}'),
        ('stress', 'yes' if attributes.get('has_stress', False) else 'no'),
        ('label method', attributes.get('label_method', '') or '-'),
        ('labels with a source', f'{known} of {len(sources)}'),
        ('created by', f'{creator.process_label or type(creator).__name__}<{creator.pk}>' if creator else '-'),
        ('content hash', dataset.content_hash),
    ]
    for key, value in rows:
        click.echo(f'{key + ":":<24}{value}')


@cmd_dataset.command('list')
@click.option('-l', '--limit', type=click.IntRange(min=1), default=None, help='Show at most this many (newest first).')
@click.pass_context
def cmd_dataset_list(ctx, limit):
    """List the datasets in the profile, newest first."""
    from aiida import orm

    from aiida_mlff.data.dataset import TrainingSetData

    load_profile_from_context(ctx)
    qb = orm.QueryBuilder().append(
        TrainingSetData,
        project=['id', 'ctime', 'label', 'attributes.n_structures', 'attributes.elements', 'attributes.label_method'],
    )
    qb.order_by({TrainingSetData: {'id': 'desc'}})
    if limit:
        qb.limit(limit)
    rows = [
        (pk, ctime.strftime('%Y-%m-%d %H:%M'), label or '-', n, ','.join(elements or []), method or '-')
        for pk, ctime, label, n, elements, method in qb.all()
    ]
    if not rows:
        click.echo('No datasets in this profile: import one with `aiida-mlff dataset import FILE`.')
        return
    echo_table(['PK', 'created', 'label', 'structures', 'elements', 'label method'], rows)
