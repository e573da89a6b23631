"""``aiida-mlff lineage``: where a node comes from (down to the DFT calculations) and what depends on it."""

from __future__ import annotations

import click

from aiida_mlff.cli._common import load_node_of_type, load_profile_from_context

__all__ = ['cmd_lineage']


@click.command('lineage')
@click.argument('node')
@click.option('-n', '--show', type=click.IntRange(min=0), default=3, show_default=True, help='PKs listed per type.')
@click.option('--dft', 'list_dft', is_flag=True, help='Also list every DFT calculation (PwCalculation) behind NODE.')
@click.pass_context
def cmd_lineage(ctx, node, show, list_dft):
    """Print the ancestors and descendants of NODE (PK or UUID) as a tree with counts by type.

    With --dft, also list every PwCalculation in the provenance of NODE, marking with * those whose labels are in the
    final datasets behind NODE (the others gave labels that were dropped, e.g. as exact duplicates on merging).
    """
    from aiida import orm

    from aiida_mlff import provenance

    load_profile_from_context(ctx)
    target = load_node_of_type(node, orm.Node, 'any node')
    result = provenance.lineage(target)
    click.echo(result.format_tree(show=show))
    if list_dft:
        rows = provenance.ancestors(target, orm.CalcJobNode, {'process_type': provenance.PW_PROCESS_TYPE})
        labels = provenance.label_sources_behind(target)
        click.echo(
            f'DFT calculations behind {type(target).__name__}<{target.pk}>: {len(rows)}, '
            f'{len(labels)} of them with labels in the final datasets (*)'
        )
        for row in rows:
            mark = '*' if row.uuid in labels else ' '
            click.echo(f'{mark} {row.process_label or "PwCalculation"}<{row.pk}> {row.uuid}')
