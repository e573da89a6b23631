"""``verdi data mlff``: the dataset and potential commands inside verdi (entry point group ``aiida.cmdline.data``)."""

from __future__ import annotations

import click
from aiida.cmdline.groups import VerdiCommandGroup

from aiida_mlff.cli.dataset import cmd_dataset
from aiida_mlff.cli.potential import cmd_potential

__all__ = ['cmd_mlff']


@click.group('mlff', cls=VerdiCommandGroup)
def cmd_mlff():
    """Datasets (mlff.dataset) and potentials (mlff.potential) of aiida-mlff."""


cmd_mlff.add_command(cmd_dataset)
cmd_mlff.add_command(cmd_potential)
