"""The potential file: one ``torch.save`` archive with weights and metadata, loaded with ``weights_only=True``.

Content: ``format`` (``'aiida-mlff-potential'``), ``format_version``, ``hyperparameters`` (architecture, elements,
cutoffs, descriptor and network sizes, committee size), ``state_dict`` (weights, normalisation, energy scale,
reference energies), ``checksum`` (SHA-256 of the weights), and ``metadata`` (metrics, training options, package,
torch and Python versions). Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import platform
import zipfile
from pathlib import Path

import torch

__all__ = ['FORMAT', 'FORMAT_VERSION', 'PotentialFileError', 'load_potential', 'save_potential', 'state_checksum']

FORMAT = 'aiida-mlff-potential'
FORMAT_VERSION = 1


class PotentialFileError(ValueError):
    """A potential file is unreadable, corrupt or incompatible with this version."""


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version('aiida-mlff')
    except Exception:
        return 'unknown'


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes and float64 values of a state dict."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().to(torch.float64).contiguous()
        digest.update(f'{name}:{tuple(tensor.shape)}'.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_potential(pot, path: str | Path) -> Path:
    """Write ``pot`` (a ``Potential``) to ``path`` and return the path."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in pot.state_dict().items()}
    metadata = dict(pot.metadata)
    metadata.update(
        {
            'package_version': _package_version(),
            'torch_version': str(torch.__version__),
            'python_version': platform.python_version(),
            'dtype': str(pot.dtype).replace('torch.', ''),
        }
    )
    payload = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'hyperparameters': pot.hyperparameters(),
        'state_dict': state,
        'checksum': state_checksum(state),
        'metadata': metadata,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_potential(path: str | Path, device: str | torch.device = 'cpu'):
    """Read a potential file written by :func:`save_potential`.

    Raises
    ------
    FileNotFoundError
        No such file.
    PotentialFileError
        The file is not a readable archive, not a potential, from a newer format version, its weights do not match
        the checksum (corrupt), or its weights do not fit the architecture it declares.
    """
    from .architectures import ARCHITECTURES
    from .architectures import build as build_architecture

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'potential file {path} does not exist')
    if not zipfile.is_zipfile(path):
        raise PotentialFileError(
            f'{path} is not a readable potential file: not a torch archive (truncated or corrupt?)'
        )
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError) as error:
        raise PotentialFileError(
            f'{path} is not a readable potential file (truncated or corrupt torch archive?): {error}'
        ) from error
    except Exception as error:
        raise PotentialFileError(f'{path} holds content that is not allowed in a potential file: {error}') from error
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        found = payload.get('format') if isinstance(payload, dict) else type(payload).__name__
        raise PotentialFileError(f'{path} is not an aiida-mlff potential file (format {found!r}, expected {FORMAT!r})')
    version = payload.get('format_version')
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PotentialFileError(
            f'{path} has format version {version!r}; this aiida-mlff reads versions up to {FORMAT_VERSION}: upgrade'
        )
    missing = [key for key in ('hyperparameters', 'state_dict', 'checksum') if key not in payload]
    if missing:
        raise PotentialFileError(f'{path} lacks the entries {missing}')
    state = payload['state_dict']
    if state_checksum(state) != payload['checksum']:
        raise PotentialFileError(f'{path} is corrupt: the weights do not match their checksum')
    hyper = dict(payload['hyperparameters'])
    architecture = hyper.get('architecture')
    if architecture not in ARCHITECTURES:
        raise PotentialFileError(
            f'{path} needs architecture {architecture!r}, which this version does not provide ({sorted(ARCHITECTURES)})'
        )
    metadata = dict(payload.get('metadata', {}))
    dtype = getattr(torch, metadata.get('dtype', 'float32'))
    try:
        pot = build_architecture(hyper.pop('architecture'), **hyper, dtype=dtype, device=device)
    except (TypeError, ValueError, KeyError) as error:
        raise PotentialFileError(f'{path} declares hyperparameters this version cannot build: {error}') from error
    try:
        pot.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as error:
        raise PotentialFileError(f'{path} has weights that do not fit its declared architecture: {error}') from error
    pot.metadata = metadata
    return pot
