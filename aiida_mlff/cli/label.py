"""``aiida-mlff label``: label structures from files with pw.x into one ``mlff.dataset`` node."""

from __future__ import annotations

import click


@click.command('label')
@click.argument('files', nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option('--rattle', type=int, default=0, show_default=True, help='Rattled copies to make of each structure.')
@click.option('--stdev', type=float, default=0.05, show_default=True, help='Rattle standard deviation, Å.')
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the rattle.')
@click.option('--vacuum', type=float, default=None, help='Put molecules in a box with this much vacuum, Å.')
@click.option('--protocol', type=click.Choice(['fast', 'balanced', 'stringent']), default='fast', show_default=True)
@click.option('--code', 'code_label', default='pw@localhost', show_default=True, help='The pw.x code.')
@click.option('--max-concurrent', type=int, default=None, help='Labels running at once.')
@click.option('-o', '--output', type=click.Path(dir_okay=False), default=None, help='Also write the dataset as extxyz.')
@click.pass_context
def cmd_label(ctx, files, rattle, stdev, seed, vacuum, protocol, code_label, max_concurrent, output):
    """Label the structures in FILES (any format ASE reads) with pw.x and store one dataset.

    Without FILES, labels the demo: rattled copies of an H2O molecule.
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida.engine import run_get_node
    from ase.build import molecule
    from ase.io import read

    from aiida_mlff.calculations.functions import rattle_structure
    from aiida_mlff.environment import load_mlff_profile
    from aiida_mlff.workflows.dft.label import DftLabelWorkChain

    try:
        load_mlff_profile(getattr(ctx.obj, 'mlff_profile', None))
    except ValueError as exception:
        raise click.ClickException(str(exception)) from exception
    try:
        code = orm.load_code(code_label)
    except NotExistent as exception:
        raise click.BadParameter(f'no code `{code_label}`: run `aiida-mlff setup`', param_hint='--code') from exception

    atoms_list = []
    for path in files:
        try:
            atoms_list.extend(read(path, index=':'))
        except Exception as exception:
            raise click.BadParameter(f'{path}: ASE cannot read it ({exception})', param_hint='FILES') from exception
    if not files:
        atoms_list = [molecule('H2O')]
        vacuum = 4.0 if vacuum is None else vacuum
        rattle = rattle or 3
    structures = []
    for atoms in atoms_list:
        if vacuum is not None:
            atoms.center(vacuum=vacuum)
            atoms.pbc = True
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
