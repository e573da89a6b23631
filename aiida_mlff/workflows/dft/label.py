"""``mlff.dft.label``: label many structures with pw.x (one ``PwBaseWorkChain`` each) into one dataset."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, while_
from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain

from aiida_mlff.calculations.functions import dataset_from_pw, frame_key
from aiida_mlff.core.options import LABEL, OptionsError
from aiida_mlff.core.structures import closest_pair, to_atoms
from aiida_mlff.core.vacuum import is_molecule_in_box
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.workflows.protocols import ProtocolMixin, option_port, recursive_merge

__all__ = ['DftLabelWorkChain', 'magnetization_by_kind', 'pseudo_problem', 'spin_and_charge']


def spin_and_charge(options: Mapping, elements: Iterable[str], occupations: str | None) -> dict:
    """The pw.x ``SYSTEM`` entries of the charge and spin options of ``LABEL`` (checked values, defaults filled in).

    Parameters
    ----------
    options
        ``tot_charge`` [e], ``nspin``, ``starting_magnetization`` (element -> [-1, 1]) and ``tot_magnetization``
        [Bohr magneton, or None].
    elements
        Every chemical symbol of the structures to label.
    occupations
        The ``SYSTEM.occupations`` of the pw.x parameters.

    Returns
    -------
    dict
        Only the entries that differ from pw.x's defaults; ``starting_magnetization`` still by element (each
        structure maps it to its kinds with :func:`magnetization_by_kind`).

    Raises
    ------
    OptionsError
        Naming the field: a starting magnetization for an element that no structure holds, or nspin = 2 with fixed
        occupations and no ``tot_magnetization`` (pw.x stops on that).
    """
    system: dict = {}
    if options['tot_charge'] != 0:
        system['tot_charge'] = float(options['tot_charge'])
    if options['nspin'] != 2:
        return system
    system['nspin'] = 2
    where = DftLabelWorkChain.__name__
    magnetization = dict(options['starting_magnetization'])
    absent = sorted(set(magnetization) - set(elements))
    if absent:
        raise OptionsError(
            [
                f'{where}.starting_magnetization: no structure holds {", ".join(absent)} (they hold '
                f'{", ".join(sorted(set(elements)))})'
            ]
        )
    if magnetization:
        system['starting_magnetization'] = {el: float(v) for el, v in magnetization.items()}
    if options['tot_magnetization'] is not None:
        system['tot_magnetization'] = float(options['tot_magnetization'])
    elif occupations == 'fixed':
        raise OptionsError(
            [
                f'{where}.tot_magnetization: nspin = 2 with fixed occupations needs it (pw.x stops otherwise); give '
                'n_up - n_down, or smearing occupations in the pw parameters'
            ]
        )
    return system


def magnetization_by_kind(magnetization: Mapping[str, float], kinds: Iterable[tuple[str, str]]) -> dict[str, float]:
    """``starting_magnetization`` for pw.x, keyed by the kind names of one structure.

    Parameters
    ----------
    magnetization
        Keys are kind names or chemical symbols (a kind name wins over its symbol); values in [-1, 1].
    kinds
        ``(kind name, chemical symbol)`` of each kind of the structure.

    Returns
    -------
    dict
        Kind name -> starting magnetization for every kind that has one; kinds without one are left out (0).
    """
    result = {}
    for name, symbol in kinds:
        if name in magnetization:
            result[name] = float(magnetization[name])
        elif symbol in magnetization:
            result[name] = float(magnetization[symbol])
    return result


def pseudo_problem(
    elements: Mapping[str, Iterable[str]], pseudo_family: str | None = None, pseudos: Iterable[str] | None = None
) -> tuple[str, str] | None:
    """Say which element has no pseudopotential, before any pw.x job: ``(exit code name, message)`` or None.

    Parameters
    ----------
    elements
        Chemical symbols by structure key (the key names the structure in the message).
    pseudo_family
        Label of the pseudopotential family; it is used when given.
    pseudos
        Elements with an explicit pseudopotential, used when no family is given.

    Returns
    -------
    ``('ERROR_INVALID_PSEUDO_FAMILY', message)`` when the family does not exist,
    ``('ERROR_MISSING_PSEUDOPOTENTIAL', message)`` naming each missing element, the structures that hold it and the
    family, or None when every element is covered.
    """
    if pseudo_family is not None:
        from aiida_pseudo.groups.family import PseudoPotentialFamily

        family = orm.QueryBuilder().append(PseudoPotentialFamily, filters={'label': pseudo_family}).first(flat=True)
        if family is None:
            message = f'the pseudo family `{pseudo_family}` does not exist: run `aiida-mlff setup` or install it'
            return 'ERROR_INVALID_PSEUDO_FAMILY', message
        available = set(family.elements)
        source = f'the pseudo family `{pseudo_family}`'
    elif pseudos is not None:
        available = set(pseudos)
        source = 'the `pseudos` input'
    else:
        return 'ERROR_MISSING_PSEUDOPOTENTIAL', 'neither `pseudo_family` nor `pseudos` was given'
    symbols = {key: set(values) for key, values in elements.items()}
    missing = sorted(set().union(*symbols.values()) - available)
    if not missing:
        return None
    where = {el: [key for key, values in symbols.items() if el in values] for el in missing}
    listing = '; '.join(
        f'{el} (in {", ".join(keys[:5])}{", ..." if len(keys) > 5 else ""})' for el, keys in where.items()
    )
    message = f'no pseudopotential for {listing} in {source}, which has {", ".join(sorted(available))}'
    return 'ERROR_MISSING_PSEUDOPOTENTIAL', message


class DftLabelWorkChain(ProtocolMixin, WorkChain):
    """Run pw.x on every input structure, at most ``max_concurrent`` at a time, and collect one dataset.

    A label that fails (its ``PwBaseWorkChain`` does not finish ok after its own restarts) is reported and listed in
    the ``failed`` output. The dataset holds every successful label, even when more than ``max_failure_fraction``
    failed; the work chain then ends with ``ERROR_TOO_MANY_FAILED_LABELS``.
    """

    _protocol_file = 'dft/label.yaml'
    _options = LABEL

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input_namespace(
            'structures', valid_type=orm.StructureData, dynamic=True, required=False, help='The structures to label.'
        )
        spec.expose_inputs(
            PwBaseWorkChain,
            namespace='pw',
            exclude=('clean_workdir', 'pw.structure', 'pw.pseudos', 'pw.parent_folder'),
            namespace_options={'help': 'Inputs of the `PwBaseWorkChain` run for each structure.'},
        )
        spec.input(
            'pseudo_family', valid_type=orm.Str, required=False, help='Label of the pseudopotential family to use.'
        )
        spec.input_namespace(
            'pseudos',
            valid_type=orm.Data,
            dynamic=True,
            required=False,
            help='Pseudopotentials by element, used where no `pseudo_family` is given.',
        )
        spec.input(
            'conv_thr_per_atom',
            valid_type=orm.Float,
            required=False,
            help='SCF threshold per atom (Ry): each structure gets `conv_thr = natoms * conv_thr_per_atom`.',
        )
        for name in ('max_concurrent', 'max_failure_fraction', 'min_distance'):
            option_port(spec, name, LABEL)
        spec.input('label_method', valid_type=orm.Str, required=False, help='Description stored on the dataset.')
        spec.input(
            'clean_workdir',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help='Clean remote folders at the end.',
        )
        spec.outline(
            cls.validate_inputs,
            cls.setup,
            while_(cls.has_pending)(cls.run_labels, cls.inspect_labels),
            cls.results,
        )
        spec.output('dataset', valid_type=TrainingSetData, required=False, help='Every successful label.')
        spec.output('failed', valid_type=orm.Dict, required=False, help='Failed labels: structure key -> reason.')
        spec.exit_code(201, 'ERROR_NO_STRUCTURES', message='No structures were given to label.')
        spec.exit_code(202, 'ERROR_MISSING_PSEUDOPOTENTIAL', message='{message}')
        spec.exit_code(203, 'ERROR_OVERLAPPING_ATOMS', message='{message}')
        spec.exit_code(204, 'ERROR_MISSING_EXECUTABLE', message='{message}')
        spec.exit_code(205, 'ERROR_INVALID_PSEUDO_FAMILY', message='{message}')
        spec.exit_code(401, 'ERROR_TOO_MANY_FAILED_LABELS', message='{message}')
        spec.exit_code(402, 'ERROR_ALL_LABELS_FAILED', message='All {count} labels failed; see the `failed` output.')

    # ------------------------------------------------------------------------------------------------ protocols
    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode | str,
        structures: Sequence | Mapping,
        protocol: str | None = None,
        overrides: dict | None = None,
        options: dict | None = None,
        molecule: bool | None = None,
        stress: bool | None = None,
    ):
        """Return a builder for ``structures`` filled from a protocol.

        Parameters
        ----------
        code
            The ``quantumespresso.pw`` code (or its label).
        structures
            ``StructureData``, ``ase.Atoms`` or pymatgen objects, as a list or a mapping of keys to structures.
        protocol
            ``fast``, ``balanced`` (default) or ``stringent``.
        overrides
            Inputs merged over the protocol, in the nesting of this work chain's inputs.
        options
            ``metadata.options`` of each PwCalculation (resources, walltime, ...), merged over the protocol's.
        molecule
            Use the Gamma point only (molecules in a box). Default: True when every structure is a molecule: no
            periodic direction, the extra ``molecule`` set, or at least ``molecule_vacuum`` Å of vacuum between
            images along every periodic direction; otherwise k-points from ``kpoints_distance`` (1/Å).
        stress
            Compute the stress (``tstress``). Default: True for periodic cells (every structure fully periodic and
            not a molecule), False for molecules.

        The charge and spin options of ``LABEL`` (``tot_charge``, ``nspin``, ``starting_magnetization`` by element,
        ``tot_magnetization``) come in through ``overrides`` and go to the pw.x ``SYSTEM`` namelist; bad values
        raise :class:`~aiida_mlff.core.options.OptionsError` naming the field.
        """
        if isinstance(code, str):
            code = orm.load_code(code)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        if options:
            inputs['pw']['pw']['metadata']['options'] = recursive_merge(
                inputs['pw']['pw']['metadata']['options'], options
            )
        items = structures.items() if isinstance(structures, Mapping) else enumerate(structures)
        nodes = {}
        for index, (key, obj) in enumerate(items):
            node = obj if isinstance(obj, orm.StructureData) else orm.StructureData(ase=to_atoms(obj))
            nodes[str(key) if isinstance(structures, Mapping) else frame_key(index)] = node
        if molecule is None:
            molecule = all(
                n.base.extras.get('molecule', False) or is_molecule_in_box(n.get_ase(), inputs['molecule_vacuum'])
                for n in nodes.values()
            )
        if stress is None:
            stress = not molecule and all(all(n.pbc) for n in nodes.values())
        parameters = inputs['pw']['pw']['parameters']
        parameters['CONTROL']['tstress'] = bool(stress)
        system = parameters.setdefault('SYSTEM', {})
        elements = {kind.symbol for n in nodes.values() for kind in n.kinds}
        system.update(spin_and_charge(inputs, elements, system.get('occupations')))

        builder = cls.get_builder()
        builder.structures = nodes
        builder.pw.pw.code = code
        builder.pw.pw.parameters = orm.Dict(parameters)
        builder.pw.pw.metadata = inputs['pw']['pw']['metadata']
        builder.pw.max_iterations = orm.Int(inputs['pw']['max_iterations'])
        if molecule:
            kpoints = orm.KpointsData()
            kpoints.set_kpoints_mesh([1, 1, 1])
            builder.pw.kpoints = kpoints
            builder.pw.pw.settings = orm.Dict({'gamma_only': True})
        else:
            builder.pw.kpoints_distance = orm.Float(inputs['kpoints_distance'])
        builder.pseudo_family = orm.Str(inputs['pseudo_family'])
        builder.conv_thr_per_atom = orm.Float(inputs['conv_thr_per_atom'])
        builder.max_concurrent = orm.Int(inputs['max_concurrent'])
        builder.max_failure_fraction = orm.Float(inputs['max_failure_fraction'])
        builder.min_distance = orm.Float(inputs['min_distance'])
        return builder

    # ------------------------------------------------------------------------------------------------ outline
    def validate_inputs(self):
        """Stop before any DFT on: no structures, missing pseudopotentials, overlapping atoms, no pw.x."""
        structures = dict(self.inputs.get('structures', {}))
        if not structures:
            return self.exit_codes.ERROR_NO_STRUCTURES

        problem = pseudo_problem(
            {key: {kind.symbol for kind in s.kinds} for key, s in structures.items()},
            pseudo_family=self.inputs.pseudo_family.value if 'pseudo_family' in self.inputs else None,
            pseudos=self.inputs.pseudos.keys() if 'pseudos' in self.inputs else None,
        )
        if problem is not None:
            name, message = problem
            return getattr(self.exit_codes, name).format(message=message)

        limit = self.inputs.min_distance.value
        for key, structure in structures.items():
            i, j, distance = closest_pair(structure.get_ase())
            if distance < limit:
                return self.exit_codes.ERROR_OVERLAPPING_ATOMS.format(
                    message=f'structure `{key}`: atoms {i} and {j} are {distance:.3f} Å apart, closer than '
                    f'min_distance = {limit} Å'
                )

        code = self.inputs.pw.pw.code
        if code.computer.transport_type == 'core.local' and hasattr(code, 'filepath_executable'):
            executable = str(code.filepath_executable)
            if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
                return self.exit_codes.ERROR_MISSING_EXECUTABLE.format(
                    message=f'the code `{code.full_label}` points to {executable}, which is not an executable file '
                    'on this computer: install Quantum ESPRESSO or fix the code'
                )
        return None

    def setup(self):
        """Queue every structure."""
        self.ctx.pending = sorted(self.inputs.structures.keys())
        self.ctx.succeeded = {}
        self.ctx.failed = {}
        self.ctx.running = {}  # structure key -> pk of its PwBaseWorkChain

    def has_pending(self):
        """Whether structures are waiting to be labelled or still being labelled."""
        return bool(self.ctx.pending or self.ctx.running)

    def _pw_inputs(self, key: str) -> AttributeDict:
        structure = self.inputs.structures[key]
        inputs = AttributeDict(self.exposed_inputs(PwBaseWorkChain, namespace='pw'))
        inputs.pw = AttributeDict(inputs.pw)
        inputs.pw.structure = structure
        if 'pseudo_family' in self.inputs:
            from aiida_pseudo.groups.family import PseudoPotentialFamily

            family = (
                orm.QueryBuilder()
                .append(PseudoPotentialFamily, filters={'label': self.inputs.pseudo_family.value})
                .one()[0]
            )
            inputs.pw.pseudos = family.get_pseudos(structure=structure)
        else:
            inputs.pw.pseudos = {kind.name: self.inputs.pseudos[kind.symbol] for kind in structure.kinds}
        parameters = inputs.pw.parameters.get_dict()
        system = parameters.setdefault('SYSTEM', {})
        if 'ecutwfc' not in system and 'pseudo_family' in self.inputs:
            wfc, rho = family.get_recommended_cutoffs(structure=structure, unit='Ry')
            system['ecutwfc'], system['ecutrho'] = wfc, rho
        if 'starting_magnetization' in system:  # by element or kind name: by the kinds of this structure
            kinds = [(kind.name, kind.symbol) for kind in structure.kinds]
            system['starting_magnetization'] = magnetization_by_kind(system['starting_magnetization'], kinds)
            if not system['starting_magnetization']:
                del system['starting_magnetization']
        if 'conv_thr_per_atom' in self.inputs:
            electrons = parameters.setdefault('ELECTRONS', {})
            electrons['conv_thr'] = self.inputs.conv_thr_per_atom.value * len(structure.sites)
        inputs.pw.parameters = orm.Dict(parameters)
        if 'kpoints_distance' in inputs and gamma_mesh(structure, inputs.kpoints_distance.value):
            gamma_point(inputs)
        inputs.clean_workdir = self.inputs.clean_workdir
        inputs.metadata = AttributeDict(inputs.get('metadata', {}))
        inputs.metadata.call_link_label = f'label_{key}'
        return inputs

    def run_labels(self):
        """Keep ``max_concurrent`` labels running: submit until the cap, then wait for the oldest one.

        The others go on meanwhile, so a slow label never holds back the next submissions (rolling concurrency).
        """
        submitted = []
        while self.ctx.pending and len(self.ctx.running) < self.inputs.max_concurrent.value:
            key = self.ctx.pending.pop(0)
            node = self.submit(PwBaseWorkChain, **self._pw_inputs(key))
            self.ctx.running[key] = node.pk
            submitted.append(key)
        if submitted:
            self.report(f'submitted {len(submitted)} labels ({len(self.ctx.pending)} still waiting)')
        oldest = min(self.ctx.running.values())
        return ToContext(waiting=orm.load_node(oldest))

    def inspect_labels(self):
        """Sort every finished label into successes and failures; a failure is reported, never dropped silently."""
        for key, pk in list(self.ctx.running.items()):
            node = orm.load_node(pk)
            if not node.is_terminated:
                continue
            del self.ctx.running[key]
            outputs = node.outputs
            if node.is_finished_ok and 'output_trajectory' in outputs and 'output_parameters' in outputs:
                self.ctx.succeeded[key] = node
            else:
                reason = f'{node.process_label}<{node.pk}> exit status {node.exit_status}: {node.exit_message}'
                calcs = sorted(node.called, key=lambda n: n.ctime)
                if calcs and not calcs[-1].is_finished_ok:
                    last = calcs[-1]
                    reason += f' (last {last.process_label}<{last.pk}>: {last.exit_status} {last.exit_message})'
                self.ctx.failed[key] = reason
                self.report(f'label of structure `{key}` failed: {reason}')

    def results(self):
        """Collect the successful labels into one dataset and judge the failure fraction."""
        total = len(self.inputs.structures)
        if self.ctx.failed:
            self.out('failed', orm.Dict({k: v for k, v in sorted(self.ctx.failed.items())}).store())
        if not self.ctx.succeeded:
            return self.exit_codes.ERROR_ALL_LABELS_FAILED.format(count=total)
        labels = {}
        for key, node in sorted(self.ctx.succeeded.items()):
            labels[f'structure_{key}'] = self.inputs.structures[key]
            labels[f'parameters_{key}'] = node.outputs.output_parameters
            labels[f'trajectory_{key}'] = node.outputs.output_trajectory
        method = self.inputs.get('label_method', None)
        if method is None:
            method = orm.Str(self._describe_method())
        dataset = dataset_from_pw(label_method=method, **labels)
        self.out('dataset', dataset)
        fraction = len(self.ctx.failed) / total
        self.report(
            f'{len(self.ctx.succeeded)} of {total} labels succeeded -> {dataset.__class__.__name__}<{dataset.pk}>'
        )
        if fraction > self.inputs.max_failure_fraction.value:
            return self.exit_codes.ERROR_TOO_MANY_FAILED_LABELS.format(
                message=f'{len(self.ctx.failed)} of {total} labels failed ({fraction:.0%}), more than '
                f'max_failure_fraction = {self.inputs.max_failure_fraction.value:.0%}; the dataset holds the '
                f'{len(self.ctx.succeeded)} that succeeded'
            )
        return None

    def _describe_method(self) -> str:
        parameters = self.inputs.pw.pw.parameters.get_dict()
        system = parameters.get('SYSTEM', {})
        functional = system.get('input_dft', 'from pseudopotentials')
        family = self.inputs.pseudo_family.value if 'pseudo_family' in self.inputs else 'explicit pseudos'
        cutoff = f'{system["ecutwfc"]} Ry' if 'ecutwfc' in system else 'family cutoffs'
        return f'pw.x, functional {functional}, {family}, {cutoff}'


def gamma_mesh(structure: orm.StructureData, distance: float) -> bool:
    """Whether the k-point mesh of ``structure`` at ``distance`` (1/Å, PwBaseWorkChain's rule) is the Gamma point."""
    kpoints = orm.KpointsData()
    kpoints.set_cell_from_structure(structure)
    kpoints.set_kpoints_mesh_from_density(distance)
    mesh, offset = kpoints.get_kpoints_mesh()
    return list(mesh) == [1, 1, 1] and not any(offset)


def gamma_point(inputs: AttributeDict) -> None:
    """Label at the Gamma point with pw.x's real-wavefunction tricks (``gamma_only``).

    For a cell whose k-point mesh is a single point (a liquid box): the same energy, forces and stress as the 1x1x1
    mesh at about half the cost (see ``tests/aiida/test_periodic_water_stress.py``).
    """
    del inputs['kpoints_distance']
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh([1, 1, 1])
    inputs.kpoints = kpoints
    settings = inputs.pw.settings.get_dict() if 'settings' in inputs.pw else {}
    inputs.pw.settings = orm.Dict({**settings, 'gamma_only': True})
