"""Fixtures for the AiiDA layer: a temporary profile with the computer, pw code and pseudo family of ``setup``."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.build import molecule


@pytest.fixture(scope='session')
def mlff_environment(aiida_profile):
    """The temporary test profile with ``localhost``, ``pw@localhost`` and the default pseudo family."""
    from aiida_mlff import environment

    computer, _ = environment.ensure_computer()
    code, _ = environment.ensure_pw_code()
    mlff_code, _ = environment.ensure_mlff_code()
    family, _ = environment.ensure_pseudo_family()
    return {'computer': computer, 'code': code, 'mlff_code': mlff_code, 'family': family}


@pytest.fixture
def prepare(tmp_path):
    """Run ``prepare_for_submission`` of a CalcJob on inputs; return ``(folder path, calcinfo)``."""
    from aiida.common.folders import Folder
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    def factory(process_class, **inputs):
        process = instantiate_process(get_manager().get_runner(), process_class, **inputs)
        (tmp_path / 'sandbox').mkdir(exist_ok=True)
        folder = Folder(str(tmp_path / 'sandbox'))
        calcinfo = process.prepare_for_submission(folder)
        return tmp_path / 'sandbox', calcinfo

    return factory


@pytest.fixture
def h2o() -> Atoms:
    """An H2O molecule centred in a periodic 8 Å box."""
    atoms = molecule('H2O')
    atoms.set_cell([8.0, 8.0, 8.0])
    atoms.center()
    atoms.pbc = True
    return atoms


@pytest.fixture
def labelled_frames(h2o):
    """Four H2O frames with synthetic labels (not DFT): for tests of the dataset node itself."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_mlff.core.sampling import rattle

    frames = rattle(h2o, n=4, stdev=0.05, seed=1)
    rng = __import__('numpy').random.default_rng(0)
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(3, 3)))
    return frames


FIXTURES = __import__('pathlib').Path(__file__).parent / 'fixtures'


@pytest.fixture
def calc_job_node(aiida_localhost):
    """Return a factory of stored ``CalcJobNode``s of a plugin whose ``retrieved`` folder holds a fixture folder."""

    def factory(entry_point: str, fixture: str):
        from aiida import orm
        from aiida.common.links import LinkType
        from aiida.plugins.entry_point import format_entry_point_string

        node = orm.CalcJobNode(
            computer=aiida_localhost, process_type=format_entry_point_string('aiida.calculations', entry_point)
        )
        node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
        node.set_option('max_wallclock_seconds', 60)
        node.store()
        retrieved = orm.FolderData()
        retrieved.base.repository.put_object_from_tree(str(FIXTURES / fixture))
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
        retrieved.store()
        return node

    return factory
