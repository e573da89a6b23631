"""Charge, spin, k-points and stress of ``mlff.dft.label``, by builder inspection (no pw.x runs)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.plugins import WorkflowFactory
from ase import Atoms
from ase.build import bulk, molecule

from aiida_mlff.core.options import LABEL, OptionsError
from aiida_mlff.workflows.dft.label import magnetization_by_kind

DftLabelWorkChain = WorkflowFactory('mlff.dft.label')


@pytest.fixture
def pw_code(aiida_localhost):
    """A ``quantumespresso.pw`` code; building a builder never runs it."""
    return orm.InstalledCode(
        label='pw-builder-only',
        computer=aiida_localhost,
        filepath_executable='/bin/true',
        default_calc_job_plugin='quantumespresso.pw',
    )


def in_box(name: str, box: float = 10.0) -> Atoms:
    atoms = molecule(name)
    atoms.set_cell([box] * 3)
    atoms.center()
    atoms.pbc = True
    return atoms


def system_of(builder) -> dict:
    return builder.pw.pw.parameters.get_dict()['SYSTEM']


def test_periodic_cell_gets_kpoints_and_stress(pw_code):
    builder = DftLabelWorkChain.get_builder_from_protocol(pw_code, [bulk('Si', 'diamond', a=5.43)], protocol='fast')
    protocol_distance = DftLabelWorkChain.get_protocol_inputs('fast')['kpoints_distance']
    assert builder.pw.kpoints_distance.value == pytest.approx(protocol_distance)
    assert 'kpoints' not in builder.pw
    assert builder.pw.pw.parameters['CONTROL']['tstress'] is True
    assert 'settings' not in builder.pw.pw
    assert DftLabelWorkChain.get_protocol_inputs('stringent')['kpoints_distance'] < protocol_distance
    # the option, checked and named, reaches the mesh (a campaign's dft section sets it the same way)
    gamma = DftLabelWorkChain.get_builder_from_protocol(
        pw_code, [bulk('Si', 'diamond', a=5.43)], protocol='fast', overrides={'kpoints_distance': 2.0}
    )
    assert gamma.pw.kpoints_distance.value == 2.0
    # a mesh of one point is labelled with gamma_only (same numbers, about half the cost; see the stress test)
    from aiida_mlff.workflows.dft.label import gamma_mesh

    silicon = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))  # |b| = 2 pi sqrt(3) / a = 2.004 1/Å
    assert not gamma_mesh(silicon, 0.3)
    assert not gamma_mesh(silicon, 2.0)
    assert gamma_mesh(silicon, 2.1)
    with pytest.raises(OptionsError, match='kpoints_distance'):
        DftLabelWorkChain.get_builder_from_protocol(pw_code, [bulk('Si')], overrides={'kpoints_distance': -1})


@pytest.mark.parametrize('pbc', [True, False])
def test_molecule_in_a_box_gets_gamma_and_no_stress(pw_code, pbc):
    h2o = in_box('H2O')
    h2o.pbc = pbc
    builder = DftLabelWorkChain.get_builder_from_protocol(pw_code, {'w': h2o}, protocol='fast')
    assert builder.pw.kpoints.get_kpoints_mesh()[0] == [1, 1, 1]
    assert builder.pw.pw.settings.get_dict() == {'gamma_only': True}
    assert 'kpoints_distance' not in builder.pw
    assert builder.pw.pw.parameters['CONTROL']['tstress'] is False
    # a box smaller than molecule_vacuum + the molecule is a periodic cell
    tight = DftLabelWorkChain.get_builder_from_protocol(
        pw_code, {'w': in_box('H2O', 6.0)}, protocol='fast', overrides={'molecule_vacuum': 5.0}
    )
    assert 'kpoints_distance' in tight.pw
    assert tight.pw.pw.parameters['CONTROL']['tstress'] is True
    # explicit arguments win
    forced = DftLabelWorkChain.get_builder_from_protocol(pw_code, {'w': h2o}, molecule=False, stress=False)
    assert 'kpoints_distance' in forced.pw
    assert forced.pw.pw.parameters['CONTROL']['tstress'] is False


def test_defaults_leave_charge_and_spin_to_pw():
    defaults = LABEL.defaults()
    assert defaults['tot_charge'] == 0.0
    assert defaults['nspin'] == 1
    assert defaults['starting_magnetization'] == {}
    assert defaults['tot_magnetization'] is None


def test_charge_and_spin_reach_the_system_namelist(pw_code):
    overrides = {'tot_charge': -1, 'nspin': 2, 'starting_magnetization': {'O': 0.5}, 'tot_magnetization': 1.0}
    builder = DftLabelWorkChain.get_builder_from_protocol(pw_code, [in_box('H2O2')], overrides=overrides)
    system = system_of(builder)
    assert system['tot_charge'] == -1.0
    assert system['nspin'] == 2
    assert system['starting_magnetization'] == {'O': 0.5}
    assert system['tot_magnetization'] == 1.0
    assert system['occupations'] == 'fixed'  # the protocol's other entries stay
    plain = system_of(DftLabelWorkChain.get_builder_from_protocol(pw_code, [in_box('H2O2')]))
    assert not {'tot_charge', 'nspin', 'starting_magnetization', 'tot_magnetization'} & set(plain)
    # with smearing, a starting magnetization alone is enough
    smearing = {
        'nspin': 2,
        'starting_magnetization': {'Fe': 0.4},
        'pw': {'pw': {'parameters': {'SYSTEM': {'occupations': 'smearing', 'smearing': 'mv', 'degauss': 0.02}}}},
    }
    iron = DftLabelWorkChain.get_builder_from_protocol(pw_code, [bulk('Fe', 'bcc', a=2.87)], overrides=smearing)
    assert system_of(iron)['starting_magnetization'] == {'Fe': 0.4}
    assert 'tot_magnetization' not in system_of(iron)


def test_starting_magnetization_maps_to_the_kinds_of_each_structure():
    kinds = [('Fe1', 'Fe'), ('Fe2', 'Fe'), ('O', 'O')]
    assert magnetization_by_kind({'Fe': 0.4}, kinds) == {'Fe1': 0.4, 'Fe2': 0.4}
    assert magnetization_by_kind({'Fe': 0.4, 'Fe2': -0.4, 'O': 0.1}, kinds) == {'Fe1': 0.4, 'Fe2': -0.4, 'O': 0.1}
    assert magnetization_by_kind({'Ni': 0.4}, kinds) == {}
    structure = orm.StructureData(cell=np.eye(3) * 4.0)
    structure.append_atom(position=(0, 0, 0), symbols='Fe', name='Fe1')
    structure.append_atom(position=(2, 2, 2), symbols='Fe', name='Fe2')
    by_kind = magnetization_by_kind({'Fe': 0.3, 'Fe2': -0.3}, [(k.name, k.symbol) for k in structure.kinds])
    assert by_kind == {'Fe1': 0.3, 'Fe2': -0.3}


@pytest.mark.parametrize(
    ('overrides', 'field', 'words'),
    [
        ({'nspin': 3}, 'nspin', 'must be an integer >= 1 and <= 2'),
        ({'nspin': True}, 'nspin', 'must be an integer'),
        ({'nspin': 2}, 'nspin', 'needs starting_magnetization'),
        ({'tot_charge': 'minus one'}, 'tot_charge', 'must be a number'),
        ({'nspin': 2, 'starting_magnetization': {'Xo': 0.1}}, 'starting_magnetization', 'not a chemical element'),
        ({'nspin': 2, 'starting_magnetization': {'O': 1.5}}, 'starting_magnetization', 'must be a number in [-1, 1]'),
        ({'nspin': 2, 'starting_magnetization': ['O', 0.5]}, 'starting_magnetization', 'must be a mapping'),
        ({'starting_magnetization': {'O': 0.5}}, 'starting_magnetization', 'needs nspin = 2'),
        ({'tot_magnetization': 2.0}, 'tot_magnetization', 'needs nspin = 2'),
        ({'nspin': 2, 'tot_magnetization': -1.0}, 'tot_magnetization', 'must be a number >= 0'),
        (
            {'nspin': 2, 'starting_magnetization': {'Fe': 0.5}, 'tot_magnetization': 1.0},
            'starting_magnetization',
            'no structure holds Fe',
        ),
        ({'nspin': 2, 'starting_magnetization': {'O': 0.5}}, 'tot_magnetization', 'fixed occupations'),
        ({'molecule_vacuum': 0.0}, 'molecule_vacuum', 'must be a number > 0'),
    ],
)
def test_bad_values_name_the_field(pw_code, overrides, field, words):
    with pytest.raises(OptionsError) as info:
        DftLabelWorkChain.get_builder_from_protocol(pw_code, [in_box('H2O2')], overrides=overrides)
    assert f'DftLabelWorkChain.{field}: ' in str(info.value)
    assert words in str(info.value)


def test_written_pw_input_has_charge_and_spin(mlff_environment, prepare):
    """The work chain's own per-structure inputs, written by PwCalculation (no pw.x run)."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager
    from aiida_quantumespresso.calculations.pw import PwCalculation

    overrides = {'tot_charge': 1, 'nspin': 2, 'starting_magnetization': {'O': 0.5}, 'tot_magnetization': 1.0}
    structures = {'cation': in_box('H2O'), 'peroxide': in_box('H2O2')}
    builder = DftLabelWorkChain.get_builder_from_protocol(
        mlff_environment['code'], structures, protocol='fast', overrides=overrides
    )
    process = instantiate_process(get_manager().get_runner(), builder)
    inputs = process._pw_inputs('peroxide')
    assert inputs.pw.parameters['SYSTEM']['starting_magnetization'] == {'O': 0.5}
    folder, _ = prepare(PwCalculation, **inputs.pw, kpoints=inputs.kpoints)  # the base work chain passes them on
    text = (folder / 'aiida.in').read_text()
    namelist = text.split('&SYSTEM')[1].split('/')[0]
    system = dict(line.replace(' ', '').split('=') for line in namelist.strip().splitlines())
    species = [line.split()[0] for line in text.split('ATOMIC_SPECIES')[1].strip().splitlines()[:2]]
    oxygen = species.index('O') + 1  # pw.x numbers the species in the order of ATOMIC_SPECIES
    assert float(system[f'starting_magnetization({oxygen})'].replace('d', 'e')) == 0.5
    assert f'starting_magnetization({3 - oxygen})' not in system  # H: none
    assert system['nspin'] == '2'
    assert float(system['tot_charge'].replace('d', 'e')) == 1.0
    assert float(system['tot_magnetization'].replace('d', 'e')) == 1.0
    assert 'K_POINTS gamma' in text
    assert 'tstress = .false.' in text


def test_active_learning_labels_a_periodic_system_with_kpoints_and_stress(pw_code):
    """The labelling of active learning follows its seeds: a crystal gets k-points and stress, a molecule Gamma."""
    from aiida_mlff.workflows.active_learning.base import ActiveLearningWorkChain

    crystal = ActiveLearningWorkChain.get_builder_from_protocol(pw_code, pw_code, [bulk('Si', 'diamond', a=5.43)])
    assert 'kpoints_distance' in crystal.label.pw
    assert crystal.label.pw.pw.parameters['CONTROL']['tstress'] is True
    water = ActiveLearningWorkChain.get_builder_from_protocol(pw_code, pw_code, [in_box('H2O')])
    assert water.label.pw.pw.settings.get_dict() == {'gamma_only': True}
    assert water.label.pw.pw.parameters['CONTROL']['tstress'] is False
