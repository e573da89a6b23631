"""``mlff.umbrella`` on an analytic potential whose PMF is known: umbrella MD + WHAM must recover it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory
from ase.build import molecule

from aiida_mlff.core.models import Potential
from aiida_mlff.core.wham import KB_EV
from aiida_mlff.data.potential import PotentialData

UmbrellaWorkChain = WorkflowFactory('mlff.umbrella')
TORSION = (0.02, 0.03, 0.0)  # eV: V(phi) = 0.02 (1 + cos phi) + 0.03 (1 + cos 2 phi)
T = 300.0


def exact_pmf(phi: np.ndarray, scale: float = 1.0) -> np.ndarray:
    v = scale * sum(c * (1 + np.cos((n + 1) * phi)) for n, c in enumerate(TORSION))
    return v - v.min()


@pytest.fixture
def hooh():
    atoms = molecule('H2O2')[[2, 0, 1, 3]]  # H O O H: a chain for the analytic model
    atoms.center(vacuum=4.0)
    return orm.StructureData(ase=atoms)


@pytest.fixture
def torsion_potential(tmp_path):
    pot = Potential.build(
        ['H', 'O'], architecture='torsion-analytic', committee=2, spread=0.1, torsion=TORSION, dtype=torch.float64
    )
    return PotentialData(pot.save(tmp_path / 'torsion.pt')).store()


def torsion_builder(code, potential, hooh, equilibration: int, production: int, **overrides):
    """An ``mlff.umbrella`` builder: 24 windows over the whole dihedral, kappa 0.5 eV/rad^2, Langevin at T, float64."""
    parameters = {
        'windows': {'start': -180.0, 'stop': 180.0, 'count': 24},  # degrees, the dihedral's file unit
        'kappa': 0.5,
        'temperature': T,
        'equilibration_steps': equilibration,
        'production_steps': production,
        'friction': 0.05,
        'dtype': 'float64',
        'device': 'cpu',
        'bins': 48,
        **overrides,
    }
    return UmbrellaWorkChain.get_builder_from_protocol(
        code, potential, hooh, cv={'type': 'dihedral', 'atoms': [0, 1, 2, 3]}, protocol='fast', overrides=parameters
    )


def test_umbrella_recovers_a_known_pmf(mlff_environment, hooh, torsion_potential):
    builder = torsion_builder(mlff_environment['mlff_code'], torsion_potential, hooh, 1000, 20000, bootstrap=10)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    pmf = results['pmf']
    grid = pmf.get_x()[1]
    y = {name: values for name, values, _ in pmf.get_y()}
    kt = KB_EV * T
    exact = exact_pmf(grid)
    region = (exact < 5 * kt) & np.isfinite(y['free_energy'])
    shift = np.mean(y['free_energy'][region] - exact[region])  # PMFs are defined up to a constant
    rms = np.sqrt(np.mean((y['free_energy'][region] - exact[region] - shift) ** 2)) / kt
    assert rms < 0.1, f'RMS error {rms:.3f} kT'
    # each committee member's PMF (by reweighting) follows its own scaled torsion: 0.95 V and 1.05 V
    for m, scale in enumerate((0.95, 1.05)):
        member = y[f'member_{m}']
        ref = exact_pmf(grid, scale)
        shift = np.mean(member[region] - ref[region])
        assert np.sqrt(np.mean((member[region] - ref[region] - shift) ** 2)) / kt < 0.15
    # the error band includes the committee spread
    spread = np.nanstd([y['member_0'], y['member_1']], axis=0)
    assert np.all(y['error'][region] >= spread[region] - 1e-12)
    # the barrier: from the minimum to the top of the lower path between the two wells of V
    assert results['barrier'].base.attributes.get('kcal_mol') > 0
    overlap = results['overlap']
    assert overlap.get_array('neighbour_overlap').min() > 0.03
    assert len(overlap.get_array('centers')) == 24


def test_bad_windows_and_cv_are_refused(mlff_environment, hooh, torsion_potential):
    common = {'code': mlff_environment['mlff_code'], 'potential': torsion_potential, 'structure': hooh}
    steps = {'equilibration_steps': 10, 'production_steps': 100}
    with pytest.raises(ValueError, match=r'parameters\.kappa: must be a number > 0'):
        run_get_node(
            UmbrellaWorkChain,
            cv=orm.Dict({'type': 'dihedral', 'atoms': [0, 1, 2, 3]}),
            parameters=orm.Dict({'windows': {'centers': [0.0, 60.0]}, 'kappa': -1.0, **steps}),
            **common,
        )
    with pytest.raises(ValueError, match=r'cv\.atoms: a dihedral needs 4 distinct atom indices below 4'):
        run_get_node(
            UmbrellaWorkChain,
            cv=orm.Dict({'type': 'dihedral', 'atoms': [0, 1, 2, 7]}),
            parameters=orm.Dict({'windows': {'centers': [0.0, 60.0]}, 'kappa': 1.0, **steps}),
            **common,
        )


def test_windows_that_blow_up_are_rerun_alone_then_left_out(mlff_environment, hooh, tmp_path):
    """A model that fails (NaN) for dihedrals in [80, 100] degrees: only the windows there run again, then are dropped.

    The other windows are not rerun and their samples still give the known PMF away from the broken region.
    """
    broken = (math.radians(80.0), math.radians(100.0))
    pot = Potential.build(['H', 'O'], architecture='torsion-analytic', torsion=TORSION, broken=broken)
    potential = PotentialData(pot.save(tmp_path / 'broken.pt')).store()
    builder = torsion_builder(mlff_environment['mlff_code'], potential, hooh, 500, 6000, bootstrap=0, max_refinements=0)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    md_runs = [n for n in node.called if n.process_label == 'MdBaseWorkChain']
    assert len(md_runs) == 3  # the first run of all 24 windows, then two reruns of the windows that blew up
    first, *reruns = sorted(md_runs, key=lambda n: n.ctime)
    blown = [r for r, s in enumerate(first.outputs.status['status']) if s == 'blown_up']
    first_centres = np.degrees(first.outputs.colvars.get_array('centers')[:, 0])
    assert 90.0 in np.round(first_centres[blown], 6)  # the window centred in the broken region blew up
    assert len(blown) < 24
    for rerun in reruns:  # only the windows that blew up run again (each rerun: fewer or the same windows)
        centres = np.degrees(rerun.outputs.colvars.get_array('centers')[:, 0])
        assert set(np.round(centres, 6)) <= set(np.round(first_centres[blown], 6))
        assert 90.0 in np.round(centres, 6)
    # the second rerun also halves the time step
    params = [r.inputs.md.parameters.get_dict() for r in (first, *reruns)]
    assert params[2]['timestep'] == pytest.approx(0.5 * params[0]['timestep'])
    assert params[1]['seed'] != params[0].get('seed', 0)
    # WHAM left the dropped windows out; elsewhere the PMF is the known one
    centres = results['overlap'].get_array('centers')
    assert not np.any(np.isclose(np.degrees(centres), 90.0))
    dropped = np.asarray(results['dropped_windows'].get_list())  # in the CV's file unit: degrees
    assert np.any(np.isclose(dropped, 90.0))
    assert len(centres) + len(dropped) == 24
    grid = results['pmf'].get_x()[1]
    y = {name: values for name, values, _ in results['pmf'].get_y()}
    kt = KB_EV * T
    exact = exact_pmf(grid)
    far = np.abs(np.degrees(grid) - 90.0) > 45.0
    region = far & (exact < 4 * kt) & np.isfinite(y['free_energy'])  # short runs: the well-sampled part
    assert region.sum() > 20
    shift = np.mean(y['free_energy'][region] - exact[region])
    rms = np.sqrt(np.mean((y['free_energy'][region] - exact[region] - shift) ** 2)) / kt
    assert rms < 0.25, f'RMS error {rms:.3f} kT away from the broken region'


def test_replica_exchange_umbrella_swaps_windows_and_recovers_the_pmf(mlff_environment, hooh, torsion_potential):
    """REUS through the work chain: neighbours swap inside the batch, WHAM sees per-window samples."""
    builder = torsion_builder(
        mlff_environment['mlff_code'], torsion_potential, hooh, 1000, 10000, bootstrap=0, exchange={'every': 50}
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    md = [n for n in node.called_descendants if n.process_label == 'MdCalculation']
    status = md[0].outputs.status.get_dict()
    exchange = status['exchange']
    assert exchange['every'] == 50
    assert len(exchange['pairs']) == 24  # 24 windows around the whole dihedral: a ring
    acceptance = np.array(exchange['acceptance'], dtype=float)
    assert np.all((acceptance > 0.05) & (acceptance < 1.0)), acceptance
    walker = md[0].outputs.colvars.get_array('walker')
    assert (walker[-1] != np.arange(24)).any()  # configurations travelled between windows
    assert sorted(walker[-1].tolist()) == list(range(24))  # a permutation: nothing lost, nothing duplicated
    grid = results['pmf'].get_x()[1]
    free_energy = {name: values for name, values, _ in results['pmf'].get_y()}['free_energy']
    kt = KB_EV * T
    exact = exact_pmf(grid)
    region = (exact < 5 * kt) & np.isfinite(free_energy)
    shift = np.mean(free_energy[region] - exact[region])
    rms = np.sqrt(np.mean((free_energy[region] - exact[region] - shift) ** 2)) / kt
    assert rms < 0.15, f'RMS error {rms:.3f} kT'
