"""ASE calculator and the potential file (round trip, corrupt and incompatible files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from aiida_mlff.core.models import Potential
from aiida_mlff.core.potential_io import FORMAT, PotentialFileError

pytestmark = pytest.mark.usefixtures('one_thread')


def _water(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = Atoms('OH2OH2', positions=rng.uniform(0, 3.0, size=(6, 3)))
    return atoms


@pytest.fixture
def committee():
    pot = Potential.build(['H', 'O'], committee=3, seed=2, dtype='float64', hidden=(16, 8))
    pot.metadata['metrics'] = {'validation': {'force_mae_meV_per_A': 12.5}}
    return pot


def test_calculator_results(committee):
    atoms = _water()
    atoms.calc = committee.calculator()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert forces.shape == (6, 3)
    assert np.allclose(forces.sum(0), 0.0, atol=1e-10)  # no external force on an isolated system
    assert atoms.calc.results['energy_std'] > 0
    assert atoms.calc.results['max_force_deviation'] > 0
    assert np.isclose(energy, atoms.calc.results['energies'].mean())
    single = Potential.build(['H', 'O'])
    atoms.calc = single.calculator()
    atoms.get_potential_energy()
    assert atoms.calc.results['energy_std'] == 0.0
    assert atoms.calc.results['max_force_deviation'] == 0.0


def test_calculator_stress_matches_ase_numeric(committee):
    atoms = bulk('Cu', 'fcc', a=3.0, cubic=True)
    atoms.set_chemical_symbols(['O', 'H', 'H', 'O'])
    atoms.rattle(0.1, seed=1)
    atoms.calc = committee.calculator()
    stress = atoms.get_stress()
    numeric = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.allclose(stress, numeric, atol=1e-7)


def test_save_load_round_trip(tmp_path, committee):
    path = committee.save(tmp_path / 'pot.pt')
    loaded = Potential.load(path)
    assert loaded.committee_size == 3
    assert loaded.elements == ['H', 'O']
    assert loaded.dtype == torch.float64
    assert loaded.hyperparameters() == committee.hyperparameters()
    assert loaded.metadata['metrics'] == committee.metadata['metrics']
    assert loaded.metadata['torch_version'] == torch.__version__
    for name in ('package_version', 'python_version'):
        assert name in loaded.metadata
    atoms = _water(1)
    atoms.calc = committee.calculator()
    expected = atoms.get_forces()
    atoms.calc = loaded.calculator()
    assert np.allclose(atoms.get_forces(), expected, atol=1e-12)


def test_missing_truncated_and_foreign_files(tmp_path, committee):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        Potential.load(tmp_path / 'nope.pt')
    path = committee.save(tmp_path / 'pot.pt')
    data = path.read_bytes()
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(PotentialFileError, match='not a readable potential file'):
        Potential.load(truncated)
    text = tmp_path / 'text.pt'
    text.write_text('hello')
    with pytest.raises(PotentialFileError, match='not a readable potential file'):
        Potential.load(text)
    foreign = tmp_path / 'foreign.pt'
    torch.save({'weights': torch.zeros(3)}, foreign)
    with pytest.raises(PotentialFileError, match='not an aiida-mlff potential file'):
        Potential.load(foreign)


def _payload(path):
    return torch.load(path, weights_only=True)


def test_corrupt_and_incompatible_content(tmp_path, committee):
    path = committee.save(tmp_path / 'pot.pt')
    payload = _payload(path)
    payload['state_dict']['reference_energies'] += 1.0
    torch.save(payload, tmp_path / 'corrupt.pt')
    with pytest.raises(PotentialFileError, match='corrupt'):
        Potential.load(tmp_path / 'corrupt.pt')

    payload = _payload(path)
    payload['format_version'] = 99
    torch.save(payload, tmp_path / 'future.pt')
    with pytest.raises(PotentialFileError, match='format version 99'):
        Potential.load(tmp_path / 'future.pt')

    payload = _payload(path)
    payload['hyperparameters']['architecture'] = 'nequip'
    torch.save(payload, tmp_path / 'arch.pt')
    with pytest.raises(PotentialFileError, match="architecture 'nequip'"):
        Potential.load(tmp_path / 'arch.pt')

    payload = _payload(path)
    payload['hyperparameters']['hidden'] = [8, 8]  # weights no longer fit the declared network
    torch.save(payload, tmp_path / 'shape.pt')
    with pytest.raises(PotentialFileError, match='do not fit'):
        Potential.load(tmp_path / 'shape.pt')
    assert _payload(path)['format'] == FORMAT


def test_untrusted_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))

    path = tmp_path / 'evil.pt'
    torch.save({'format': FORMAT, 'x': Evil()}, path)
    with pytest.raises(PotentialFileError):
        Potential.load(path)
