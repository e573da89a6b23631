"""Delta learning on a semi-empirical baseline: GFN2-xTB (tblite) plus a machine-learned correction.

The correction learns ``label - baseline`` (e.g. pw.x minus GFN2-xTB); MD, vibrations, the ASE calculator and the
campaign see ``baseline + correction`` through :class:`DeltaPotential`, which keeps the potential contract
(:mod:`aiida_mlff.core.contract`) and is the architecture ``'xtb-delta'`` of the registry.

Training the delta model::

    pot = build('xtb-delta', elements=['H', 'O'], correction={'architecture': 'bp-chiral', 'hidden': [32, 32]})
    train(pot.correction, subtract_baseline(frames, pot.baseline), **options)

The baseline is computed per system with tblite on the CPU (it has no committee spread and no gradient graph);
results come back as torch tensors on the device and dtype of the batch. Units: Å, eV, eV/Å, eV/Å^3, K.

The baseline options are ``core/options.py``'s ``BASELINE`` schema.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Bohr, Hartree, kB
from torch import Tensor

from .options import BASELINE as BASELINE_OPTIONS
from .options import XTB_SMALL_SYSTEM_ATOMS, OptionsError

__all__ = [
    'BASELINE_OPTIONS',
    'BaselineError',
    'DeltaPotential',
    'XtbBaseline',
    'build_xtb_delta',
    'subtract_baseline',
]

METHODS = ('GFN2-xTB', 'GFN1-xTB')
_CACHE_SIZE = 32  # tblite calculators kept per baseline (one per composition and boundary condition)


class BaselineError(RuntimeError):
    """tblite is missing, or a structure failed (named in the message)."""


def _tblite_interface():
    """The ``tblite.interface`` module, or :class:`BaselineError` saying how to get it."""
    try:
        import tblite.interface as interface
    except ImportError as error:
        raise BaselineError(
            f'the GFN-xTB baseline needs the Python package tblite ({error}); install it with '
            '`pip install tblite` or `conda install -c conda-forge tblite-python`'
        ) from error
    return interface


def tblite_version() -> str:
    """Version string of the installed tblite (provenance of the baseline)."""
    _tblite_interface()
    try:
        from importlib.metadata import version

        return version('tblite')
    except Exception:
        from tblite.library import get_version

        return '.'.join(str(part) for part in get_version())


def _systems(structures) -> tuple[list[tuple[np.ndarray, ...]], torch.dtype, torch.device]:
    """(numbers, positions [Å], cell [Å], pbc) of every system, with the dtype and device of the results."""
    if isinstance(structures, Atoms):
        structures = [structures]
    if isinstance(structures, list | tuple):
        return [(a.numbers, a.positions, a.cell.array, a.pbc) for a in structures], torch.float64, torch.device('cpu')
    batch = structures
    counts = batch.counts.tolist()
    positions = np.split(batch.positions.detach().cpu().double().numpy(), np.cumsum(counts)[:-1])
    numbers = np.split(batch.numbers.cpu().numpy(), np.cumsum(counts)[:-1])
    cells = batch.cell.detach().cpu().double().numpy()
    pbc = batch.pbc.cpu().numpy()
    systems = [(numbers[b], positions[b], cells[b], pbc[b]) for b in range(len(counts))]
    return systems, batch.dtype, batch.device


class XtbBaseline:
    """GFN-xTB energies [eV], forces [eV/Å] and stress [eV/Å^3] from tblite, one system at a time on the CPU.

    Parameters
    ----------
    method
        ``'GFN2-xTB'`` (default) or ``'GFN1-xTB'``.
    **options
        :data:`BASELINE_OPTIONS`: ``electronic_temperature`` [K], ``accuracy``, ``charge`` [e], ``spin`` (unpaired
        electrons), ``max_iterations``, ``boundary`` (``'isolated'``: molecules without periodic images),
        ``threads`` (OpenMP threads per structure; 0: one below ``XTB_SMALL_SYSTEM_ATOMS`` atoms, torch's count
        above).

    Raises
    ------
    BaselineError
        tblite is not installed.
    OptionsError
        An unknown method or a bad option.
    """

    def __init__(self, method: str = 'GFN2-xTB', **options: Any) -> None:
        if method not in METHODS:
            raise OptionsError([f'baseline.method: must be one of {list(METHODS)}, got {method!r}'])
        self._interface = _tblite_interface()
        self.method = method
        self.options = {**BASELINE_OPTIONS.defaults(), **BASELINE_OPTIONS.validate(options, 'baseline.options')}
        self.version = tblite_version()
        self._calculators: OrderedDict[tuple, Any] = OrderedDict()
        self._threadpools = None  # threadpoolctl's controller of the OpenMP runtimes, made at the first single point

    def spec(self) -> dict:
        """``{'method': ..., 'options': {...}}``: plain data that rebuilds this baseline."""
        return {'method': self.method, 'options': dict(self.options)}

    def _calculator(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray):
        """A tblite calculator for this composition and boundary condition, moved to ``positions`` [Å]."""
        periodic = self.is_periodic(pbc)
        key = (numbers.tobytes(), tuple(bool(p) for p in pbc) if periodic else 'isolated')
        lattice = cell / Bohr if periodic else None
        calc = self._calculators.pop(key, None)
        if calc is None:
            opts = self.options
            calc = self._interface.Calculator(
                self.method,
                np.asarray(numbers, dtype=np.int32),
                positions / Bohr,
                float(opts['charge']),
                int(opts['spin']),
                lattice,
                np.asarray(pbc, dtype=bool) if periodic else None,
            )
            calc.set('verbosity', 0)
            calc.set('accuracy', float(opts['accuracy']))
            calc.set('temperature', float(opts['electronic_temperature']) * kB / Hartree)
            calc.set('max-iter', int(opts['max_iterations']))
        elif periodic:
            calc.update(positions=positions / Bohr, lattice=lattice)
        else:
            calc.update(positions=positions / Bohr)
        return key, calc

    def is_periodic(self, pbc: np.ndarray) -> bool:
        """Whether a structure with these periodic directions is computed with its images (option ``boundary``)."""
        return bool(np.any(pbc)) and self.options['boundary'] == 'structure'

    def threads_for(self, n_atoms: int) -> int:
        """OpenMP threads of one single point of ``n_atoms`` atoms (the ``threads`` option; 0: by size)."""
        if self.options['threads'] > 0:
            return int(self.options['threads'])
        return 1 if n_atoms < XTB_SMALL_SYSTEM_ATOMS else torch.get_num_threads()

    def _openmp_limit(self, n_atoms: int):
        """A context that runs tblite's OpenMP regions on :meth:`threads_for` threads, restored afterwards."""
        from threadpoolctl import ThreadpoolController

        if self._threadpools is None:  # after tblite's library is loaded, so that its OpenMP runtime is seen
            self._threadpools = ThreadpoolController()
        return self._threadpools.limit(limits=self.threads_for(n_atoms), user_api='openmp')

    def single_point(
        self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, name: str = 'structure'
    ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Energy [eV], forces [eV/Å] and virial dE/d(strain) [eV] (None unless fully periodic) of one system.

        Raises
        ------
        BaselineError
            The SCC did not converge or tblite refused the structure; the message names ``name``.
        """
        formula = Atoms(numbers=numbers).get_chemical_formula()
        try:
            key, calc = self._calculator(numbers, positions, cell, pbc)
            with self._openmp_limit(len(numbers)):
                result = calc.singlepoint()
        except Exception as error:  # tblite raises its own RuntimeError / ValueError subclasses
            verb = 'did not converge' if 'converge' in str(error).lower() else 'failed'
            raise BaselineError(
                f'{self.method} (tblite {self.version}) {verb} on {name} ({formula}): {error}'
            ) from error
        self._calculators[key] = calc
        while len(self._calculators) > _CACHE_SIZE:
            self._calculators.popitem(last=False)
        energy = float(result['energy']) * Hartree
        forces = -np.asarray(result['gradient']) * (Hartree / Bohr)
        full = self.is_periodic(pbc) and bool(np.all(pbc)) and abs(np.linalg.det(cell)) > 0
        virial = np.asarray(result['virial']) * Hartree if full else None
        return energy, forces, virial

    def evaluate(
        self,
        structures,
        forces: bool = True,
        stress: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Baseline of a batch (``AtomsBatch``), one ``ase.Atoms`` or a list of them.

        Returns
        -------
        dict
            ``energy`` (B,) eV; ``forces`` (N, 3) eV/Å when ``forces``; ``stress`` (B, 3, 3) eV/Å^3 when ``stress``
            (``(1/V) dE/d(strain)``, ASE's sign; NaN for systems that are not periodic along all three axes).
            Tensors have the batch's dtype and device (float64 on the CPU for ``ase.Atoms``) unless given.
        """
        systems, batch_dtype, batch_device = _systems(structures)
        dtype = dtype or batch_dtype
        device = device or batch_device
        energies, all_forces, stresses = [], [], []
        for index, (numbers, positions, cell, pbc) in enumerate(systems):
            energy, f, virial = self.single_point(numbers, positions, cell, pbc, name=f'structure {index}')
            energies.append(energy)
            all_forces.append(f)
            volume = abs(np.linalg.det(cell))
            stresses.append(virial / volume if virial is not None else np.full((3, 3), np.nan))
        out = {'energy': torch.tensor(energies, dtype=dtype, device=device)}
        if forces:
            stacked = np.concatenate(all_forces) if all_forces else np.zeros((0, 3))
            out['forces'] = torch.as_tensor(stacked, dtype=dtype, device=device)
        if stress:
            out['stress'] = torch.as_tensor(np.array(stresses).reshape(-1, 3, 3), dtype=dtype, device=device)
        return out


def _labels(atoms: Atoms, index: int) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy [eV], forces [eV/Å] and stress (3, 3) [eV/Å^3] or None of a labelled frame."""
    results = getattr(atoms.calc, 'results', None) or {}
    if 'energy' not in results or 'forces' not in results:
        raise ValueError(f'frame {index} ({atoms.get_chemical_formula()}) has no energy and forces to subtract from')
    stress = results.get('stress')
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        if stress.shape == (6,):
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return float(results['energy']), np.asarray(results['forces'], dtype=float), stress


def subtract_baseline(frames: Sequence[Atoms], baseline: XtbBaseline) -> list[Atoms]:
    """Copies of labelled frames carrying ``label - baseline`` (the targets of the correction).

    Energies [eV], forces [eV/Å] and, for fully periodic frames with a stress label, stress [eV/Å^3] become the
    difference; each copy records the baseline in ``atoms.info``: ``baseline`` (method), ``baseline_tblite``
    (version) and ``baseline_energy`` [eV].
    """
    out = []
    for index, atoms in enumerate(frames):
        energy, forces, stress = _labels(atoms, index)
        base_energy, base_forces, virial = baseline.single_point(
            atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, name=f'frame {index}'
        )
        copy = atoms.copy()
        copy.info.update(
            {'baseline': baseline.method, 'baseline_tblite': baseline.version, 'baseline_energy': base_energy}
        )
        results = {'energy': energy - base_energy, 'forces': forces - base_forces}
        if stress is not None and virial is not None:
            delta = stress - virial / atoms.get_volume()
            results['stress'] = delta.flat[[0, 4, 8, 5, 2, 1]]
        copy.calc = SinglePointCalculator(copy, **results)
        out.append(copy)
    return out


class DeltaPotential(torch.nn.Module):
    """``baseline + correction``: a tight-binding baseline plus a learned correction of any architecture.

    Keeps :class:`aiida_mlff.core.contract.StoredPotential`. Elements, cutoff, committee, dtype and device are the
    correction's; the baseline adds the same energy, forces and stress to every committee member, so ``energy_std``
    and ``max_force_deviation`` are the correction's. The weights (``state_dict``) are the correction's, prefixed
    ``correction.``. Train it with ``train(pot.correction, subtract_baseline(frames, pot.baseline))``. A module
    (the correction is its submodule), so ``pot.to(device)`` moves the correction; the baseline stays on the CPU.
    """

    architecture = 'xtb-delta'

    def __init__(self, correction, baseline: XtbBaseline) -> None:
        super().__init__()
        self.correction = correction
        self.baseline = baseline
        self._own_metadata: dict = {}

    @property
    def cutoff(self) -> float:
        """The correction's cutoff [Å] (the baseline needs no neighbour list)."""
        return self.correction.cutoff

    @property
    def committee_size(self) -> int:
        """The correction's number of members."""
        return self.correction.committee_size

    @property
    def elements(self) -> list[str]:
        """The correction's elements."""
        return list(self.correction.elements)

    @property
    def dtype(self) -> torch.dtype:
        """The correction's floating point type."""
        return self.correction.dtype

    @property
    def device(self) -> torch.device:
        """The correction's device."""
        return self.correction.device

    @property
    def metadata(self) -> dict:
        """The correction's metadata (training metrics), this potential's own, and the baseline's provenance."""
        base = {'method': self.baseline.method, 'options': dict(self.baseline.options)}
        return {
            **dict(getattr(self.correction, 'metadata', {})),
            **self._own_metadata,
            'baseline': {**base, 'tblite_version': self.baseline.version},
        }

    @metadata.setter
    def metadata(self, value: dict) -> None:
        self._own_metadata = {k: v for k, v in dict(value).items() if k != 'baseline'}

    def hyperparameters(self) -> dict:
        """``architecture``, the correction's elements/cutoff/committee/seed, ``correction`` and ``baseline``."""
        inner = dict(self.correction.hyperparameters())
        top = {key: inner.pop(key) for key in ('elements', 'cutoff', 'committee', 'seed') if key in inner}
        return {'architecture': self.architecture, **top, 'correction': inner, 'baseline': self.baseline.spec()}

    def state_dict(self, *args, **kwargs) -> dict[str, Tensor]:
        """The correction's weights, prefixed ``correction.`` (any architecture, module or not)."""
        return {f'correction.{key}': value for key, value in self.correction.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True, assign: bool = False) -> None:
        """Load weights written by :meth:`state_dict` (RuntimeError on a foreign key, like ``nn.Module``)."""
        foreign = [key for key in state if not key.startswith('correction.')]
        if foreign:
            raise RuntimeError(f'unexpected keys for an xtb-delta potential: {foreign[:5]}')
        self.correction.load_state_dict({key.removeprefix('correction.'): value for key, value in state.items()})

    def save(self, path: str | Path) -> Path:
        """Write the potential file (see ``potential_io``)."""
        from .potential_io import save_potential

        return save_potential(self, path)

    def calculator(self, **kwargs):
        """An ASE calculator for this potential."""
        from .ase_calculator import MLFFCalculator

        return MLFFCalculator(self, **kwargs)

    def evaluate(self, batch, neighbors=None, forces: bool = True, stress: bool = False, **kwargs) -> dict[str, Tensor]:
        """``baseline + correction`` (the keys of :mod:`aiida_mlff.core.contract`); ``neighbors`` go to the correction.

        Extra keywords go to the correction's ``evaluate``; keys the baseline does not touch (committee spreads)
        are the correction's.
        """
        out = dict(self.correction.evaluate(batch, neighbors, forces=forces, stress=stress, **kwargs))
        ref = out['energy']
        base = self.baseline.evaluate(batch, forces=forces, stress=stress, dtype=ref.dtype, device=ref.device)
        out['energy'] = ref + base['energy']
        out['energies'] = out['energies'] + base['energy'].unsqueeze(0)
        if forces:
            out['forces'] = out['forces'] + base['forces']
            if 'member_forces' in out:
                out['member_forces'] = out['member_forces'] + base['forces'].unsqueeze(0)
        if stress and 'stress' in out:
            out['stress'] = out['stress'] + base['stress']
        return out


def _baseline_from(spec: XtbBaseline | dict | None) -> XtbBaseline:
    """A baseline from ``{'method': ..., 'options': {...}}`` (None: GFN2-xTB with default options)."""
    if isinstance(spec, XtbBaseline):
        return spec
    spec = dict(spec or {})
    unknown = sorted(set(spec) - {'method', 'options'})
    if unknown:
        raise OptionsError([f'baseline.{unknown[0]}: unknown key (known: method, options)'])
    return XtbBaseline(spec.get('method', 'GFN2-xTB'), **dict(spec.get('options') or {}))


def build_xtb_delta(
    elements: Sequence[str],
    cutoff: float | None = None,
    committee: int = 1,
    seed: int = 0,
    correction: dict | None = None,
    baseline: dict | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = 'cpu',
) -> DeltaPotential:
    """Builder of ``xtb-delta``: a correction of any registered architecture on a GFN-xTB baseline.

    Parameters
    ----------
    elements, cutoff, committee, seed
        Those of the correction (cutoff [Å]; None: the correction's default).
    correction
        The correction's own hyperparameters, with ``architecture`` (default ``'bp-chiral'``).
    baseline
        ``{'method': 'GFN2-xTB', 'options': {...}}`` (:data:`BASELINE_OPTIONS`); None: the defaults.
    dtype, device
        Of the correction (the baseline follows the batch).
    """
    from .architectures import DEFAULT_ARCHITECTURE, build

    inner = dict(correction or {})
    name = inner.pop('architecture', DEFAULT_ARCHITECTURE)
    if name == DeltaPotential.architecture:
        raise ValueError('the correction of an xtb-delta potential cannot itself be an xtb-delta potential')
    given = {'elements': list(elements), 'committee': committee, 'seed': seed, 'cutoff': cutoff}
    for key, value in given.items():
        if key in inner:
            theirs = inner.pop(key)
            theirs = list(theirs) if key == 'elements' else theirs
            if value is None:
                given[key] = theirs
            elif theirs != value:
                raise ValueError(f'correction.{key} = {theirs!r} contradicts {key} = {value!r} of the xtb-delta model')
    base = _baseline_from(baseline)
    if given['cutoff'] is None:
        given.pop('cutoff')
    pot = build(name, **given, dtype=dtype, device=device, **inner)
    return DeltaPotential(pot, base)
