"""``aiida-mlff pmf``: show and plot a potential of mean force (``XyData`` with a ``free_energy`` array)."""

from __future__ import annotations

import click

from aiida_mlff.cli._common import load_node_of_type, load_profile_from_context, output_path

__all__ = ['cmd_pmf']

EXPECTED = (
    "a PMF (an XyData node with a 'free_energy' y array, e.g. the `pmf` output of mlff.umbrella) or a free-energy "
    'surface (the `fes` ArrayData of a 2-D mlff.umbrella or mlff.metadynamics)'
)


def load_pmf(identifier: str):
    """Load the PMF or surface node ``identifier``, or raise ``click.BadParameter`` naming what was expected."""
    from aiida import orm

    from aiida_mlff.provenance import PMF_ARRAY
    from aiida_mlff.report_surface import is_surface

    node = load_node_of_type(identifier, (orm.XyData, orm.ArrayData), EXPECTED)
    if not isinstance(node, orm.XyData):
        if is_surface(node):
            return node
        raise click.BadParameter(f'ArrayData<{node.pk}> is not a free-energy surface; expected {EXPECTED}')
    if PMF_ARRAY not in (node.base.attributes.get('y_names', None) or []):
        raise click.BadParameter(
            f'XyData<{node.pk}> has no {PMF_ARRAY!r} array; expected {EXPECTED}', param_hint='NODE'
        )
    return node


def _sibling(node, label: str):
    """The output ``label`` of the process that returned or created ``node`` (e.g. its ``barriers``), or None."""
    from aiida import orm
    from aiida.common.links import LinkType

    qb = orm.QueryBuilder()
    qb.append(orm.Node, filters={'id': node.pk}, tag='pmf')
    qb.append(
        orm.ProcessNode,
        with_outgoing='pmf',
        edge_filters={'type': {'in': [LinkType.RETURN.value, LinkType.CREATE.value]}},
        tag='process',
    )
    qb.append(orm.Dict, with_incoming='process', edge_filters={'label': label}, project='*')
    qb.order_by({orm.Dict: {'id': 'desc'}})
    found = qb.first(flat=True)
    return found


@click.group('pmf')
def cmd_pmf():
    """Potentials of mean force: show, plot."""


@cmd_pmf.command('show')
@click.argument('node')
@click.option('--every', type=click.IntRange(min=1), default=1, show_default=True, help='Print every n-th point.')
@click.pass_context
def cmd_pmf_show(ctx, node, every):
    """Print the PMF NODE (eV and kcal/mol) with its states and transitions (a 2-D surface: basins and paths)."""
    import numpy as np

    from aiida_mlff.report import EV_TO_KCAL_MOL, barrier_lines

    load_profile_from_context(ctx)
    pmf = load_pmf(node)
    if not hasattr(pmf, 'get_x'):
        _show_surface(pmf)
        return
    x_name, x, x_unit = pmf.get_x()
    y = {name: np.asarray(values, dtype=float) for name, values, _ in pmf.get_y()}
    free = y['free_energy'] - np.nanmin(y['free_energy'])
    error = y.get('error', np.full_like(free, np.nan))
    members = sorted(k for k in y if k.startswith('member_'))
    click.echo(f'PMF XyData<{pmf.pk}> {pmf.uuid}: {len(x)} points, {len(members)} committee member curves')
    click.echo(f'{x_name + " (" + x_unit + ")":>18}  {"F (eV)":>10}  {"error (eV)":>10}  {"F (kcal/mol)":>12}')
    for k in range(0, len(x), every):
        click.echo(f'{x[k]:18.2f}  {free[k]:10.4f}  {error[k]:10.4f}  {free[k] * EV_TO_KCAL_MOL:12.3f}')
    k_max = int(np.nanargmax(free))
    click.echo(f'highest point: {free[k_max]:.4f} eV ({free[k_max] * EV_TO_KCAL_MOL:.2f} kcal/mol) at {x[k_max]:.1f}')
    barriers = _sibling(pmf, 'barriers')
    rates = _sibling(pmf, 'rates')
    if barriers is not None:
        nodes = f'Dict<{barriers.pk}>' + (f', rates Dict<{rates.pk}>' if rates is not None else '')
        click.echo(f'States and transitions [{nodes}]:')
        for line in barrier_lines(barriers.get_dict(), rates.get_dict() if rates is not None else None):
            click.echo(f'  {line}')


def _show_surface(fes) -> None:
    """Print a two-CV surface: its size, its basins and the barriers along the paths between them."""
    from aiida_mlff.report_surface import surface_lines

    shape = fes.get_array('free_energy').shape
    names = ' x '.join(fes.base.attributes.get('names'))
    estimator = fes.base.attributes.get('estimator', '')
    click.echo(
        f'Free-energy surface ArrayData<{fes.pk}> {fes.uuid}: {shape[0]} x {shape[1]} bins on {names} ({estimator})'
    )
    for line in surface_lines(fes):
        click.echo(f'  {line}')


@cmd_pmf.command('plot')
@click.argument('node')
@click.option(
    '-o',
    '--output',
    type=click.Path(dir_okay=False),
    default=None,
    help='PNG file (missing folders are created) [default: pmf_<PK>.png].',
)
@click.pass_context
def cmd_pmf_plot(ctx, node, output):
    """Plot the PMF NODE with its error band (a 2-D surface: its map, basins and minimum free-energy paths)."""
    from aiida_mlff.report import plot_pmf

    load_profile_from_context(ctx)
    pmf = load_pmf(node)
    output = output_path(output or f'pmf_{pmf.pk}.png', param_hint='-o/--output')
    if not hasattr(pmf, 'get_x'):  # two CVs: the map with its basins and paths
        from aiida_mlff.report_surface import plot_surface

        click.echo(f'Wrote {plot_surface(pmf, output)}')
        return
    barriers = _sibling(pmf, 'barriers')
    path = plot_pmf(pmf, output, barriers=barriers.get_dict() if barriers is not None else None)
    click.echo(f'Wrote {path}')
