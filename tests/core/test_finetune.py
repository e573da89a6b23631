"""Fine-tuning: committee resizing, energy offsets that follow a new DFT reference, replay errors, mlff-run."""

from __future__ import annotations

import copy
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlff.core import files
from aiida_mlff.core.atoms import AtomsBatch, neighbor_list
from aiida_mlff.core.finetune import resize_committee, shift_reference_energies
from aiida_mlff.core.models import Potential
from aiida_mlff.core.training import train

from .test_run import mlff_run, train_job

DATA = Path(__file__).parents[1] / 'data'

pytestmark = pytest.mark.usefixtures('one_thread')
TINY = {'cutoff': 3.5, 'angular_cutoff': 3.0, 'hidden': [8], 'n_radial': 4, 'n_angular': 2, 'zetas': [1, 4]}


def _molecules(seed: int = 0) -> list[Atoms]:
    """Small H/O clusters of four compositions, randomly displaced (unlabelled)."""
    rng = np.random.default_rng(seed)
    out = []
    for symbols in ('H2O', 'H2O2', 'OH', 'H2', 'HO2') * 3:
        atoms = Atoms(symbols, positions=rng.normal(scale=0.8, size=(len(Atoms(symbols)), 3)))
        atoms.positions += np.arange(len(atoms))[:, None] * 0.9
        atoms.center(vacuum=4.0)
        out.append(atoms)
    return out


def _evaluate(pot, frames):
    batch = AtomsBatch.from_atoms(frames, dtype=pot.dtype)
    return batch, neighbor_list(batch, pot.cutoff), pot.evaluate(batch, neighbor_list(batch, pot.cutoff))


def test_resize_keeps_the_parent_member_and_spreads_the_copies():
    pot = Potential.build(['H', 'O'], committee=2, seed=1, dtype=torch.float64, **TINY)
    pot.metadata = {'metrics': {'train': {}}}
    frames = _molecules()
    _, _, parent = _evaluate(pot, frames)
    bigger = resize_committee(pot, 5, seed=3)
    assert bigger.committee_size == 5
    assert bigger.metadata == pot.metadata
    _, _, grown = _evaluate(bigger, frames)
    # members 0 and 1 are the parent's, 2-4 perturbed copies of 0, 1, 0: close to their source, not equal
    torch.testing.assert_close(grown['energies'][:2], parent['energies'], rtol=0, atol=1e-12)
    independent = (parent['energies'][0] - parent['energies'][1]).abs().mean()
    for member, source in ((2, 0), (3, 1), (4, 0)):
        gap = (grown['energies'][member] - parent['energies'][source]).abs().mean()
        assert 0 < gap < 0.5 * independent
    smaller = resize_committee(pot, 1)
    torch.testing.assert_close(_evaluate(smaller, frames)[2]['energies'][0], parent['energies'][0], rtol=0, atol=1e-12)
    assert resize_committee(pot, 2) is pot
    # the same seed gives the same committee
    again = resize_committee(pot, 5, seed=3)
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), bigger.state_dict().values(), strict=True)
    )


def test_resize_mace_members():
    pytest.importorskip('mace')
    from aiida_mlff.core.architectures import build

    pot = build('mace', elements=['H', 'O'], committee=1, seed=0, channels=4, dtype=torch.float64)
    frames = _molecules()[:5]
    _, _, parent = _evaluate(pot, frames)
    grown = resize_committee(pot, 3, seed=0)
    _, _, out = _evaluate(grown, frames)
    torch.testing.assert_close(out['energies'][0], parent['energies'][0], rtol=0, atol=1e-12)
    assert (out['energies'][1:] - parent['energies'][0]).abs().max() > 0


def test_offsets_follow_a_shifted_reference_exactly():
    pot = Potential.build(['H', 'O'], committee=2, seed=4, dtype=torch.float64, **TINY)
    frames = _molecules()
    batch, nbrs, out = _evaluate(pot, frames)
    offsets = torch.tensor([-13.6, -432.1], dtype=torch.float64)  # eV per H and per O: another DFT reference
    counts = torch.stack([(batch.numbers[batch.batch == s] == z).sum() for s in range(len(frames)) for z in (1, 8)])
    labels = out['energies'][0] + (counts.view(-1, 2).double() * offsets).sum(1)
    shifts = shift_reference_energies(pot, [(batch, nbrs, labels)], pot.elements)
    np.testing.assert_allclose(shifts[0], offsets.numpy(), atol=1e-9)
    after = pot.evaluate(batch, nbrs)
    torch.testing.assert_close(after['energies'][0], labels, rtol=0, atol=1e-9)
    # member 1 had other weights: its own least-squares shift leaves residuals orthogonal to the composition
    residual = labels - after['energies'][1]
    assert float((counts.view(-1, 2).double().T @ residual).abs().max()) < 1e-8


def _relabel(frames, pot, offset_per_atom: float = 0.0):
    """Frames labelled by ``pot`` (plus ``offset_per_atom`` eV on every atom's energy)."""
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = pot.calculator()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy + offset_per_atom * len(atoms), forces=forces)
        out.append(atoms)
    return out


def test_fine_tuning_keeps_the_statistics_and_reports_the_replay_errors():
    water = ase.io.read(DATA / 'h2o_pbe_30ry.extxyz', index=':24')
    options = dict(epochs=30, batch_size=8, polish_steps=0, learning_rate=1e-2, seed=0)
    parent = Potential.build(['H', 'O'], seed=0, dtype=torch.float64, **TINY)
    first = train(parent, water[:16], **options)
    assert first['statistics'] == 'refit'
    mean, scale = parent.feature_mean.clone(), parent.energy_scale.clone()
    # the new labels: the same physics on another energy reference (+1 eV per atom), and a few other geometries
    new = _relabel(water[16:], parent, offset_per_atom=1.0)
    report = train(parent, new, replay=water[:16], **{**options, 'epochs': 5})
    assert report['statistics'] == 'keep'
    assert torch.equal(parent.feature_mean, mean)
    assert torch.equal(parent.energy_scale, scale)
    # the offsets took the reference change: the fine-tuned model fits the shifted labels at once
    assert report['train']['energy_mae_meV_per_atom'] < 5.0
    replay = report['replay']
    assert set(replay) == {'before', 'after', 'fraction', 'per_epoch'}
    assert replay['per_epoch'] == 0  # scored only
    assert replay['before']['n_structures'] == 16
    # forgetting shown: the replay set's energies are now 1 eV/atom off (the old reference), forces as before
    assert replay['after']['energy_mae_meV_per_atom'] > 900
    assert replay['after']['force_mae_meV_per_A'] < 2 * replay['before']['force_mae_meV_per_A'] + 1.0
    assert parent.metadata['replay'] == replay
    refit = train(parent, new, statistics='refit', **{**options, 'epochs': 1})
    assert refit['statistics'] == 'refit'
    assert not torch.equal(parent.feature_mean, mean)


def _scaled(frames, factor: float):
    """Frames whose energy and forces are ``factor`` times their labels (another "functional")."""
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(
            copy, energy=factor * atoms.get_potential_energy(), forces=factor * atoms.get_forces()
        )
        out.append(copy)
    return out


def test_rehearsal_mixes_the_replay_set_in_and_forgets_less():
    """Fine-tuning on labels that contradict the parent's (forces x 1.3 on other water geometries) with and without
    ``replay_fraction``: rehearsal keeps the parent's data in the loss, so its replay error after is lower."""
    water = ase.io.read(DATA / 'h2o_pbe_30ry.extxyz', index=':40')
    options = dict(batch_size=8, polish_steps=20, learning_rate=1e-2, seed=0, validation_fraction=0.2)
    parent = Potential.build(['H', 'O'], seed=0, dtype=torch.float64, **TINY)
    train(parent, water[:24], epochs=40, **options)
    new = _scaled(water[24:], 1.3)
    errors = {}
    for fraction in (0.0, 1.0):
        child = copy.deepcopy(parent)
        report = train(child, new, replay=water[:24], replay_fraction=fraction, epochs=40, **options)
        errors[fraction] = report['replay']['after']['force_mae_meV_per_A']
        assert report['replay']['fraction'] == fraction
        assert report['replay']['per_epoch'] == round(fraction * 13)  # 16 new frames, 13 of them train
    assert errors[1.0] < 0.7 * errors[0.0], errors
    with pytest.raises(ValueError, match='replay_fraction > 0 needs replay frames'):
        train(copy.deepcopy(parent), new, replay_fraction=0.5, epochs=1, **options)


def test_mlff_run_fine_tunes_a_parent_file_into_a_committee(tmp_path):
    water = ase.io.read(DATA / 'h2o_pbe_30ry.extxyz', index=':20')
    parent = Potential.build(['H', 'O'], seed=0, dtype=torch.float64, **TINY)
    train(parent, water[:12], epochs=5, batch_size=6, polish_steps=0, seed=0)
    parent.save(tmp_path / files.PARENT_POTENTIAL_FILE)
    ase.io.write(tmp_path / files.DATASET_FILE, water[12:], format='extxyz')
    ase.io.write(tmp_path / files.REPLAY_DATASET_FILE, water[:12], format='extxyz')
    job = train_job(model={'committee': 3}, epochs=3, polish_steps=0)
    job.update(parent_potential=files.PARENT_POTENTIAL_FILE, replay_dataset=files.REPLAY_DATASET_FILE)
    result = mlff_run(tmp_path, 'train', job)
    assert result.returncode == files.EXIT_OK, result.stderr
    summary = files.read_json(tmp_path / files.SUMMARY_FILE)
    assert summary['committee_size'] == 3
    assert summary['statistics'] == 'keep'
    assert summary['metrics']['replay']['before']['n_structures'] == 12
    rehearsal = train_job(epochs=1, polish_steps=0, replay_fraction=0.5)
    rehearsal['parent_potential'] = files.PARENT_POTENTIAL_FILE  # and no replay_dataset
    result = mlff_run(tmp_path, 'train', rehearsal)
    assert result.returncode == files.EXIT_BAD_INPUT
    assert 'replay_fraction > 0 needs a replay_dataset' in files.read_json(tmp_path / files.SUMMARY_FILE)['error']
    job['parameters']['model'] = {'architecture': 'mace'}
    result = mlff_run(tmp_path, 'train', job)
    assert result.returncode == files.EXIT_BAD_INPUT
    assert (
        "model.architecture is 'mace' but the parent potential is 'bp-chiral'"
        in files.read_json(tmp_path / files.SUMMARY_FILE)['error']
    )
