"""The potential contract as code: one physics suite every architecture passes, and the registry.

Each case of :data:`CASES` builds a small float64 committee of one architecture; every test runs on every case:
rotation/translation/permutation invariance, forces = -dE/dR by central differences, stress by finite strain on a
triclinic cell, the committee statistics, save/load round trip, and weights-only loading (also with the environment
variable that importing ``mace`` sets). An architecture added to the registry adds a case here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase import Atoms
from scipy.spatial.transform import Rotation

from aiida_mlff.core.architectures import ARCHITECTURES, BUILTIN, ArchitectureError, build, register_architecture
from aiida_mlff.core.atoms import AtomsBatch
from aiida_mlff.core.contract import EVALUATE_KEYS, PotentialLike, StoredPotential
from aiida_mlff.core.potential_io import FORMAT, PotentialFileError, load_potential

from .probes import finite_strain_stress

pytestmark = pytest.mark.usefixtures('one_thread')

#: architecture -> keyword arguments of a small float64 committee on H and O
CASES = {
    'bp-chiral': {'cutoff': 3.5, 'angular_cutoff': 3.0, 'n_radial': 4, 'n_angular': 2, 'hidden': [8], 'committee': 2},
    'mace': {'cutoff': 3.5, 'channels': 8, 'max_ell': 2, 'correlation': 2, 'radial_mlp': [8], 'committee': 2},
    # GFN2-xTB plus a BP correction; tblite's SCC converged tightly, so that its energy is smooth at 1e-10 eV
    'xtb-delta': {
        'cutoff': 3.5,
        'committee': 2,
        'correction': {'angular_cutoff': 3.0, 'n_radial': 4, 'n_angular': 2, 'hidden': [8]},
        'baseline': {'options': {'accuracy': 1e-4}},
    },
}
#: the library each architecture needs beyond ours
NEEDS = {'mace': 'mace', 'xtb-delta': 'tblite'}


@pytest.fixture(scope='module', params=sorted(CASES))
def pot(request):
    if request.param in NEEDS:
        pytest.importorskip(NEEDS[request.param], reason=f'{NEEDS[request.param]} is not installed')
    return build(request.param, elements=['H', 'O'], seed=3, dtype=torch.float64, **CASES[request.param])


def _molecule(seed: int = 0) -> Atoms:
    """Seven atoms, none closer than 0.9 Å, in a vacuum."""
    rng = np.random.default_rng(seed)
    positions = [rng.uniform(0, 2.8, 3)]
    while len(positions) < 7:
        trial = rng.uniform(0, 2.8, 3)
        if min(np.linalg.norm(trial - p) for p in positions) > 0.9:
            positions.append(trial)
    return Atoms('OH2OH2O', positions=positions)


def _crystal(seed: int = 0) -> Atoms:
    """A periodic triclinic cell of six atoms, some pairs across the boundary."""
    atoms = _molecule(seed)[:6]
    atoms.set_cell([[3.9, 0.0, 0.0], [0.7, 3.7, 0.0], [-0.5, 0.6, 3.8]])
    atoms.pbc = True
    return atoms


def _evaluate(pot, atoms: Atoms, **kw) -> dict:
    return pot.evaluate(AtomsBatch.from_atoms(atoms, dtype=torch.float64), **kw)


def _energy(pot, atoms: Atoms) -> float:
    return float(_evaluate(pot, atoms, forces=False)['energy'][0])


def test_keeps_the_contract(pot):
    assert isinstance(pot, PotentialLike)
    assert isinstance(pot, StoredPotential)
    out = _evaluate(pot, _molecule(), forces=True)
    m = pot.committee_size
    assert set(EVALUATE_KEYS) <= set(out)
    assert out['energies'].shape == (m, 1)
    assert out['forces'].shape == (7, 3)
    assert out['member_forces'].shape == (m, 7, 3)
    assert torch.allclose(out['energy'], out['energies'].mean(0), atol=1e-12)
    assert torch.allclose(out['forces'], out['member_forces'].mean(0), atol=1e-12)
    spread = (out['member_forces'] - out['forces']).square().sum(-1).mean(0).sqrt().max()
    assert torch.allclose(out['max_force_deviation'][0], spread, atol=1e-12)
    assert float(out['energy_std'][0]) > 0  # members differ


def test_rotation_translation_permutation_invariance(pot):
    atoms = _molecule(1)
    e0 = _energy(pot, atoms)
    f0 = _evaluate(pot, atoms)['forces'].numpy()
    rng = np.random.default_rng(2)
    for _ in range(3):
        rotation = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + rng.normal(size=3) * 4.0
        assert abs(_energy(pot, moved) - e0) < 1e-10
        np.testing.assert_allclose(_evaluate(pot, moved)['forces'].numpy(), f0 @ rotation.T, atol=1e-10)
    order = rng.permutation(len(atoms))
    permuted = atoms[order]
    assert abs(_energy(pot, permuted) - e0) < 1e-10
    np.testing.assert_allclose(_evaluate(pot, permuted)['forces'].numpy(), f0[order], atol=1e-10)


@pytest.mark.parametrize('periodic', [False, True])
def test_forces_are_minus_the_energy_gradient(pot, periodic):
    atoms = _crystal(4) if periodic else _molecule(4)
    forces = _evaluate(pot, atoms)['forces'].numpy()
    h = 1e-5
    for atom in (0, 2, len(atoms) - 1):  # an O, an H and the last atom: every axis
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            numeric = -(_energy(pot, plus) - _energy(pot, minus)) / (2 * h)
            assert abs(numeric - forces[atom, axis]) < 1e-7, (atom, axis)


def test_stress_is_the_finite_strain_derivative(pot):
    atoms = _crystal(5)
    stress = _evaluate(pot, atoms, stress=True)['stress'][0].numpy()
    numeric = finite_strain_stress(lambda strained: _energy(pot, strained), atoms, h=1e-6)
    assert np.abs(numeric - stress).max() <= 1e-6 * np.abs(stress).max() + 1e-10


def test_save_load_round_trip(pot, tmp_path):
    path = pot.save(tmp_path / 'pot.pt')
    again = load_potential(path)
    assert type(again) is type(pot)
    assert again.hyperparameters() == pot.hyperparameters()
    assert again.dtype == pot.dtype
    for atoms, keys in ((_molecule(6), ()), (_crystal(6), ('stress',))):
        first, second = _evaluate(pot, atoms, stress=True), _evaluate(again, atoms, stress=True)
        for key in ('energies', 'forces', 'member_forces', *keys):
            assert torch.equal(first[key], second[key]), key


_LOAD_SCRIPT = """
import importlib.util, os, sys
from aiida_mlff.core.potential_io import PotentialFileError, load_potential

def refused(stage):
    load_potential(sys.argv[1])  # the genuine file loads
    try:
        load_potential(sys.argv[2])
    except PotentialFileError:
        print('REFUSED', stage)

refused('plain')
os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'  # what importing mace does
refused('env')
if importlib.util.find_spec('mace') is not None:
    import mace  # noqa: F401
    refused('mace')
"""


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo PWNED',))


def test_weights_only_loading_holds(pot, tmp_path):
    """A pickled object in a potential file is refused, in one process: plainly, with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` set (what ``import mace`` does), and, where mace-torch is installed, after
    importing it."""
    good = pot.save(tmp_path / 'pot.pt')
    evil = tmp_path / 'evil.pt'
    torch.save({'format': FORMAT, 'format_version': 1, 'payload': _Evil()}, evil)
    env = dict(os.environ)
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    done = subprocess.run(
        [sys.executable, '-c', _LOAD_SCRIPT, str(good), str(evil)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'PWNED' not in done.stdout
    stages = [line.split()[1] for line in done.stdout.splitlines() if line.startswith('REFUSED')]
    mace_installed = importlib.util.find_spec('mace') is not None
    assert stages == ['plain', 'env', 'mace'] if mace_installed else ['plain', 'env']


def test_unknown_architecture_is_named(tmp_path, pot):
    with pytest.raises(ArchitectureError, match=r"unknown architecture 'nequip'.*bp-chiral"):
        build('nequip', elements=['H'])
    payload = torch.load(pot.save(tmp_path / 'pot.pt'), weights_only=True)
    payload['hyperparameters']['architecture'] = 'nequip'
    torch.save(payload, tmp_path / 'other.pt')
    with pytest.raises(PotentialFileError, match="architecture 'nequip'"):
        load_potential(tmp_path / 'other.pt')


def test_registry_is_lazy_and_breaks_the_import_circle():
    """Importing the registry, the file format or the options imports no architecture module."""
    script = textwrap.dedent(
        """
        import sys
        import aiida_mlff.core.architectures as registry, aiida_mlff.core.potential_io, aiida_mlff.core.options
        names = sorted(registry.ARCHITECTURES)
        loaded = [m for m in ('aiida_mlff.core.models', 'aiida_mlff.core.reference_models') if m in sys.modules]
        print(names, loaded)
        """
    )
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f'{sorted(BUILTIN)} []'  # every built-in listed, none imported


def test_plugin_architecture_from_an_entry_point(tmp_path):
    """A package that declares ``mlff.architectures`` in its metadata is found, built, saved and loaded back."""
    (tmp_path / 'toy_arch.py').write_text(
        textwrap.dedent(
            """
            from aiida_mlff.core.models import build_bp_chiral

            def build_toy(elements, cutoff=3.0, committee=1, seed=0, hidden=(4,), **options):
                pot = build_bp_chiral(elements, cutoff=cutoff, committee=committee, seed=seed, hidden=hidden, **options)
                pot.architecture = 'toy'
                return pot
            """
        )
    )
    info = tmp_path / 'toy_arch-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: toy-arch\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text('[mlff.architectures]\ntoy = toy_arch:build_toy\n')
    script = textwrap.dedent(
        """
        import sys
        from aiida_mlff.core.architectures import ARCHITECTURES, build
        from aiida_mlff.core.potential_io import load_potential
        assert 'toy' in ARCHITECTURES and ARCHITECTURES.origin('toy') == 'entry point'
        pot = build('toy', elements=['H', 'O'], hidden=[6])
        again = load_potential(pot.save(sys.argv[1]))
        print(type(again).__name__, again.architecture, list(again.hidden))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    done = subprocess.run(
        [sys.executable, '-c', script, str(tmp_path / 'toy.pt')], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ['Potential', 'toy', '[6]']


def test_registered_at_run_time_shadows_and_is_checked_by_the_options():
    from aiida_mlff.core.options import TRAIN, OptionsError

    @register_architecture('test-tiny')
    def build_tiny(elements, cutoff=2.5, committee=1, seed=0, width=2, dtype=torch.float64, device='cpu'):
        return build('bp-chiral', elements=elements, cutoff=cutoff, committee=committee, seed=seed, hidden=[width])

    try:
        assert ARCHITECTURES.origin('test-tiny') == 'registered'
        TRAIN.validate({'model': {'architecture': 'test-tiny', 'width': 3}})
        with pytest.raises(OptionsError, match="unknown hyperparameter 'depth' of test-tiny"):
            TRAIN.validate({'model': {'architecture': 'test-tiny', 'depth': 3}})
    finally:
        ARCHITECTURES._registered.pop('test-tiny')
