"""Calcfunctions: small, fast steps that must appear in the provenance graph (sampling, merging, collecting)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlff.core import sampling
from aiida_mlff.data.dataset import EV_PER_A3_PER_GPA, TrainingSetData, merge_frames

__all__ = [
    'combine_potentials',
    'cv_scan_structure',
    'dataset_from_pw',
    'frame_key',
    'merge_datasets',
    'path_structure',
    'rattle_structure',
    'select_frames',
    'strain_structure',
]


def frame_key(index: int) -> str:
    """Link label of the ``index``-th structure in a namespace of structures (``s0000``, ``s0001``, ...)."""
    return f's{index:04d}'


def _as_outputs(frames) -> dict[str, orm.StructureData]:
    return {frame_key(k): orm.StructureData(ase=atoms) for k, atoms in enumerate(frames)}


@calcfunction
def rattle_structure(structure: orm.StructureData, n: orm.Int, stdev: orm.Float, seed: orm.Int) -> dict:
    """Return ``n`` Gaussian-rattled copies of ``structure`` (``stdev`` in Å) as ``s0000``, ``s0001``, ..."""
    return _as_outputs(sampling.rattle(structure.get_ase(), n=n.value, stdev=stdev.value, seed=seed.value))


@calcfunction
def strain_structure(structure: orm.StructureData, n: orm.Int, max_strain: orm.Float, seed: orm.Int) -> dict:
    """Return ``n`` randomly strained copies of a periodic ``structure``."""
    return _as_outputs(sampling.strain(structure.get_ase(), n=n.value, max_strain=max_strain.value, seed=seed.value))


def _rattled(frames, stdev: float, seed: int) -> list:
    """Each frame once, Gaussian-rattled by ``stdev`` Å (no copy when ``stdev`` is 0)."""
    if stdev <= 0:
        return list(frames)
    return [sampling.rattle(atoms, n=1, stdev=stdev, seed=seed + k)[0] for k, atoms in enumerate(frames)]


@calcfunction
def cv_scan_structure(structure: orm.StructureData, settings: orm.Dict) -> dict:
    """Structures along any CV before a potential exists: restrained relaxations with a bond surrogate.

    ``settings``: ``cv`` (spec), ``values`` (CV file unit: degrees for angles, Å for distances), ``rattle_stdev``
    (Å), ``seed``. The bonds of the structure are kept by harmonic springs (those the CV changes are left free),
    the CV is pulled to each value from the neighbouring value's structure, then each is rattled.
    """
    from aiida_mlff.core.colvars import cv_from_spec
    from aiida_mlff.core.restraints import bond_surrogate, cv_scan

    s = settings.get_dict()
    cv = cv_from_spec(s['cv'])
    atoms = structure.get_ase()
    relaxed = cv_scan(atoms, bond_surrogate(atoms, cv), cv, cv.to_internal(np.asarray(s['values'], dtype=float)))
    return _as_outputs(_rattled([frame for frame, _ in relaxed], s.get('rattle_stdev', 0.0), s.get('seed', 0)))


@calcfunction
def path_structure(initial: orm.StructureData, final: orm.StructureData, settings: orm.Dict) -> dict:
    """The IDPP path between two end structures (ends included), each rattled: ``images``, ``rattle_stdev`` (Å)."""
    from aiida_mlff.core.restraints import idpp_path

    s = settings.get_dict()
    frames = idpp_path(initial.get_ase(), final.get_ase(), int(s['images']))
    return _as_outputs(_rattled(frames, s.get('rattle_stdev', 0.0), s.get('seed', 0)))


@calcfunction
def merge_datasets(**datasets: TrainingSetData) -> TrainingSetData:
    """Concatenate datasets (in the order of their sorted link labels) and drop exact duplicates.

    The number of dropped duplicates is stored in the ``n_duplicates_dropped`` attribute of the result.
    """
    if not datasets:
        raise ValueError('merge_datasets needs at least one dataset')
    ordered = [datasets[key] for key in sorted(datasets)]
    frames, sources, dropped = merge_frames(ordered)
    methods = sorted({d.base.attributes.get('label_method', '') for d in ordered} - {''})
    merged = TrainingSetData(frames, sources=sources, label_method='; '.join(methods))
    merged.base.attributes.set('n_duplicates_dropped', dropped)
    return merged


@calcfunction
def dataset_from_pw(label_method: orm.Str, **labels) -> TrainingSetData:
    """Collect pw.x results into one dataset.

    ``labels`` holds, for each key ``K``, ``structure_K`` (StructureData), ``parameters_K`` (the
    ``output_parameters`` Dict of a PwCalculation: energy in eV) and ``trajectory_K`` (its ``output_trajectory``:
    forces in eV/Å, stress in GPa, sign flipped to ASE's convention). The source of each label is the UUID of the
    PwCalculation that created ``parameters_K``.
    """
    keys = sorted(k[len('structure_') :] for k in labels if k.startswith('structure_'))
    frames, sources = [], []
    for key in keys:
        structure = labels[f'structure_{key}']
        parameters = labels[f'parameters_{key}']
        trajectory = labels[f'trajectory_{key}']
        atoms = structure.get_ase()
        forces_units = parameters.get('forces_units', 'ev / angstrom').lower().replace(' ', '')
        if forces_units not in {'ev/angstrom', 'ev/å'}:
            raise ValueError(f'unexpected forces units {forces_units!r} in {parameters}')
        results = {
            'energy': float(parameters['energy']),
            'forces': np.asarray(trajectory.get_array('forces'))[-1],
        }
        if 'stress' in trajectory.get_arraynames():
            stress_units = parameters.get('stress_units', 'GPascal')
            if stress_units.lower() != 'gpascal':
                raise ValueError(f'unexpected stress units {stress_units!r}')
            # pw.x reports the stress with the opposite sign of ASE's convention (sigma = dE/d(strain) / V).
            s = -np.asarray(trajectory.get_array('stress'))[-1] * EV_PER_A3_PER_GPA
            results['stress'] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
        creator = parameters.creator
        sources.append(creator.uuid if creator is not None else '')
    return TrainingSetData(frames, sources=sources, label_method=label_method.value)


@calcfunction
def combine_potentials(**potentials):
    """Combine potentials (in the order of their sorted link labels) into one committee ``mlff.potential``."""
    import tempfile
    from pathlib import Path

    from aiida_mlff.core.committee import combine
    from aiida_mlff.data.potential import PotentialData

    if not potentials:
        raise ValueError('combine_potentials needs at least one potential')
    committee = combine([potentials[key].load_potential() for key in sorted(potentials)])
    with tempfile.TemporaryDirectory() as tmp:
        path = committee.save(Path(tmp) / PotentialData.DEFAULT_FILENAME)
        return PotentialData(path)


@calcfunction
def select_frames(settings: orm.Dict, **runs) -> dict:
    """Classify explored frames by committee force deviation and pick diverse candidates to label.

    ``settings``: ``trust_lower``, ``trust_upper`` (eV/Å), ``max_candidates``, ``seed``, ``fill_from_failed``;
    optional ``scale`` (calibration: deviations are multiplied by it first), ``runaway`` (eV/Å: a replica that blew
    up, by its ``status_K``, gives only its frames before its deviation first exceeded this)
    and ``cv_bins`` with ``period`` (CV internal unit or None): spread the labels along the first recorded CV
    (:func:`aiida_mlff.core.selection.select_along_cv`, which needs ``colvars_K``).
    ``runs`` holds, per MD run ``K``, ``deviations_K`` (ArrayData with ``max_force_deviation`` (frames, replicas)),
    optionally ``colvars_K`` and ``status_K`` (Dict), and its trajectories as ``trajectory_K_rNNNN``. Starting
    frames (step 0) and repeated geometries are left out. Returns the candidates (``candidate_NNNN``,
    StructureData) and ``statistics`` (a Dict of fractions, and per CV bin the candidates and chosen frames when
    spread along the CV).
    """
    from aiida_mlff.core.selection import classify, select_along_cv, select_candidates

    s = settings.get_dict()
    frames, deviations, cv_values = _explored_frames(s, runs)
    along_cv = s.get('cv_bins') and len(cv_values) == len(frames)
    if along_cv:
        k, bins = int(s['max_candidates']), int(s['cv_bins'])
        picked, spread = select_along_cv(frames, deviations, cv_values, s['trust_lower'], k, bins, s.get('period'))
        classification = classify(np.asarray(deviations), s['trust_lower'], s['trust_upper'])
    else:
        picked, classification = select_candidates(
            frames,
            deviations,
            s['trust_lower'],
            s['trust_upper'],
            int(s['max_candidates']),
            int(s.get('seed', 0)),
            fill_from_failed=bool(s.get('fill_from_failed', False)),
        )
    stats = classification.as_dict()
    stats['n_selected'] = len(picked)
    stats['max_deviation'] = float(np.nanmax(deviations)) if deviations else 0.0
    if along_cv:
        stats['along_cv'] = spread
    outputs = {'statistics': orm.Dict(stats)}
    for k, index in enumerate(picked):
        outputs[f'candidate_{k:04d}'] = orm.StructureData(ase=frames[index])
    return outputs


def _explored_frames(s: dict, runs: dict) -> tuple[list, list[float], list[float]]:
    """Frames, their (scaled) deviations and first-CV values from MD outputs, run-away frames left out."""
    from aiida_mlff.core.selection import sane_prefix

    scale = float(s.get('scale', 1.0))
    frames, deviations, cv_values, seen = [], [], [], set()
    for label, node in sorted(runs.items()):
        if not label.startswith('deviations_'):
            continue
        key = label[len('deviations_') :]
        dev = scale * node.get_array('max_force_deviation')  # (F, R)
        colvars = runs.get(f'colvars_{key}')
        status = runs[f'status_{key}'].get_dict().get('status', []) if f'status_{key}' in runs else []
        values = colvars.get_array('values')[..., 0] if colvars is not None else None  # (F, R), rows as dev
        row_of_step = None
        if 'step' in node.get_arraynames():
            row_of_step = {int(step): row for row, step in enumerate(node.get_array('step'))}
        for r in range(dev.shape[1]):
            trajectory = runs.get(f'trajectory_{key}_r{r:04d}')
            if trajectory is None:
                continue
            blown_up = r < len(status) and status[r] == 'blown_up'
            sane = sane_prefix(dev[:, r], s.get('runaway') if blown_up else None)
            steps = list(trajectory.get_stepids())
            # the arrays directly (one StructureData per frame would take most of the time of this function)
            positions = trajectory.get_array('positions')
            cells = trajectory.get_array('cells') if 'cells' in trajectory.get_arraynames() else None
            symbols = list(trajectory.symbols)
            pbc = trajectory.base.attributes.get('pbc', None)
            pbc = [bool(p) for p in pbc] if pbc is not None else cells is not None
            for k in range(trajectory.numsteps):
                if steps[k] == 0:
                    continue  # the starting structure itself: already known, never worth a new label
                f = row_of_step[int(steps[k])] if row_of_step is not None else k
                if f >= sane:
                    break  # the replica ran away here: its later frames are collapsed geometries
                digest = hash(np.round(positions[k], 6).tobytes())
                if digest in seen:
                    continue
                seen.add(digest)
                cell = cells[k] if cells is not None else None
                frames.append(Atoms(symbols, positions=positions[k], cell=cell, pbc=pbc if cell is not None else False))
                deviations.append(float(dev[f, r]))
                if values is not None:
                    cv_values.append(float(values[f, r]))
    return frames, deviations, cv_values
