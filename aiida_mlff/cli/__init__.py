"""The ``aiida-mlff`` command line interface."""

from __future__ import annotations

import click
from aiida.cmdline.groups import VerdiCommandGroup

from aiida_mlff.cli.setup import cmd_setup

__all__ = ['cmd_root']


@click.group('aiida-mlff', cls=VerdiCommandGroup, context_settings={'help_option_names': ['-h', '--help']})
@click.option(
    '-p',
    '--profile',
    'profile',
    default=None,
    help='AiiDA profile to use (default: `mlff` if it exists, else the default profile).',
)
@click.pass_context
def cmd_root(ctx, profile):
    """Machine-learning force-field campaigns with full AiiDA provenance."""
    ctx.obj.mlff_profile = profile


cmd_root.add_command(cmd_setup)

from aiida_mlff.cli.label import cmd_label  # noqa: E402

cmd_root.add_command(cmd_label)

from aiida_mlff.cli.campaign import cmd_campaign  # noqa: E402

cmd_root.add_command(cmd_campaign)

from aiida_mlff.cli.dataset import cmd_dataset  # noqa: E402
from aiida_mlff.cli.lineage import cmd_lineage  # noqa: E402
from aiida_mlff.cli.pmf import cmd_pmf  # noqa: E402
from aiida_mlff.cli.potential import cmd_potential  # noqa: E402

cmd_root.add_command(cmd_dataset)
cmd_root.add_command(cmd_potential)
cmd_root.add_command(cmd_pmf)
cmd_root.add_command(cmd_lineage)
