"""``mlff.dataset``: a labelled training set of structures of varying size, stored as flat arrays."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from aiida.orm import ArrayData
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = ['TrainingSetData', 'non_finite_arrays', 'structure_hashes']

#: eV/Å^3 per GPa (the unit pw.x reports stress in through aiida-quantumespresso).
EV_PER_A3_PER_GPA = 1.0 / 160.21766208


def structure_hashes(
    numbers: np.ndarray,
    positions: np.ndarray,
    cells: np.ndarray,
    pbc: np.ndarray,
    energy: np.ndarray,
    forces: np.ndarray,
    natoms: np.ndarray,
) -> list[str]:
    """Return one SHA-256 hex digest per structure over its exact bytes (structure and labels).

    Two structures hash alike only when numbers, positions (Å), cell, pbc, energy (eV) and forces (eV/Å) are
    bitwise identical: this is the *exact duplicate* test used by :func:`merge_datasets`.
    """
    offsets = np.concatenate([[0], np.cumsum(natoms)])
    digests = []
    for k in range(len(natoms)):
        a, b = offsets[k], offsets[k + 1]
        h = hashlib.sha256()
        for part in (
            numbers[a:b].astype('<i8'),
            positions[a:b].astype('<f8'),
            cells[k].astype('<f8'),
            pbc[k].astype('?'),
            np.asarray(energy[k], dtype='<f8'),
            forces[a:b].astype('<f8'),
        ):
            h.update(np.ascontiguousarray(part).tobytes())
        digests.append(h.hexdigest())
    return digests


def non_finite_arrays(arrays: dict[str, np.ndarray]) -> str | None:
    """Name the first NaN or infinite value in dataset ``arrays`` (frame, and atom with its element), or return None.

    Checks energy (eV), positions (Å), forces (eV/Å), cells (Å) and stress (eV/Å^3); a stress that is NaN
    throughout means "no stress for this frame" and is accepted. Frames and atoms count from 0.
    """
    from ase.data import chemical_symbols

    offsets = np.concatenate([[0], np.cumsum(arrays['natoms'])])
    per_frame = {'energy': ('eV', arrays['energy']), 'cell': ('Å', arrays['cells'])}
    per_atom = {'position': ('Å', arrays['positions']), 'force': ('eV/Å', arrays['forces'])}
    for name, (unit, values) in per_frame.items():
        values = np.asarray(values, dtype=float).reshape(len(values), -1)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            shown = values[bad[0]].tolist()
            return f'frame {bad[0]}: {name} is not finite ({shown[0] if len(shown) == 1 else shown} {unit})'
    for name, (unit, values) in per_atom.items():
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            i = int(bad[0])
            k = int(np.searchsorted(offsets, i, side='right')) - 1
            element = chemical_symbols[int(arrays['numbers'][i])]
            return f'frame {k}, atom {i - offsets[k]} ({element}): {name} is not finite ({values[i].tolist()} {unit})'
    stress = arrays.get('stress')
    if stress is not None:
        absent = np.isnan(stress).all(axis=(1, 2))
        bad = np.flatnonzero(~(np.isfinite(stress).all(axis=(1, 2)) | absent))
        if bad.size:
            return f'frame {bad[0]}: stress is not finite ({stress[bad[0]].tolist()} eV/Å^3)'
    return None


class TrainingSetData(ArrayData):
    """N labelled structures (energies in eV, forces in eV/Å, optional stress in eV/Å^3).

    Arrays (``natoms[k]`` atoms in structure ``k``, atoms of all structures concatenated):

    ``numbers`` (sum natoms,), ``positions`` (sum natoms, 3) Å, ``cells`` (N, 3, 3) Å (rows are lattice vectors),
    ``pbc`` (N, 3), ``natoms`` (N,), ``energy`` (N,) eV, ``forces`` (sum natoms, 3) eV/Å, optionally ``stress``
    (N, 3, 3) eV/Å^3 with NaN rows for structures without stress, and ``sources`` (N,): the UUID of the calculation
    that produced each label, or an empty string for imported ones.

    Attributes: ``n_structures``, ``n_atoms_total``, ``elements``, ``content_hash`` (SHA-256 over all arrays),
    ``label_method`` (free text, e.g. ``'pw.x PBE 30 Ry'``), ``has_stress``.
    """

    _ARRAYS = ('numbers', 'positions', 'cells', 'pbc', 'natoms', 'energy', 'forces')

    def __init__(
        self,
        frames: Sequence[Atoms] | None = None,
        sources: Sequence[str] | None = None,
        label_method: str = '',
        **kwargs,
    ):
        super().__init__(**kwargs)
        if frames is not None:
            self.set_frames(frames, sources=sources, label_method=label_method)

    # ----------------------------------------------------------------------------------------------------- writing
    def set_frames(self, frames: Sequence[Atoms], sources: Sequence[str] | None = None, label_method: str = ''):
        """Fill the node from ``ase.Atoms`` carrying an energy and forces (e.g. a ``SinglePointCalculator``)."""
        frames = list(frames)
        if not frames:
            raise ValueError('a dataset needs at least one structure')
        if sources is not None and len(sources) != len(frames):
            raise ValueError(f'got {len(sources)} sources for {len(frames)} structures')
        energy, forces, stress = [], [], []
        for k, atoms in enumerate(frames):
            if atoms.calc is None:
                raise ValueError(f'structure {k} ({atoms.get_chemical_formula()}) carries no energy and forces')
            results = atoms.calc.results
            if 'energy' not in results or 'forces' not in results:
                raise ValueError(f'structure {k} ({atoms.get_chemical_formula()}) lacks energy or forces')
            energy.append(float(results['energy']))
            force = np.asarray(results['forces'], dtype=float)
            if force.shape != (len(atoms), 3):
                raise ValueError(f'structure {k}: forces have shape {force.shape}, expected ({len(atoms)}, 3)')
            forces.append(force)
            s = results.get('stress')
            if s is not None:
                s = np.asarray(s, dtype=float)
                if s.shape == (6,):  # ASE's Voigt order xx yy zz yz xz xy
                    xx, yy, zz, yz, xz, xy = s
                    s = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            stress.append(s)
        arrays = {
            'numbers': np.concatenate([a.numbers for a in frames]).astype(np.int64),
            'positions': np.concatenate([a.positions for a in frames]).astype(np.float64),
            'cells': np.stack([a.cell.array for a in frames]).astype(np.float64),
            'pbc': np.stack([a.pbc for a in frames]).astype(bool),
            'natoms': np.array([len(a) for a in frames], dtype=np.int64),
            'energy': np.array(energy, dtype=np.float64),
            'forces': np.concatenate(forces).astype(np.float64),
            'stress': (
                np.stack([np.full((3, 3), np.nan) if s is None else s for s in stress])
                if any(s is not None for s in stress)
                else None
            ),
        }
        problem = non_finite_arrays(arrays)
        if problem:
            raise ValueError(problem)
        self._set_arrays(
            sources=np.array(list(sources) if sources is not None else [''] * len(frames), dtype='<U36'),
            label_method=label_method,
            **arrays,
        )

    def _set_arrays(self, *, stress: np.ndarray | None, sources: np.ndarray, label_method: str, **arrays):
        for name in self._ARRAYS:
            self.set_array(name, arrays[name])
        if stress is not None:
            self.set_array('stress', stress)
        self.set_array('sources', sources)
        self.base.attributes.set('n_structures', len(arrays['natoms']))
        self.base.attributes.set('n_atoms_total', int(arrays['natoms'].sum()))
        from ase.data import chemical_symbols

        self.base.attributes.set('elements', sorted({chemical_symbols[z] for z in np.unique(arrays['numbers'])}))
        self.base.attributes.set('has_stress', stress is not None)
        self.base.attributes.set('label_method', label_method)
        self.base.attributes.set('units', {'energy': 'eV', 'forces': 'eV/Å', 'positions': 'Å', 'stress': 'eV/Å^3'})
        hashed = dict(arrays, **({'stress': stress} if stress is not None else {}))
        h = hashlib.sha256()
        for name in sorted(hashed):
            h.update(name.encode())
            h.update(np.ascontiguousarray(hashed[name]).tobytes())
        self.base.attributes.set('content_hash', h.hexdigest())

    def _validate(self) -> bool:
        """Refuse to store a node whose labels or structures hold NaN or infinite values (whatever filled it)."""
        super()._validate()
        names = set(self.get_arraynames())
        if not set(self._ARRAYS) <= names:
            return True  # an empty node: nothing to check
        problem = non_finite_arrays(self.arrays())
        if problem:
            raise ValueError(f'{type(self).__name__} not stored: {problem}')
        return True

    # ----------------------------------------------------------------------------------------------------- reading
    @property
    def n_structures(self) -> int:
        """Number of labelled structures."""
        return self.base.attributes.get('n_structures')

    @property
    def elements(self) -> list[str]:
        """Chemical symbols present, sorted."""
        return self.base.attributes.get('elements')

    @property
    def content_hash(self) -> str:
        """SHA-256 over all arrays: equal for datasets with identical content."""
        return self.base.attributes.get('content_hash')

    @property
    def sources(self) -> list[str]:
        """UUID of the calculation behind each label ('' where unknown)."""
        return [str(s) for s in self.get_array('sources')]

    def arrays(self) -> dict[str, np.ndarray]:
        """Return every array by name (stress only when present)."""
        return {name: self.get_array(name) for name in self.get_arraynames()}

    def __len__(self) -> int:
        return self.n_structures

    def to_atoms(self) -> list[Atoms]:
        """Return the structures as ``ase.Atoms`` with a ``SinglePointCalculator`` holding the labels."""
        arr = self.arrays()
        offsets = np.concatenate([[0], np.cumsum(arr['natoms'])])
        stress = arr.get('stress')
        frames = []
        for k in range(len(arr['natoms'])):
            a, b = offsets[k], offsets[k + 1]
            atoms = Atoms(numbers=arr['numbers'][a:b], positions=arr['positions'][a:b], cell=arr['cells'][k])
            atoms.pbc = arr['pbc'][k]
            results = {'energy': float(arr['energy'][k]), 'forces': arr['forces'][a:b].copy()}
            if stress is not None and not np.isnan(stress[k]).any():
                s = stress[k]
                results['stress'] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            atoms.calc = SinglePointCalculator(atoms, **results)
            if arr['sources'][k]:
                atoms.info['source'] = str(arr['sources'][k])
            frames.append(atoms)
        return frames

    def structure_hashes(self) -> list[str]:
        """Per-structure digests used to find exact duplicates."""
        arr = self.arrays()
        return structure_hashes(
            arr['numbers'], arr['positions'], arr['cells'], arr['pbc'], arr['energy'], arr['forces'], arr['natoms']
        )

    # ----------------------------------------------------------------------------------------------------- extxyz
    @classmethod
    def from_extxyz(cls, path: str | Path, label_method: str = 'imported from extxyz') -> TrainingSetData:
        """Read every frame of an extended-XYZ file (energies eV, forces eV/Å); each must carry both, all finite.

        Raises
        ------
        ValueError
            The file cannot be read as extended XYZ, holds no frames, or a frame lacks labels or holds a NaN or
            infinite value; the message names the file, and the frame and atom where there is one.
        """
        from ase.io import read

        try:
            frames = read(str(path), index=':', format='extxyz')
        except Exception as exception:  # ASE raises many kinds of errors on malformed files
            raise ValueError(
                f'{path}: not a readable extended-XYZ file ({type(exception).__name__}: {exception})'
            ) from exception
        for k, atoms in enumerate(frames):
            if atoms.calc is None or 'energy' not in atoms.calc.results or 'forces' not in atoms.calc.results:
                raise ValueError(f'{path}: frame {k} has no energy and forces (expected an extxyz with labels)')
        sources = [str(a.info.get('source', '')) for a in frames]
        try:
            return cls(frames, sources=sources, label_method=label_method)
        except ValueError as exception:
            raise ValueError(f'{path}: {exception}') from exception

    def to_extxyz(self, path: str | Path) -> Path:
        """Write all structures with their labels to an extended-XYZ file and return its path."""
        from ase.io import write

        path = Path(path)
        write(str(path), self.to_atoms(), format='extxyz')
        return path


def merge_frames(datasets: Iterable[TrainingSetData]) -> tuple[list[Atoms], list[str], int]:
    """Concatenate datasets in order, dropping exact duplicates; return ``(frames, sources, n_dropped)``."""
    seen: set[str] = set()
    frames: list[Atoms] = []
    sources: list[str] = []
    dropped = 0
    for dataset in datasets:
        for atoms, digest, source in zip(dataset.to_atoms(), dataset.structure_hashes(), dataset.sources, strict=True):
            if digest in seen:
                dropped += 1
                continue
            seen.add(digest)
            frames.append(atoms)
            sources.append(source)
    return frames, sources, dropped
