"""Helpers shared by the ``aiida-mlff`` and ``verdi data mlff`` commands: profile loading, node arguments, tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import click

__all__ = ['echo_table', 'load_node_of_type', 'load_profile_from_context', 'output_path']


def load_profile_from_context(ctx: click.Context) -> None:
    """Load the profile the command runs on.

    Under ``aiida-mlff`` that is the root group's ``-p/--profile`` (``ctx.obj.mlff_profile``, loaded with
    :func:`aiida_mlff.environment.load_mlff_profile`); under ``verdi data mlff`` it is verdi's own profile.
    """
    obj = ctx.find_root().obj
    if obj is not None and 'mlff_profile' in obj:
        from aiida_mlff.environment import load_mlff_profile

        try:
            load_mlff_profile(obj['mlff_profile'])
        except ValueError as exception:
            raise click.ClickException(str(exception)) from exception
        return
    from aiida.cmdline.utils.decorators import load_backend_if_not_loaded

    load_backend_if_not_loaded()


def load_node_of_type(identifier: str, classes: type | tuple[type, ...], expected: str, param_hint: str = 'NODE'):
    """Load the node with PK or UUID ``identifier`` and check that it is one of ``classes``.

    Parameters
    ----------
    identifier
        A PK (digits) or a UUID (or a unique UUID prefix).
    classes
        Accepted node classes.
    expected
        What the command expects, in words, for the error message (e.g. ``'a TrainingSetData (mlff.dataset)'``).
    param_hint
        The parameter named in the error.

    Raises
    ------
    click.BadParameter
        No such node, an ambiguous UUID prefix, or a node of another type; the message names what was expected.
    """
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_mlff.provenance import load_node

    if not identifier.strip():
        raise click.BadParameter(f'empty; expected the PK or UUID of {expected}', param_hint=param_hint)
    try:
        node = load_node(identifier)
    except NotExistent as exception:
        raise click.BadParameter(
            f'no node with PK or UUID {identifier!r}; expected {expected}', param_hint=param_hint
        ) from exception
    except MultipleObjectsError as exception:
        raise click.BadParameter(
            f'{identifier!r} matches several nodes: give more of the UUID', param_hint=param_hint
        ) from exception
    if not isinstance(node, classes):
        raise click.BadParameter(
            f'node {node.pk} is a {type(node).__name__}, expected {expected}', param_hint=param_hint
        )
    return node


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as a plain, aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        click.echo('  '.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            click.echo('  '.join('-' * w for w in widths))


def output_path(path: str | Path, *, folder: bool = False, force: bool = True, param_hint: str = 'OUTPUT') -> Path:
    """Check, before anything is computed or stored, that ``path`` can be written; return it as a ``Path``.

    A file output gets its missing parent folders created (as ``mkdir -p``); a folder output is created with its
    parents. Nothing else is written.

    Parameters
    ----------
    path
        The file (or, with ``folder``, the folder) the command will write.
    folder
        Whether ``path`` is a folder to write files into.
    force
        Whether an existing file may be overwritten (ignored for folders, which are written into).
    param_hint
        The parameter named in the error.

    Raises
    ------
    click.BadParameter
        ``path`` is a folder where a file is expected or the reverse, exists without ``force``, lies under a file, or
        lies in a folder this user cannot write in; the message names the path.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise click.BadParameter(f'{path} is a file, expected a folder to write into', param_hint=param_hint)
        if not folder and path.is_dir():
            raise click.BadParameter(f'{path} is a folder, expected a file name', param_hint=param_hint)
        if not folder and not force:
            raise click.BadParameter(f'{path} exists: use --force to overwrite it', param_hint=param_hint)
    existing = next(p for p in (path if folder else path.parent, *path.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise click.BadParameter(f'{existing} is a file, so {path} cannot be written', param_hint=param_hint)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.BadParameter(f'{path}: no permission to write in {existing}', param_hint=param_hint)
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as exception:
        raise click.BadParameter(
            f'{path}: cannot create its folder ({exception})', param_hint=param_hint
        ) from exception
    return path
