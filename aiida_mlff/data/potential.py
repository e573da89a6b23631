"""``mlff.potential``: one potential file (weights and metadata) with its key facts as queryable attributes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aiida.orm import SinglefileData

from aiida_mlff.core.files import file_sha256

if TYPE_CHECKING:
    from aiida_mlff.core.contract import StoredPotential

__all__ = ['PotentialData']


class PotentialData(SinglefileData):
    """A trained potential, as written by :meth:`aiida_mlff.core.models.Potential.save`.

    Attributes (set from the file when the node is created): ``architecture``, ``elements``, ``cutoff`` (Å),
    ``committee_size``, ``hyperparameters``, ``metrics`` (validation errors, meV/atom and meV/Å), ``dtype``,
    ``package_version``, ``torch_version`` and ``content_hash`` (SHA-256 of the file); where the file has them, the
    uncertainty calibrations on the validation split ``calibration`` (committee), ``calibration_last_layer`` and
    ``calibration_both`` (scale, spearman, coverage_95, coverage_95_raw, n_frames, n_atoms; see
    :mod:`aiida_mlff.core.uncertainty`).
    """

    DEFAULT_FILENAME = 'potential.pt'

    def __init__(self, file: str | Path, filename: str | None = None, **kwargs):
        path = Path(file)
        super().__init__(file=path, filename=filename or self.DEFAULT_FILENAME, **kwargs)
        self._set_attributes_from(path)

    def _set_attributes_from(self, path: Path) -> None:
        from aiida_mlff.core.potential_io import load_potential
        from aiida_mlff.core.uncertainty import METADATA_KEYS

        pot = load_potential(path)
        hyper = pot.hyperparameters()
        metadata = dict(pot.metadata)
        attributes = self.base.attributes
        attributes.set('architecture', hyper.get('architecture'))
        attributes.set('elements', list(pot.elements))
        attributes.set('cutoff', float(pot.cutoff))
        attributes.set('committee_size', int(pot.committee_size))
        attributes.set('hyperparameters', _jsonable(hyper))
        attributes.set('metrics', _jsonable(metadata.get('metrics', {})))
        if metadata.get('replay'):  # fine-tuned: errors on the parent's data before and after (forgetting)
            attributes.set('replay', _jsonable(metadata['replay']))
        for key in METADATA_KEYS:  # the calibrations; the last-layer posterior itself stays in the file
            if key.startswith('calibration') and metadata.get(key) is not None:
                attributes.set(key, _jsonable(metadata[key]))
        for key in ('dtype', 'package_version', 'torch_version'):
            attributes.set(key, str(metadata.get(key, '')))
        attributes.set('content_hash', file_sha256(path))

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the potential knows."""
        return self.base.attributes.get('elements')

    @property
    def committee_size(self) -> int:
        """Number of committee members."""
        return self.base.attributes.get('committee_size')

    @property
    def cutoff(self) -> float:
        """Largest cutoff, Å."""
        return self.base.attributes.get('cutoff')

    def load_potential(self, device: str = 'cpu') -> StoredPotential:
        """Return the potential stored in this node (any registered architecture; see ``core/contract.py``)."""
        from aiida_mlff.core.potential_io import load_potential

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / self.filename
            path.write_bytes(self.get_content(mode='rb'))
            return load_potential(path, device=device)

    def export(self, path: str | Path) -> Path:
        """Write the potential file to ``path`` (loadable with ``Potential.load`` anywhere)."""
        path = Path(path)
        path.write_bytes(self.get_content(mode='rb'))
        return path


def _jsonable(value):
    """Turn tuples, numpy and torch scalars into plain JSON types for node attributes."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, 'item') and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return value.tolist()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)
