"""``aiida-mlff label``: label structures from files with pw.x into one ``mlff.dataset`` node."""

from __future__ import annotations

import click

#: Largest vacuum (Å) on each side of a molecule: a box beyond ~100 Å makes pw.x's FFT grid and memory explode.
MAX_VACUUM = 50.0
#: Largest rattle standard deviation (Å): beyond it atoms overlap and the structures say nothing about chemistry.
MAX_STDEV = 1.0


@click.command('label')
@click.argument('files', nargs=-1, type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option(
    '--rattle',
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help='Rattled copies to make of each structure.',
)
@click.option(
    '--stdev',
    type=click.FloatRange(min=0.0, max=MAX_STDEV),
    default=0.05,
    show_default=True,
    help=f'Rattle standard deviation, Å (0 to {MAX_STDEV:g}).',
)
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Seed of the rattle (>= 0).')
@click.option(
    '--vacuum',
    type=click.FloatRange(min=0.0, min_open=True, max=MAX_VACUUM),
    default=None,
    help=f'Put molecules in a box with this much vacuum on each side, Å (above 0, at most {MAX_VACUUM:g}).',
)
@click.option('--protocol', type=click.Choice(['fast', 'balanced', 'stringent']), default='fast', show_default=True)
@click.option('--code', 'code_label', default='pw@localhost', show_default=True, help='The pw.x code.')
@click.option('--max-concurrent', type=click.IntRange(min=1), default=None, help='Labels running at once (>= 1).')
@click.option(
    '-o',
    '--output',
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help='Also write the dataset as extxyz (missing folders are created).',
)
@click.pass_context
def cmd_label(ctx, files, rattle, stdev, seed, vacuum, protocol, code_label, max_concurrent, output):
    """Label the structures in FILES (any format ASE reads) with pw.x and store one dataset.

    Without FILES, labels the demo: rattled copies of an H2O molecule. Every input is checked before anything is
    stored or any pw.x job runs: readable files with structures, a cell (or --vacuum), a pseudopotential for every
    element in the protocol's pseudo family, no overlapping atoms, and a pw.x code.
    """
    from aiida import orm
    from aiida.engine import run_get_node
    from ase.build import molecule

    from aiida_mlff.calculations.functions import rattle_structure
    from aiida_mlff.environment import load_mlff_profile
    from aiida_mlff.workflows.dft.label import DftLabelWorkChain

    try:
        load_mlff_profile(getattr(ctx.obj, 'mlff_profile', None))
    except ValueError as exception:
        raise click.ClickException(str(exception)) from exception
    if output:
        from aiida_mlff.cli._common import output_path

        output = output_path(output, param_hint='-o/--output')
    code = _load_pw_code(code_label)

    if files:
        named = _read_structures(files)
    else:
        named = {'H2O (demo)': molecule('H2O')}
        vacuum = 4.0 if vacuum is None else vacuum
        rattle = rattle or 3
    if vacuum is not None:
        for atoms in named.values():
            atoms.center(vacuum=vacuum)
            atoms.pbc = True
    _check_structures(named, DftLabelWorkChain.get_protocol_inputs(protocol))
    structures = []
    for atoms in named.values():
        node = orm.StructureData(ase=atoms)
        if vacuum is not None:
            node.base.extras.set('molecule', True)
        if rattle:
            outputs = rattle_structure(node, orm.Int(rattle), orm.Float(stdev), orm.Int(seed))
            structures.extend(outputs[k] for k in sorted(outputs))
        else:
            structures.append(node)
    builder = DftLabelWorkChain.get_builder_from_protocol(
        code, structures, protocol=protocol, molecule=True if vacuum is not None else None
    )
    if max_concurrent:
        builder.max_concurrent = orm.Int(max_concurrent)
    click.echo(f'Labelling {len(structures)} structures with {code.full_label} ({protocol} protocol) ...')
    results, node = run_get_node(builder)
    click.echo(f'{node.process_label}<{node.pk}> finished with exit status {node.exit_status}')
    if 'failed' in results:
        for key, reason in results['failed'].get_dict().items():
            click.echo(f'  failed: {key}: {reason}')
    if 'dataset' in results:
        dataset = results['dataset']
        energies = dataset.get_array('energy')
        click.echo(f'Dataset TrainingSetData<{dataset.pk}>: {dataset.n_structures} structures, {dataset.elements}')
        for k, energy in enumerate(energies):
            click.echo(f'  {k}: E = {energy:.6f} eV  from PwCalculation {dataset.sources[k]}')
        if output:
            click.echo(f'Wrote {dataset.to_extxyz(output)}')
    if not node.is_finished_ok:
        raise click.ClickException(f'the labelling ended with: {node.exit_message}')


def _load_pw_code(label: str):
    """The pw.x code ``label``, or ``click.BadParameter`` naming ``--code``."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        code = orm.load_code(label)
    except (NotExistent, MultipleObjectsError, ValueError) as exception:
        raise click.BadParameter(f'no code `{label}`: run `aiida-mlff setup`', param_hint='--code') from exception
    plugin = getattr(code, 'default_calc_job_plugin', None)
    if plugin != 'quantumespresso.pw':
        raise click.BadParameter(
            f'code `{code.full_label}` runs {plugin or "no calculation plugin"}, expected quantumespresso.pw (pw.x)',
            param_hint='--code',
        )
    return code


def _read_structures(paths) -> dict:
    """Every structure of every file, keyed ``'FILE frame K'`` (K from 0); unreadable or empty files are bad input."""
    from ase.io import read

    named = {}
    for path in paths:
        try:
            frames = read(path, index=':')
        except Exception as exception:  # ASE raises many kinds of errors on files it cannot read
            raise click.BadParameter(
                f'{path}: ASE cannot read it ({type(exception).__name__}: {exception})', param_hint='FILES'
            ) from exception
        if not frames:
            raise click.BadParameter(f'{path}: holds no structures', param_hint='FILES')
        named.update((f'{path} frame {k}', atoms) for k, atoms in enumerate(frames))
    return named


def _check_structures(named: dict, inputs: dict) -> None:
    """Refuse, before any node is stored, what would make pw.x fail: see :func:`cmd_label`.

    ``inputs`` are the protocol's inputs of ``mlff.dft.label`` (its ``pseudo_family`` and ``min_distance``, Å).
    """
    import numpy as np

    from aiida_mlff.core.structures import closest_pair
    from aiida_mlff.workflows.dft.label import pseudo_problem

    for name, atoms in named.items():
        if not np.isfinite(atoms.positions).all():
            raise click.BadParameter(f'{name}: positions are not finite', param_hint='FILES')
        if atoms.cell.rank < 3:
            raise click.BadParameter(
                f'{name} has no 3D cell (a molecule?): give --vacuum to put it in a box', param_hint='FILES'
            )
        i, j, distance = closest_pair(atoms)
        if distance < inputs['min_distance']:
            raise click.BadParameter(
                f'{name}: atoms {i} and {j} are {distance:.3f} Å apart, closer than {inputs["min_distance"]} Å',
                param_hint='FILES',
            )
    problem = pseudo_problem(
        {name: atoms.get_chemical_symbols() for name, atoms in named.items()}, pseudo_family=inputs['pseudo_family']
    )
    if problem is not None:
        name, message = problem
        if name == 'ERROR_INVALID_PSEUDO_FAMILY':  # the installation, not the input
            raise click.ClickException(message)
        raise click.BadParameter(message, param_hint='FILES')
