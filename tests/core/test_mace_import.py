"""Importing a model file written by MACE itself (a pickled mace-torch module) and fine-tuning it.

The tests build small MACE models with mace-torch's own classes, save them as ``mace_run_train`` does
(``torch.save(model)``), import them, and compare with mace-torch's model called directly on a graph built by ASE.
Skipped where mace-torch is not installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import neighbor_list

from aiida_mlff.core import files
from aiida_mlff.core.foreign import ForeignModelError, import_mace_model
from aiida_mlff.core.potential_io import FORMAT, PotentialFileError, load_potential
from aiida_mlff.core.training import train

from .test_run import mlff_run, train_job

pytestmark = pytest.mark.usefixtures('one_thread')
DATA = Path(__file__).parents[1] / 'data' / 'h2o_pbe_30ry.extxyz'
E0 = {1: -13.6, 8: -432.1}  # eV, per element, as mace-torch's atomic_energies

#: two MACE set-ups: mace_run_train's defaults at a small size, and one with ZBL, Agnesi and a plain first layer
SETUPS = {
    'residual': {'interaction_cls_first': 'RealAgnosticResidualInteractionBlock', 'correlation': 3},
    'zbl-agnesi': {
        'interaction_cls_first': 'RealAgnosticInteractionBlock',
        'correlation': 2,
        'pair_repulsion': True,
        'distance_transform': 'Agnesi',
    },
}


class _Marker:
    """An object a weights-only load must refuse."""


def _mace_model(setup: dict, seed: int = 0, gate=None) -> torch.nn.Module:
    """A small ScaleShiftMACE for H and O built by mace-torch (random weights, float64 as mace_run_train makes)."""
    pytest.importorskip('mace', reason='mace-torch is not installed')
    from e3nn import o3
    from mace.modules import ScaleShiftMACE, interaction_classes

    options = dict(setup)
    first = interaction_classes[options.pop('interaction_cls_first')]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = ScaleShiftMACE(
            r_max=4.0,
            num_bessel=6,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=interaction_classes['RealAgnosticResidualInteractionBlock'],
            interaction_cls_first=first,
            num_interactions=2,
            num_elements=2,
            hidden_irreps=o3.Irreps('8x0e + 8x1o'),
            MLP_irreps=o3.Irreps('4x0e'),
            atomic_energies=np.array([E0[1], E0[8]]),
            avg_num_neighbors=5.0,
            atomic_numbers=[1, 8],
            gate=gate or torch.nn.functional.silu,
            radial_MLP=[16, 16],
            atomic_inter_scale=1.7,
            atomic_inter_shift=0.05,
            **options,
        )
    finally:
        torch.set_default_dtype(default)
    return model


@pytest.fixture(scope='module', params=sorted(SETUPS))
def mace_file(request, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A MACE model saved as mace_run_train saves it, and the model itself."""
    model = _mace_model(SETUPS[request.param])
    path = tmp_path_factory.mktemp(request.param) / 'water.model'
    torch.save(model, path)
    return path, model


def _structures() -> list[Atoms]:
    """Non-periodic molecules and periodic cells (one small enough for an atom to see its own images)."""
    water = ase.io.read(DATA, index='0')
    peroxide = molecule('H2O2')
    peroxide.center(vacuum=5.0)
    rng = np.random.default_rng(3)
    box = Atoms('H4O2', positions=rng.uniform(0, 4.2, (6, 3)), cell=[4.2, 4.4, 4.0], pbc=True)
    box.cell[1, 0] = 0.6  # a triclinic cell
    ice = ase.io.read(DATA, index='1')
    ice.set_cell([3.2, 3.4, 3.3], scale_atoms=False)
    ice.pbc = True
    ice.wrap()
    return [water, peroxide, box, ice]


def _mace_direct(model: torch.nn.Module, atoms: Atoms) -> dict[str, np.ndarray]:
    """mace-torch's own energy [eV], forces [eV/Å] and stress for ``atoms``, on edges from ASE's neighbour list."""
    i, j, shifts = neighbor_list('ijS', atoms, float(model.r_max))
    index = {int(z): k for k, z in enumerate(model.atomic_numbers)}
    species = torch.tensor([index[int(z)] for z in atoms.numbers])
    cell = torch.tensor(np.asarray(atoms.cell), dtype=torch.float64)
    data = {
        'positions': torch.tensor(atoms.positions, dtype=torch.float64),
        'node_attrs': torch.nn.functional.one_hot(species, len(index)).to(torch.float64),
        'edge_index': torch.tensor(np.stack([i, j]), dtype=torch.long),
        'shifts': torch.tensor(shifts @ np.asarray(atoms.cell), dtype=torch.float64),
        'unit_shifts': torch.tensor(shifts, dtype=torch.float64),
        'cell': cell,
        'batch': torch.zeros(len(atoms), dtype=torch.long),
        'ptr': torch.tensor([0, len(atoms)]),
    }
    periodic = bool(atoms.pbc.any())
    out = model(data, compute_force=True, compute_stress=periodic)
    result = {'energy': out['energy'].detach().numpy(), 'forces': out['forces'].detach().numpy()}
    if periodic:
        result['stress'] = out['stress'].detach().numpy()
    return result


def _ours(pot, atoms: Atoms) -> dict[str, np.ndarray]:
    from aiida_mlff.core.atoms import AtomsBatch

    batch = AtomsBatch.from_atoms(atoms, dtype=pot.dtype)
    out = pot.evaluate(batch, forces=True, stress=bool(atoms.pbc.any()))
    return {key: value.detach().double().numpy() for key, value in out.items()}


def _differences(pot, model) -> dict[str, float]:
    """Largest absolute difference of energy [eV], forces [eV/Å] and stress [eV/Å^3] over the structures."""
    gaps = {'energy': 0.0, 'forces': 0.0, 'stress': 0.0}
    for atoms in _structures():
        theirs, ours = _mace_direct(model, atoms), _ours(pot, atoms)
        for key, value in theirs.items():
            assert np.allclose(ours[key], value, rtol=1e-6, atol=1e-6 * np.abs(value).max()), (key, atoms)
            gaps[key] = max(gaps[key], float(np.abs(ours[key] - value).max()))
    return gaps


def test_imported_model_gives_maces_energies_forces_and_stress(mace_file, tmp_path):
    path, model = mace_file
    pot = import_mace_model(path)
    assert pot.architecture == 'mace'
    assert pot.elements == ['H', 'O']
    assert pot.committee_size == 1
    assert pot.dtype == torch.float64
    hyper = pot.hyperparameters()
    expected = {'cutoff': 4.0, 'channels': 8, 'max_l': 1, 'max_ell': 2, 'interactions': 2, 'n_bessel': 6}
    assert {key: hyper[key] for key in expected} == expected
    assert hyper['radial_mlp'] == [16, 16]
    assert hyper['readout'] == 4
    assert hyper['avg_neighbors'] == 5.0
    assert torch.allclose(pot.reference_energies[0], torch.tensor([E0[1], E0[8]], dtype=torch.float64))
    assert float(pot.members[0].scale_shift.scale) == 1.7
    source = pot.metadata['imported_from']
    assert source['format'] == 'mace'
    assert source['file'] == 'water.model'
    assert source['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
    gaps = _differences(pot, model)
    print(f'max |difference| ({path.parent.name}): {gaps}')
    # our file: weights-only, the same numbers, the SHA-256 of the MACE file kept
    saved = pot.save(tmp_path / 'imported.pt')
    payload = torch.load(saved, weights_only=True)
    assert payload['metadata']['imported_from']['sha256'] == source['sha256']
    again = load_potential(saved)
    assert again.metadata['imported_from'] == source
    # the pickle load of the import stays confined to it: a potential file with a pickled object is still refused
    evil = tmp_path / 'evil.pt'
    torch.save({'format': FORMAT, 'format_version': 1, 'payload': _Marker()}, evil)
    with pytest.raises(PotentialFileError, match='not allowed'):
        load_potential(evil)
    for atoms in _structures()[:3]:
        first, second = _ours(pot, atoms), _ours(again, atoms)
        assert all(np.array_equal(first[key], second[key], equal_nan=True) for key in ('energy', 'forces'))


def test_float32_file_and_committee(tmp_path):
    """A float32 model imports as float32 (the model's dtype) unless asked otherwise; a committee grows from it."""
    model = _mace_model(SETUPS['residual'], seed=1).float()
    path = tmp_path / 'float32.model'
    torch.save(model, path)
    pot = import_mace_model(path)
    assert pot.dtype == torch.float32
    assert pot.metadata['imported_from']['model_dtype'] == 'float32'
    wide = import_mace_model(path, committee=3, dtype='float64', seed=2)
    assert wide.committee_size == 3
    assert wide.dtype == torch.float64
    assert wide.metadata['imported_from'] == pot.metadata['imported_from']
    out = _ours(wide, _structures()[2])
    assert out['max_force_deviation'][0] > 0  # the copies are perturbed
    theirs = _mace_direct(model.double(), _structures()[2])
    assert np.allclose(out['member_forces'][0], theirs['forces'], rtol=1e-6, atol=1e-8)


def test_fine_tuning_the_imported_model_lowers_its_loss(tmp_path):
    """The imported model is a trained one: fine-tuning keeps its scale, shifts its offsets, and the loss falls."""
    path = tmp_path / 'water.model'
    torch.save(_mace_model(SETUPS['residual']), path)
    frames = ase.io.read(DATA, index=':12')
    pot = import_mace_model(path)
    report = train(pot, frames, epochs=4, batch_size=4, learning_rate=5e-3, polish_steps=0, seed=0)
    assert report['statistics'] == 'keep'
    assert float(pot.members[0].scale_shift.scale) == 1.7  # kept, not refitted
    losses = [row['train_loss'] for row in report['learning_curve']]
    print(f'fine-tuning losses: {losses}')
    assert losses[-1] < losses[0], losses
    # the same through mlff-run, with the imported potential as the parent file of a training job
    import_mace_model(path).save(tmp_path / files.PARENT_POTENTIAL_FILE)
    ase.io.write(tmp_path / files.DATASET_FILE, frames, format='extxyz')
    job = train_job(model={'committee': 2}, epochs=2, batch_size=4, polish_steps=0)
    job['parent_potential'] = files.PARENT_POTENTIAL_FILE
    result = mlff_run(tmp_path, 'train', job)
    assert result.returncode == files.EXIT_OK, result.stderr
    summary = files.read_json(tmp_path / files.SUMMARY_FILE)
    assert summary['statistics'] == 'keep'
    assert summary['committee_size'] == 2
    tuned = load_potential(tmp_path / files.POTENTIAL_FILE)
    assert tuned.metadata['imported_from']['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()


def _not_a_model(kind: str, path: Path) -> str:
    """Write a file that is no MACE model into ``path``; return what the error must say."""
    if kind == 'bytes':
        path.write_bytes(b'not a torch file at all')
        return 'not a MACE model file that torch can read'
    if kind == 'state-dict':
        torch.save({'weight': torch.zeros(3)}, path)
        return 'holds a dictionary, not a model'
    if kind == 'module':
        torch.save(torch.nn.Linear(2, 2), path)
        return 'holds a torch.nn.modules.linear.Linear, not a MACE energy model'
    from aiida_mlff.core.architectures import build

    build('bp-chiral', elements=['H', 'O'], cutoff=3.0).save(path)
    return 'aiida-mlff potential file'


@pytest.mark.parametrize('kind', ['bytes', 'state-dict', 'module', 'ours'])
def test_a_file_that_is_not_a_mace_model_is_refused(kind, tmp_path):
    pytest.importorskip('mace', reason='mace-torch is not installed')
    path = tmp_path / 'some.model'
    message = _not_a_model(kind, path)
    with pytest.raises(ForeignModelError, match=message):
        import_mace_model(path)
    with pytest.raises(FileNotFoundError):
        import_mace_model(tmp_path / 'missing.model')


def test_a_feature_we_cannot_represent_is_named(tmp_path):
    model = _mace_model(SETUPS['residual'], gate=torch.tanh)
    model.heads = ['Default', 'pt_head']
    path = tmp_path / 'tanh.model'
    torch.save(model, path)
    with pytest.raises(ForeignModelError, match=r"2 heads \['Default', 'pt_head'\].*gate 'tanh' \(ours: silu\)"):
        import_mace_model(path)


def test_a_model_the_rebuild_does_not_reproduce_is_refused(monkeypatch, tmp_path):
    """The last guard: hyperparameters that fit every weight but not the model (here the neighbour normalisation,
    which no tensor holds) are caught on the probe structure."""
    from aiida_mlff.core import foreign

    path = tmp_path / 'water.model'
    torch.save(_mace_model(SETUPS['residual']), path)
    read = foreign.mace_hyperparameters

    def misread(model):
        elements, hyper = read(model)
        return elements, {**hyper, 'avg_neighbors': 2 * hyper['avg_neighbors']}

    monkeypatch.setattr(foreign, 'mace_hyperparameters', misread)
    with pytest.raises(ForeignModelError, match='does not reproduce this MACE model'):
        import_mace_model(path)


def test_cli_converts_a_mace_file(tmp_path):
    from click.testing import CliRunner

    from aiida_mlff.cli.potential import cmd_potential

    path = tmp_path / 'water.model'
    torch.save(_mace_model(SETUPS['zbl-agnesi']), path)
    out = tmp_path / 'potential.pt'
    result = CliRunner().invoke(cmd_potential, ['import-mace', str(path), str(out), '--committee', '2'])
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() in result.output
    assert load_potential(out).committee_size == 2
    refused = CliRunner().invoke(cmd_potential, ['import-mace', str(DATA), str(tmp_path / 'other.pt')])
    assert refused.exit_code != 0
    assert 'not a MACE model file' in refused.output
