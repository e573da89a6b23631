"""``mlff.campaign``: from a structure and a CV to a free-energy profile with error band, traceable to every label.

sample (rattles, restrained scans along the CV, a path between two end structures) -> label with pw.x and
active-learn a committee (``mlff.active_learning``) -> rounds of free-energy sampling along the CV, handing untrusted
windows back for labels and a refit -> PMF, states, barriers of every transition, rates -> the potential relaxed at
fixed CV values, checked against pw.x single points.

The free-energy method of the rounds (``free_energy.method``): ``umbrella`` or ``reus`` (``mlff.umbrella``, the
latter with replica exchange between neighbouring windows; WHAM or MBAR) or ``metadynamics``
(``mlff.metadynamics``: walkers adding hills to one bias, reweighted). Every walker of a metadynamics round counts
as one window in the stop rule and in the choice of frames to label.
"""

from __future__ import annotations

from pathlib import Path

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mlff.calculations.campaign import compare_scan, relaxed_cv_scan
from aiida_mlff.calculations.convergence import assess_round
from aiida_mlff.calculations.functions import (
    cv_scan_structure,
    frame_key,
    merge_datasets,
    path_structure,
    rattle_structure,
    select_frames,
)
from aiida_mlff.calculations.states import compare_campaigns, pmf_states
from aiida_mlff.core.colvars import cv_from_spec
from aiida_mlff.core.enhanced import metadynamics_job_bias
from aiida_mlff.core.options import CONVERGENCE, METADYNAMICS, UMBRELLA
from aiida_mlff.core.structures import to_atoms
from aiida_mlff.core.windows import place_windows
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows import PROGRESS_EXTRA
from aiida_mlff.workflows.active_learning.base import ActiveLearningWorkChain
from aiida_mlff.workflows.campaign.config import (
    CAMPAIGN,
    FINE_TUNING,
    FREE_ENERGY,
    SAMPLING,
    CampaignConfigError,
    build_structure,
    check_cv_span,
    check_cv_values,
    load_campaign,
    metadynamics_span,
    place_structure,
    uuid_like,
    validate_campaign,
)
from aiida_mlff.workflows.dft.label import DftLabelWorkChain
from aiida_mlff.workflows.md.base import blown_replicas
from aiida_mlff.workflows.metadynamics.base import MetadynamicsWorkChain
from aiida_mlff.workflows.protocols import option_port
from aiida_mlff.workflows.train.base import TrainBaseWorkChain
from aiida_mlff.workflows.umbrella.base import UmbrellaWorkChain, umbrella_windows

__all__ = ['CampaignWorkChain']


def _given(section: dict, *drop: str) -> dict:
    """A campaign section as overrides of its step's protocol (without the campaign's own keys)."""
    return {k: v for k, v in section.items() if k not in ('protocol', *drop)}


CHECK = CAMPAIGN['check']
PATH_SETTINGS = ('images', 'rattle_stdev', 'seed')


def _method(value) -> str:
    """The free-energy method of ``free_energy`` (a Dict input), ``umbrella`` by default."""
    return FREE_ENERGY.resolve(value.get_dict())[0]['method'] if value is not None else 'umbrella'


def _free_energy_errors(value, n_atoms: int) -> list[str]:
    """Problems of the method and of the inputs of its namespace (``umbrella`` or ``metadynamics``)."""
    from aiida_mlff.workflows.metadynamics.base import validate_metadynamics
    from aiida_mlff.workflows.umbrella.base import validate_umbrella

    free_energy, errors = FREE_ENERGY.resolve(value['free_energy'].get_dict(), 'free_energy')
    if errors:
        return errors
    method = free_energy['method']
    namespace = 'metadynamics' if method == 'metadynamics' else 'umbrella'
    inputs = value.get(namespace) or {}
    if 'parameters' not in inputs:
        return [f'{namespace}: free_energy.method {method} needs the {namespace} inputs (code, parameters)']
    cv, parameters = value['cv'].get_dict(), inputs['parameters'].get_dict()
    if method == 'metadynamics':
        return validate_metadynamics([cv], parameters, n_atoms, 'cv', 'metadynamics')
    errors = validate_umbrella(cv, parameters, n_atoms, 'cv', 'umbrella')
    if method == 'reus' and parameters.get('exchange') is None:
        errors.append('umbrella.parameters.exchange: free_energy.method reus needs replica exchange ({every: steps})')
    return errors


def validate_inputs(value, _) -> str | None:
    """Check everything that can be checked before the first pw.x job: CV, sampling, windows, states, check."""
    structure = value['structure']
    cv = value['cv'].get_dict()
    errors = _free_energy_errors(value, len(structure.sites))
    sampling, problems = SAMPLING.resolve(value['sampling'].get_dict(), 'sampling')
    errors += problems
    if not problems and (sampling['path']['from'] or sampling['path']['to']):
        errors.append('sampling.path: give the ends as the `path_start` and `path_end` structures, not file names')
    errors += CHECK.resolve(value['check'].get_dict(), 'check')[1]
    errors += CONVERGENCE.resolve(value['convergence'].get_dict(), 'convergence')[1]
    for name in ('states', 'transitions'):
        problem = CAMPAIGN[name].problem(value[name].get_dict()) if name in value else None
        if problem:
            errors.append(f'{name}: {problem}')
    if 'path_end' in value:
        start = value.get('path_start', structure)
        if start.get_ase().get_chemical_symbols() != value['path_end'].get_ase().get_chemical_symbols():
            errors.append('path_end: its atoms (in order) differ from those of the start of the path')
    if not errors:
        cv_object = cv_from_spec(cv)
        ranges = {name: value[name].get_dict() if name in value else {} for name in ('states', 'transitions')}
        if _method(value['free_energy']) == 'metadynamics':
            span = metadynamics_span(value['metadynamics']['parameters'].get_dict())
            check_cv_span(ranges['states'], ranges['transitions'], cv_object, span, errors)
        else:
            parameters = UMBRELLA.validate(value['umbrella']['parameters'].get_dict())
            windows, _ = umbrella_windows(cv_object, parameters)
            check_cv_values(ranges['states'], ranges['transitions'], cv_object, windows, errors)
    return '; '.join(errors) if errors else None


class CampaignWorkChain(WorkChain):
    """A campaign: one structure and one CV to a free-energy profile, every step linked in one provenance graph.

    A composite of its children: the inputs of active learning (``mlff.active_learning``: labelling, training,
    exploration), of the umbrella sampling (``mlff.umbrella``) and of metadynamics (``mlff.metadynamics``) are
    exposed as they are (the one of ``free_energy.method`` is given), and the refit and the check reuse them.
    :meth:`get_builder_from_protocol` fills them from protocols; a campaign file is its ``overrides``, section by
    section.
    """

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('structure', valid_type=orm.StructureData, help='The system (a molecule in its periodic box).')
        spec.input('cv', valid_type=orm.Dict, help="The CV's spec, e.g. {'type': 'dihedral', 'atoms': [2, 0, 1, 3]}.")
        spec.input('states', valid_type=orm.Dict, required=False, help='Named basins: CV ranges (CV file unit).')
        spec.input('transitions', valid_type=orm.Dict, required=False, help='Names of barrier tops: CV ranges.')
        spec.input(
            'sampling',
            valid_type=orm.Dict,
            default=lambda: orm.Dict(SAMPLING.defaults()),
            help='The first structures to label: rattle, scan (CV file unit), path (images between the path ends).',
        )
        spec.input('path_start', valid_type=orm.StructureData, required=False, help='Default: `structure`.')
        spec.input('path_end', valid_type=orm.StructureData, required=False, help='The other end of the path.')
        spec.expose_inputs(
            ActiveLearningWorkChain,
            namespace='active_learning',
            exclude=('structures', 'seeds', 'dataset', 'umbrella', 'metadynamics'),
            namespace_options={'help': 'Labelling, training and exploration (`mlff.active_learning`).'},
        )
        option_port(spec, 'exploration_windows', CAMPAIGN['active_learning'], 'umbrella_windows')
        option_port(spec, 'exploration_walkers', CAMPAIGN['active_learning'], 'metadynamics_walkers')
        spec.input(
            'free_energy',
            valid_type=orm.Dict,
            default=lambda: orm.Dict(FREE_ENERGY.defaults()),
            help="The free-energy method of every round: {'method': 'umbrella' | 'reus' | 'metadynamics'}.",
        )
        spec.expose_inputs(
            UmbrellaWorkChain,
            namespace='umbrella',
            exclude=('potential', 'structure', 'cv'),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Umbrella sampling along the CV (`mlff.umbrella`): methods umbrella and reus.',
            },
        )
        spec.expose_inputs(
            MetadynamicsWorkChain,
            namespace='metadynamics',
            exclude=('potential', 'structure', 'cv', 'cv2'),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Well-tempered metadynamics along the CV (`mlff.metadynamics`): method metadynamics.',
            },
        )
        spec.input(
            'convergence',
            valid_type=orm.Dict,
            default=lambda: orm.Dict(CONVERGENCE.defaults()),
            help='The stop rule (`aiida_mlff.core.options.CONVERGENCE`): barrier error, untrusted frames, PMF change, '
            'label budget, rounds.',
        )
        spec.input('check', valid_type=orm.Dict, default=lambda: orm.Dict(CHECK.defaults()), help='values, fmax.')
        spec.input('experiment_kcal_mol', valid_type=orm.Dict, required=False, help='Reference barriers by name.')
        spec.input(
            'compare_with',
            valid_type=orm.Dict,
            required=False,
            help="Another campaign's `barriers` output (e.g. the gas phase): the answer is compared with it by name.",
        )
        spec.input('compare_label', valid_type=orm.Str, required=False, help='How reports name `compare_with`.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            cls.sample,
            cls.run_active_learning,
            cls.inspect_active_learning,
            while_(cls.should_run_round)(
                if_(cls.runs_metadynamics)(cls.run_metadynamics).else_(cls.run_umbrella),
                cls.inspect_free_energy,
                if_(cls.round_sampled)(
                    cls.assess,
                    if_(cls.should_refit)(cls.label_untrusted, cls.retrain, cls.inspect_retrain),
                    cls.next_round,
                ),
            ),
            cls.choose_answer,
            cls.run_check,
            cls.inspect_check,
            cls.results,
        )
        spec.output('dataset', valid_type=TrainingSetData)
        spec.output('potential', valid_type=PotentialData)
        spec.output('history', valid_type=orm.Dict)
        spec.output('learning_curve', valid_type=orm.ArrayData, required=False)
        spec.output('pmf', valid_type=orm.XyData, required=False, help='x: the CV in its file unit; y: eV.')
        spec.output('overlap', valid_type=orm.ArrayData, required=False, help='Umbrella methods only: WHAM overlap.')
        spec.output('barriers', valid_type=orm.Dict, required=False, help='States and every transition, named.')
        spec.output('rates', valid_type=orm.Dict, required=False)
        spec.output('scan', valid_type=orm.ArrayData, required=False, help='Relaxed scan: potential vs pw.x.')
        spec.output(
            'comparison',
            valid_type=orm.Dict,
            required=False,
            help='Barriers minus those of `compare_with`, by name, with errors (kcal/mol).',
        )
        spec.output(
            'convergence',
            valid_type=orm.Dict,
            required=False,
            help='converged, the criteria (value, target, passed), which failed, labels used, every round.',
        )
        spec.output_namespace(
            'rounds',
            valid_type=(orm.XyData, orm.Dict, PotentialData),
            dynamic=True,
            help='Every round: potential_R, pmf_R, barriers_R, assessment_R (nothing computed is lost).',
        )
        spec.exit_code(401, 'ERROR_ACTIVE_LEARNING_FAILED', message='Active learning failed: {message}')
        spec.exit_code(402, 'ERROR_UMBRELLA_FAILED', message='Umbrella sampling failed: {message}')
        spec.exit_code(403, 'ERROR_SCAN_LABELS_FAILED', message='The pw.x check of the relaxed scan failed: {message}')
        spec.exit_code(404, 'ERROR_REFIT_FAILED', message='Refitting on untrusted frames failed: {message}')
        spec.exit_code(405, 'ERROR_METADYNAMICS_FAILED', message='Metadynamics failed: {message}')
        spec.exit_code(410, 'ERROR_NOT_CONVERGED', message='The free energy did not converge: {message}')

    @classmethod
    def get_builder_from_protocol(cls, pw_code, mlff_code, structure, cv: dict, protocol=None, overrides=None):
        """A builder for a campaign on ``structure`` along ``cv``; ``overrides`` are the sections of a campaign file.

        ``structure``: a ``StructureData``, an ``ase.Atoms``, a pymatgen ``Molecule``/``Structure``, a file ASE
        reads, or a molecule name (``'H2O2'``); a molecule is boxed by ``system.box``. Every section of
        ``overrides`` overrides the protocol of its step (``protocol``, or the section's own ``protocol``); the
        whole is checked first and every bad field named (:class:`CampaignConfigError`).
        """
        config = dict(overrides or {})
        if protocol is not None:
            config['protocol'] = protocol
        system = {**(config.get('system') or {}), 'cv': cv}
        atoms = None
        if isinstance(structure, str) and not Path(structure).is_file():
            system['molecule'] = structure
        elif isinstance(structure, str | Path):
            system['file'] = str(Path(structure).resolve())
        else:
            atoms = to_atoms(structure)  # StructureData, ase.Atoms or pymatgen
        config = validate_campaign({**config, 'system': system}, structure=atoms)
        return cls.get_builder_from_config(pw_code, mlff_code, config, atoms)

    @classmethod
    def get_builder_from_config(cls, pw_code, mlff_code, config: dict, atoms=None):
        """A builder from a checked campaign (:func:`validate_campaign`): each section fills its step's inputs."""
        pw_code = orm.load_code(pw_code) if isinstance(pw_code, str) else pw_code
        mlff_code = orm.load_code(mlff_code) if isinstance(mlff_code, str) else mlff_code
        atoms = build_structure(config) if atoms is None else place_structure(atoms.copy(), config['system'])
        structure = orm.StructureData(ase=atoms)
        builder = cls.get_builder()
        builder.structure = structure
        builder.cv = orm.Dict(config['system']['cv'])
        for name in ('states', 'transitions'):
            if config[name]:
                builder[name] = orm.Dict(config[name])
        sampling = {**config['sampling'], 'path': dict(config['sampling']['path'])}  # the caller's config stays whole
        ends = {key: sampling['path'].pop(key) for key in ('from', 'to')}
        builder.sampling = orm.Dict(sampling)
        if ends['to']:
            builder.path_end = _end_structure(ends['to'], atoms)
            if ends['from']:
                builder.path_start = _end_structure(ends['from'], atoms)
        builder.active_learning = _active_learning_inputs(pw_code, mlff_code, structure, config)
        builder.exploration_windows = orm.Int(
            config['active_learning'].get('umbrella_windows', CAMPAIGN['active_learning']['umbrella_windows'].default)
        )
        builder.exploration_walkers = orm.Int(
            config['active_learning'].get(
                'metadynamics_walkers', CAMPAIGN['active_learning']['metadynamics_walkers'].default
            )
        )
        builder.free_energy = orm.Dict(config['free_energy'])
        method = config['free_energy']['method']
        namespace = 'metadynamics' if method == 'metadynamics' else 'umbrella'
        process = MetadynamicsWorkChain if method == 'metadynamics' else UmbrellaWorkChain
        child = process.get_builder_from_protocol(
            mlff_code,
            None,
            structure,
            config['system']['cv'],
            protocol=config[namespace]['protocol'],
            overrides=_given(config[namespace]),
        )
        builder[namespace] = {
            k: v for k, v in child._inputs(prune=True).items() if k in ('code', 'parameters', 'options')
        }
        builder.convergence = orm.Dict(config['convergence'])
        builder.check = orm.Dict(config['check'])
        if config['reference']['experiment_kcal_mol']:
            builder.experiment_kcal_mol = orm.Dict(config['reference']['experiment_kcal_mol'])
        if config['reference']['compare_with'] is not None:
            builder.compare_with, label = reference_barriers(config['reference']['compare_with'])
            builder.compare_label = orm.Str(config['reference']['compare_label'] or label)
        builder.metadata.label = config['name']
        builder.metadata.description = config['description']
        return builder

    @classmethod
    def get_builder_from_file(cls, path, pw_code='pw@localhost', mlff_code='mlff-run@localhost'):
        """A builder from a campaign file (``load_campaign`` checks it and names every bad field)."""
        return cls.get_builder_from_config(pw_code, mlff_code, load_campaign(path))

    # -------------------------------------------------------------------------------------------------- helpers
    def _exposed(self, process, namespace: str) -> AttributeDict:
        return AttributeDict(self.exposed_inputs(process, namespace))

    def _label(self, structures: dict, label: str, **extra):
        """Label ``structures`` with pw.x as active learning does (its exposed ``label`` inputs)."""
        inputs = AttributeDict(self._exposed(ActiveLearningWorkChain, 'active_learning')['label'])
        inputs.structures = structures
        for key, value in extra.items():
            inputs[key] = value
        inputs.metadata = {'call_link_label': label}
        return self.submit(DftLabelWorkChain, **inputs)

    @property
    def method(self) -> str:
        """The free-energy method of the rounds: ``umbrella``, ``reus`` or ``metadynamics``."""
        return _method(self.inputs.free_energy)

    @property
    def sampler(self) -> str:
        """The sampling of a round, as the reports name it: ``umbrella`` or ``metadynamics``."""
        return 'metadynamics' if self.method == 'metadynamics' else 'umbrella'

    @property
    def rule(self) -> dict:
        """The stop rule (``convergence`` input), defaults filled in."""
        return CONVERGENCE.validate(self.inputs.convergence.get_dict(), 'convergence')

    # -------------------------------------------------------------------------------------------------- outline
    def setup(self):
        """Remember the CV and the settings."""
        self.ctx.cv = cv_from_spec(self.inputs.cv.get_dict())
        self.ctx.round = 0
        self.ctx.rounds = []  # per round: potential, sampling (its work chain), pmf, barriers, rates, assessment, ...
        self.ctx.best_round = None
        self.ctx.sampling_factor = 1  # production steps per window (or walker), as a multiple of the given ones
        self.ctx.next = {'label': True, 'sample_more': False}
        self.ctx.worse_rounds = []
        self.ctx.stop_reason = None
        self.ctx.refit_history = []
        self._progress('sampling')

    def sample(self):
        """Rattles, restrained relaxations along the CV and a path between two ends: the first structures to label."""
        sampling = SAMPLING.validate(self.inputs.sampling.get_dict(), 'sampling')
        structures = {}
        rattle = sampling['rattle']
        if rattle['n']:
            out = rattle_structure(
                self.inputs.structure, orm.Int(rattle['n']), orm.Float(rattle['stdev']), orm.Int(rattle['seed'])
            )
            structures.update({f'rattle_{k}': v for k, v in out.items()})
        scan = sampling['scan']
        if scan['values']:
            out = cv_scan_structure(self.inputs.structure, orm.Dict({'cv': self.inputs.cv.get_dict(), **scan}))
            structures.update({f'scan_{k}': v for k, v in out.items()})
        if 'path_end' in self.inputs:
            start = self.inputs.get('path_start', self.inputs.structure)
            settings = {k: sampling['path'][k] for k in PATH_SETTINGS}
            out = path_structure(start, self.inputs.path_end, orm.Dict(settings))
            structures.update({f'path_{k}': v for k, v in out.items()})
        self.ctx.initial = structures
        self.report(f'sampled {len(structures)} structures to label')

    def run_active_learning(self):
        """Label the samples and active-learn a committee (exploring in umbrella windows too, if asked)."""
        self._progress('active learning')
        inputs = self._exposed(ActiveLearningWorkChain, 'active_learning')
        inputs.structures = dict(self.ctx.initial)
        inputs.seeds = {'seed_0000': self.inputs.structure}
        if self.inputs.exploration_windows.value:
            inputs.umbrella = orm.Dict(self._exploration_windows(self.inputs.exploration_windows.value))
        if self.inputs.exploration_walkers.value:
            inputs.metadynamics = orm.Dict(self._exploration_metadynamics(self.inputs.exploration_walkers.value))
        inputs.metadata = {'call_link_label': 'active_learning'}
        return ToContext(active_learning=self.submit(ActiveLearningWorkChain, **inputs))

    def _exploration_metadynamics(self, walkers: int) -> dict:
        """The job bias of ``walkers`` metadynamics walkers exploring along the CV during active learning.

        Metadynamics campaigns: their own options; otherwise the defaults over the umbrella windows' range (the whole
        period for a periodic CV whose windows go around it).
        """
        cv = self.ctx.cv
        if 'metadynamics' in self.inputs and 'parameters' in self.inputs.metadynamics:
            parameters = METADYNAMICS.validate(self.inputs.metadynamics.parameters.get_dict())
        else:
            parameters = METADYNAMICS.validate({})
            windows, _ = umbrella_windows(cv, UMBRELLA.validate(self.inputs.umbrella.parameters.get_dict()))
            if not windows.closed:
                centers = cv.to_file(windows.centers)
                parameters['range'] = [float(centers.min()), float(centers.max())]
        return metadynamics_job_bias([cv], {**parameters, 'walkers': int(walkers)})

    def _exploration_windows(self, count: int) -> dict:
        """``count`` windows spread over the range the rounds sample, with an umbrella force constant (internal units).

        Umbrella methods: the umbrella's range and force constant. Metadynamics: its range (or the whole period),
        with the force constant of ``count`` umbrella windows there (neighbours overlap).
        """
        cv = self.ctx.cv
        if self.method == 'metadynamics':
            parameters = METADYNAMICS.validate(self.inputs.metadynamics.parameters.get_dict())
            span = metadynamics_span(parameters)
            lo, hi = span if span is not None else (-cv.file_period / 2, cv.file_period / 2)
            windows = {'start': lo, 'stop': hi, 'count': count}
            spread, kappa = umbrella_windows(cv, {'windows': windows, 'temperature': parameters['temperature']})
        else:
            windows, kappa = umbrella_windows(cv, UMBRELLA.validate(self.inputs.umbrella.parameters.get_dict()))
            file_centers = cv.to_file(windows.centers)
            lo, hi = float(file_centers.min()), float(file_centers.max())
            stop = lo + cv.file_period if windows.closed else hi
            spread = place_windows(cv, start=lo, stop=stop, count=count)
        return {'cv': self.inputs.cv.get_dict(), 'centers': [float(c) for c in spread.centers], 'kappa': kappa}

    def inspect_active_learning(self):
        """Take the potential and dataset of active learning."""
        node = self.ctx.active_learning
        if not node.is_finished_ok or 'potential' not in node.outputs:
            return self.exit_codes.ERROR_ACTIVE_LEARNING_FAILED.format(
                message=f'exit {node.exit_status}: {node.exit_message}'
            )
        self.ctx.potential = node.outputs.potential
        self.ctx.dataset = node.outputs.dataset
        self.ctx.history = node.outputs.history.get_dict()
        return None

    # ----------------------------------------------------------------------------------------- free-energy rounds
    def should_run_round(self):
        """Until the answer converged, the label budget is spent or the rounds are used up."""
        return self.ctx.stop_reason is None

    def runs_metadynamics(self):
        """Whether the rounds run metadynamics (else umbrella sampling, with or without replica exchange)."""
        return self.method == 'metadynamics'

    def _round_inputs(self, process, namespace: str, steps_key: str) -> AttributeDict:
        """The exposed inputs of this round's sampling: a new seed, ``steps_key`` times the sampling factor."""
        inputs = self._exposed(process, namespace)
        parameters = inputs.parameters.get_dict()
        parameters['seed'] = int(parameters.get('seed', 0)) + self.ctx.round
        schema = METADYNAMICS if namespace == 'metadynamics' else UMBRELLA
        parameters[steps_key] = schema.validate(parameters)[steps_key] * self.ctx.sampling_factor
        inputs.update(
            parameters=orm.Dict(parameters),
            potential=self.ctx.potential,
            structure=self.inputs.structure,
            cv=self.inputs.cv,
            metadata={'call_link_label': f'{namespace}_{self.ctx.round}'},
        )
        return inputs

    def run_umbrella(self):
        """Umbrella sampling along the CV with the current potential (a new seed in every round)."""
        self._progress('umbrella')
        inputs = self._round_inputs(UmbrellaWorkChain, 'umbrella', 'production_steps')
        return ToContext(sampling=self.submit(UmbrellaWorkChain, **inputs))

    def run_metadynamics(self):
        """Metadynamics along the CV with the current potential (a new seed in every round)."""
        self._progress('metadynamics')
        inputs = self._round_inputs(MetadynamicsWorkChain, 'metadynamics', 'steps')
        return ToContext(sampling=self.submit(MetadynamicsWorkChain, **inputs))

    def inspect_free_energy(self):
        """The round's PMF, its states and every transition between them."""
        node = self.ctx.sampling
        if not node.is_finished_ok or 'pmf' not in node.outputs:
            message = f'exit {node.exit_status}: {node.exit_message}'
            if self.ctx.rounds:  # earlier rounds stand: stop here, keep them, and answer with the best of them
                self.ctx.round_failed = True
                self.ctx.stop_reason = f'the sampling of round {self.ctx.round} failed ({message})'
                self.report(f'{self.ctx.stop_reason}; the answer comes from the rounds before')
                return None
            failed = (
                self.exit_codes.ERROR_METADYNAMICS_FAILED
                if self.method == 'metadynamics'
                else self.exit_codes.ERROR_UMBRELLA_FAILED
            )
            return failed.format(message=message)
        settings = {
            'cv': self.inputs.cv.get_dict(),
            'temperature': float(node.outputs.pmf.base.attributes.get('temperature')),
        }
        for name in ('states', 'transitions', 'experiment_kcal_mol'):
            if name in self.inputs:
                settings[name] = self.inputs[name].get_dict()
        numbers = pmf_states(node.outputs.pmf, orm.Dict(settings))
        self.ctx.rounds.append(
            {
                'potential': self.ctx.potential,
                'sampling': node,
                'labels_used': self.ctx.dataset.n_structures,
                'sampling_factor': self.ctx.sampling_factor,
                **{key: numbers[key] for key in ('pmf', 'barriers', 'rates')},
            }
        )
        return None

    @staticmethod
    def _md_runs(node, *kinds: str) -> dict:
        """Outputs of a round's MD runs as ``{kind}_{pk}`` (trajectories as ``trajectory_{pk}_{replica}``).

        The umbrella's runs (one per batch of windows) or the metadynamics run (its walkers are its replicas).
        """
        runs = {}
        for md in node.called:
            if md.process_label != 'MdBaseWorkChain' or not md.is_finished_ok:
                continue
            for kind in kinds:
                if kind == 'trajectory':
                    runs.update({f'trajectory_{md.pk}_{r}': t for r, t in md.outputs.trajectories.items()})
                elif kind in md.outputs:
                    runs[f'{kind}_{md.pk}'] = md.outputs[kind]
        return runs

    def round_sampled(self):
        """Whether this round's sampling gave a PMF (a failed later round ends the loop, see inspect_free_energy)."""
        return not self.ctx.get('round_failed', False)

    def assess(self):
        """Judge the round by the stop rule; decide whether to label, refit and run another round."""
        current = self.ctx.rounds[-1]
        rule = self.rule
        node = current['sampling']
        settings = {
            'round': self.ctx.round,
            'trust_upper': self.inputs.active_learning.trust_upper.value,
            'trust_quantile': rule['trust_quantile'],
            'scale': self._calibration_scale(current['potential']),
            'targets': {k: rule[k] for k in ('barrier_error_kcal_mol', 'untrusted_fraction', 'pmf_change_kcal_mol')},
            **self._production(node),
        }
        nodes = self._md_runs(node, 'colvars', 'deviations', 'status')
        if len(self.ctx.rounds) > 1:
            nodes['previous_pmf'] = self.ctx.rounds[-2]['pmf']
        assessment = assess_round(orm.Dict(settings), current['pmf'], current['barriers'], **nodes)
        current['assessment'] = assessment
        verdict = assessment.get_dict()
        self._report_round(verdict)
        self._compare_with_best(verdict)
        self._decide(verdict, rule)
        self._progress(self.sampler, windows=verdict['n_windows'], windows_untrusted=verdict['windows_untrusted'])
        return None

    @staticmethod
    def _production(node) -> dict:
        """Where the production frames of a round's sampling start, and its windows given up on (``assess_round``).

        Umbrella: ``equilibration_time`` (fs) and ``dropped`` (centres, CV file unit); metadynamics (each walker
        a window): ``discard_fraction`` of the frames, as its reweighting discards them, and ``dropped`` the walkers
        that blew up (they count as untrusted, as umbrella windows given up on do).
        """
        parameters = node.inputs.parameters.get_dict()
        if node.process_label == MetadynamicsWorkChain.__name__:
            blown = blown_replicas(node.outputs.hills.creator.outputs)
            return {'discard_fraction': METADYNAMICS.validate(parameters)['discard_fraction'], 'dropped': blown}
        umbrella = UMBRELLA.validate(parameters)
        dropped = node.outputs.dropped_windows.get_list() if 'dropped_windows' in node.outputs else []
        return {'equilibration_time': umbrella['equilibration_steps'] * umbrella['timestep'], 'dropped': dropped}

    @staticmethod
    def _calibration_scale(potential) -> float:
        """The potential's committee-deviation calibration (1: none stored)."""
        calibration = potential.base.attributes.get('calibration', None) or {}
        scale = calibration.get('scale')
        return float(scale) if scale is not None and scale > 0 else 1.0

    def _report_round(self, verdict: dict) -> None:
        parts = []
        for name, c in verdict['criteria'].items():
            value = '-' if c['value'] is None else f'{c["value"]:.3g}'
            parts.append(f'{name} {value} (target {c["target"]:.3g}: {"ok" if c["passed"] else "not met"})')
        self.report(
            f'round {verdict["round"]}: ' + ', '.join(parts) + f'; {verdict["windows_untrusted"]} of '
            f'{verdict["n_windows"]} windows untrusted (calibration scale {verdict["scale"]:.2f})'
        )

    def _compare_with_best(self, verdict: dict) -> None:
        """A refit must not make the answer worse: say so when it did; the better round stays the answer."""
        best = self.ctx.best_round
        if best is None or _score(verdict) <= _score(self.ctx.rounds[best]['assessment'].get_dict()):
            self.ctx.best_round = verdict['round']
            return
        previous = self.ctx.rounds[best]['assessment'].get_dict()['criteria']
        now = verdict['criteria']
        self.ctx.worse_rounds.append(verdict['round'])
        self.report(
            f'round {verdict["round"]} is worse than round {best} (barrier error {_fmt(now["barrier_error"]["value"])}'
            f' vs {_fmt(previous["barrier_error"]["value"])} kcal/mol, untrusted fraction '
            f'{_fmt(now["untrusted_fraction"]["value"])} vs {_fmt(previous["untrusted_fraction"]["value"])}); '
            f'round {best} stays the answer unless a later round is better'
        )

    def _decide(self, verdict: dict, rule: dict) -> None:
        used, budget = self.ctx.dataset.n_structures, rule['label_budget']
        if verdict['converged']:
            self.ctx.stop_reason = f'converged in round {verdict["round"]}'
        elif self.ctx.round + 1 >= rule['max_rounds']:
            self.ctx.stop_reason = f'max_rounds ({rule["max_rounds"]}) run without convergence'
        elif budget is not None and used >= budget:
            self.ctx.stop_reason = f'label budget ({budget}) spent ({used} labels) without convergence'
        if self.ctx.stop_reason:
            self.report(f'stopping: {self.ctx.stop_reason}')
            return
        self.ctx.next = dict(verdict['next'])
        if self.ctx.next['sample_more']:
            if self.ctx.sampling_factor < rule['max_sampling_factor']:
                self.ctx.sampling_factor = min(2 * self.ctx.sampling_factor, rule['max_sampling_factor'])
            elif not self.ctx.next['label']:
                self.ctx.stop_reason = (
                    f'the sampling error dominates and production is at its limit (max_sampling_factor '
                    f'{rule["max_sampling_factor"]}) without convergence'
                )
                self.report(f'stopping: {self.ctx.stop_reason}')
                return
        what = [
            w
            for w, on in (
                ('new labels and a refit', self.ctx.next['label']),
                (f'{self.ctx.sampling_factor}x production', self.ctx.next['sample_more']),
            )
            if on
        ]
        self.report(f'next round: {" and ".join(what)} ({self.ctx.next["why"]})')

    def should_refit(self):
        """Whether the next round needs new labels and a refit (else it samples longer with the same potential)."""
        return self.ctx.stop_reason is None and self.ctx.next['label']

    def next_round(self):
        """Count the round (unless the campaign stops here)."""
        if self.ctx.stop_reason is None:
            self.ctx.round += 1

    def label_untrusted(self):
        """Label frames of the round's MD spread along the CV, most uncertain parts first, before run-aways."""
        self._progress('labelling')
        current = self.ctx.rounds[-1]
        runs = self._md_runs(current['sampling'], 'deviations', 'colvars', 'status', 'trajectory')
        al = self.inputs.active_learning
        rule = self.rule
        k = al.max_candidates.value
        if rule['label_budget'] is not None:
            k = min(k, rule['label_budget'] - self.ctx.dataset.n_structures)
        settings = {
            'trust_lower': al.trust_lower.value,
            'trust_upper': al.trust_upper.value,
            'max_candidates': k,
            'seed': 100 + self.ctx.round,
            'scale': self._calibration_scale(current['potential']),
            'runaway': al.stop_deviation_factor.value * al.trust_upper.value,
            'cv_bins': rule['cv_bins'],
            'period': self.ctx.cv.period,
        }
        selection = select_frames(settings=orm.Dict(settings), **runs)
        candidates = {k: v for k, v in selection.items() if k.startswith('candidate_')}
        self.ctx.refit_history.append({'round': self.ctx.round + 1, **selection['statistics'].get_dict()})
        self.ctx.refit_labels = None
        if not candidates:
            self.report(
                f'no {self.sampler} frame above the lower trust level: the next round reruns the same potential'
            )
            return None
        self.report(f'labelling {len(candidates)} {self.sampler} frames spread along the CV')
        return ToContext(refit_labels=self._label(candidates, f'label_{self.sampler}_{self.ctx.round}'))

    def retrain(self):
        """Merge the new labels and retrain the committee as active learning trains it (its exposed inputs)."""
        self._progress('retraining')
        labels = self.ctx.refit_labels
        self.ctx.retrain = None
        if labels is None:
            self.ctx.refit_history[-1].update(n_labelled=0, n_label_failures=0)
            return None
        if 'dataset' in labels.outputs:
            self.ctx.dataset = merge_datasets(a=self.ctx.dataset, b=labels.outputs.dataset)
        self.ctx.refit_history[-1]['n_labelled'] = (
            labels.outputs.dataset.n_structures if 'dataset' in labels.outputs else 0
        )
        self.ctx.refit_history[-1]['n_label_failures'] = (
            len(labels.outputs.failed.get_dict()) if 'failed' in labels.outputs else 0
        )
        inputs = AttributeDict(self._exposed(ActiveLearningWorkChain, 'active_learning')['train'])
        inputs.train = AttributeDict(inputs.train)
        parameters = inputs.train.parameters.get_dict()
        parameters['model'] = {**parameters.get('model', {}), 'committee': self.inputs.active_learning.committee.value}
        parameters['seed'] = self.inputs.active_learning.seed.value + 100 + self.ctx.round
        inputs.train.parameters = orm.Dict(parameters)
        inputs.train.dataset = self.ctx.dataset
        inputs.metadata = {'call_link_label': f'retrain_{self.ctx.round}'}
        return ToContext(retrain=self.submit(TrainBaseWorkChain, **inputs))

    def inspect_retrain(self):
        """Use the refitted potential for the next round."""
        node = self.ctx.retrain
        if node is None:  # nothing new to learn from: the same potential samples again
            return None
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_REFIT_FAILED.format(message=f'exit {node.exit_status}: {node.exit_message}')
        self.ctx.potential = node.outputs.potential
        return None

    def choose_answer(self):
        """The answer is the converged round, or else the round closest to the targets (the better one)."""
        if self.ctx.rounds and not self.ctx.stop_reason.startswith('converged'):
            self.ctx.answer = self.ctx.best_round
        elif self.ctx.rounds:
            self.ctx.answer = len(self.ctx.rounds) - 1
        if self.ctx.rounds:
            self.ctx.potential = self.ctx.rounds[self.ctx.answer]['potential']
            if self.ctx.answer != len(self.ctx.rounds) - 1:
                self.report(f'the answer is round {self.ctx.answer}, the better one; every round is in `rounds`')

    def run_check(self):
        """Relax the structure with the potential at fixed CV values, then label those geometries with pw.x."""
        check = CHECK.validate(self.inputs.check.get_dict(), 'check')
        if not check['values']:
            return None
        self._progress('check')
        settings = {'cv': self.inputs.cv.get_dict(), 'values': check['values'], 'fmax': check['fmax']}
        out = relaxed_cv_scan(self.ctx.potential, self.inputs.structure, orm.Dict(settings))
        self.ctx.scan_energies = out['energies']
        structures = {frame_key(k): out[frame_key(k)] for k in range(len(check['values']))}
        return ToContext(scan_labels=self._label(structures, 'label_scan', max_failure_fraction=orm.Float(0.0)))

    def inspect_check(self):
        """Compare the potential with pw.x along the relaxed scan."""
        if 'scan_labels' not in self.ctx:
            return None
        node = self.ctx.scan_labels
        if not node.is_finished_ok:  # the rounds stand: results() attaches them, then ends with this exit code
            self.ctx.check_failed = f'{node.process_label}<{node.pk}> exit {node.exit_status}: {node.exit_message}'
            self.report(f'the pw.x check of the relaxed scan failed ({self.ctx.check_failed}); every round is kept')
            return None
        self.ctx.scan = compare_scan(self.ctx.scan_energies, node.outputs.dataset)
        diff = self.ctx.scan.base.attributes.get('max_abs_difference_kcal_mol')
        self.report(f'relaxed scan: potential vs pw.x differ by at most {diff:.2f} kcal/mol')
        return None

    def results(self):
        """Attach every result (the answer's round at the top, every round under ``rounds``) and the verdict."""
        self._progress('done')
        self.out('dataset', self.ctx.dataset)
        self.out('potential', self.ctx.potential)
        history = dict(self.ctx.history)
        history['umbrella_refits'] = self.ctx.refit_history
        self.out('history', orm.Dict(history).store())
        creator = self.ctx.potential.creator
        if creator is not None and 'learning_curve' in creator.outputs:
            self.out('learning_curve', creator.outputs.learning_curve)
        for r, entry in enumerate(self.ctx.rounds):
            for key in ('potential', 'pmf', 'barriers', 'assessment'):
                if key in entry:
                    self.out(f'rounds.{key}_{r}', entry[key])
        if self.ctx.rounds:
            answer = self.ctx.rounds[self.ctx.answer]
            for key in ('pmf', 'barriers', 'rates'):
                self.out(key, answer[key])
            if 'overlap' in answer['sampling'].outputs:  # umbrella methods only
                self.out('overlap', answer['sampling'].outputs.overlap)
            self._report_barriers(answer['barriers'].get_dict())
            if 'compare_with' in self.inputs:
                label = self.inputs.compare_label if 'compare_label' in self.inputs else orm.Str('reference')
                comparison = compare_campaigns(answer['barriers'], self.inputs.compare_with, label)
                self.out('comparison', comparison)
                self._report_comparison(comparison.get_dict())
        if 'scan' in self.ctx:
            self.out('scan', self.ctx.scan)
        verdict = self._convergence()
        self.out('convergence', orm.Dict(verdict).store())
        if self.ctx.get('check_failed'):
            return self.exit_codes.ERROR_SCAN_LABELS_FAILED.format(message=self.ctx.check_failed)
        if not verdict['converged']:
            self.report(f'NOT converged: {verdict["reason"]}')
            return self.exit_codes.ERROR_NOT_CONVERGED.format(message=verdict['reason'])
        self.report(verdict['reason'])
        return None

    def _convergence(self) -> dict:
        """The campaign's verdict: the answer's round against the stop rule, and every round's figures."""
        rule = self.rule
        rounds = []
        for r, entry in enumerate(self.ctx.rounds):
            v = entry['assessment'].get_dict() if 'assessment' in entry else {}
            c = v.get('criteria', {})
            rounds.append(
                {
                    'round': r,
                    'labels_used': entry['labels_used'],
                    'sampling_factor': entry['sampling_factor'],
                    'next': v.get('next'),
                    **{
                        name: (c.get(name) or {}).get('value')
                        for name in ('barrier_error', 'untrusted_fraction', 'pmf_change')
                    },
                    'windows_untrusted': v.get('windows_untrusted'),
                    'n_windows': v.get('n_windows'),
                    'converged': bool(v.get('converged', False)),
                }
            )
        final = self.ctx.rounds[self.ctx.answer]['assessment'].get_dict() if self.ctx.rounds else {}
        converged = bool(final.get('converged', False))
        failed = final.get('failed', ['barrier_error', 'untrusted_fraction', 'pmf_change'])
        reason = self.ctx.stop_reason or f'no {self.sampler} round ran'
        if not converged and failed:
            shown = []
            for name in failed:
                c = final['criteria'][name]
                shown.append(f'{name} {_fmt(c["value"])} > {c["target"]:g} {c["unit"]}'.rstrip())
            reason = f'{reason}: ' + ', '.join(shown)
        return {
            'converged': converged,
            'reason': reason,
            'failed': [] if converged else list(failed),
            'criteria': final.get('criteria', {}),
            'labels_used': self.ctx.dataset.n_structures,
            'label_budget': rule['label_budget'],
            'rounds_run': len(self.ctx.rounds),
            'max_rounds': rule['max_rounds'],
            'best_round': self.ctx.best_round,
            'answer_round': getattr(self.ctx, 'answer', None),
            'final_round': len(self.ctx.rounds) - 1,
            'worse_rounds': list(self.ctx.worse_rounds),
            'rounds': rounds,
        }

    def _progress(self, stage: str, **values) -> None:
        """Where the campaign stands, as the ``mlff_progress`` extra (read by ``aiida-mlff campaign run``)."""
        from datetime import datetime, timezone

        rule = self.rule
        previous = self.node.base.extras.get(PROGRESS_EXTRA, {}) or {}
        dataset = self.ctx.get('dataset')
        progress = {
            'stage': stage,
            'round': self.ctx.round,
            'max_rounds': rule['max_rounds'],
            'labels_used': dataset.n_structures if dataset is not None else 0,
            'label_budget': rule['label_budget'],
            'windows': previous.get('windows'),
            'windows_untrusted': previous.get('windows_untrusted'),
            'stage_started': datetime.now(timezone.utc).isoformat(),
            **values,
        }
        self.node.base.extras.set(PROGRESS_EXTRA, progress)

    def _report_comparison(self, comparison: dict) -> None:
        for name, entry in comparison['transitions'].items():
            parts = [
                f'{direction} {_fmt2(d["difference"])} +- {_fmt2(d["difference_error"])}'
                for direction, d in entry.items()
            ]
            self.report(f'transition {name} minus {comparison["label"]}: ' + ', '.join(parts) + ' kcal/mol')
        if comparison['only_here'] or comparison['only_there']:
            self.report(
                f'not compared with {comparison["label"]}: only here {comparison["only_here"]}, only there '
                f'{comparison["only_there"]}'
            )

    def _report_barriers(self, barriers: dict) -> None:
        for name, t in barriers.get('transitions', {}).items():
            self.report(
                f'transition {name}: forward {_pm(t.get("forward_kcal_mol"), t.get("forward_error_kcal_mol"))}, '
                f'backward {_pm(t.get("backward_kcal_mol"), t.get("backward_error_kcal_mol"))} kcal/mol'
            )
        for warning in barriers.get('warnings', []):
            self.report(f'warning: {warning}')


def _score(verdict: dict) -> float:
    """A round's score (lower is better); an unknown one (None: a barrier error is unknown) is the worst."""
    score = verdict.get('score')
    return float('inf') if score is None else float(score)


def _pm(value, error) -> str:
    """``'1.23 +- 0.45'`` (kcal/mol); ``-`` for a value or an error that is unknown (None)."""
    return f'{_fmt2(value)} +- {_fmt2(error)}'


def _fmt2(value) -> str:
    return '-' if value is None else f'{value:.2f}'


def _fmt(value) -> str:
    return '-' if value is None else f'{value:.3g}'


def _end_structure(path: str, reference) -> orm.StructureData:
    """An end of the sampling path read from a file, put in the system's cell when it has none of its own."""
    from ase.io import read

    atoms = read(path)
    if not (atoms.pbc.any() and atoms.cell.volume > 0):
        atoms.set_cell(reference.cell)
        atoms.center()
        atoms.pbc = reference.pbc
    return orm.StructureData(ase=atoms)


def _active_learning_inputs(pw_code, mlff_code, structure, config: dict) -> dict:
    """The inputs of active learning from the campaign's dft, training and active-learning sections."""
    overrides = _given(config['active_learning'], 'umbrella_windows', 'metadynamics_walkers')
    if 'committee' in config['training']:
        overrides['committee'] = config['training']['committee']
    label_overrides = _given(config['dft'])
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        pw_code,
        mlff_code,
        [structure],
        protocol=config['active_learning']['protocol'],
        overrides=overrides,
        label_overrides=label_overrides,
        train_overrides={'train': {'parameters': _given(config['training'], 'committee', *FINE_TUNING)}},
        label_protocol=config['dft']['protocol'],
        train_protocol=config['training']['protocol'],
    )
    inputs = builder._inputs(prune=True)
    for key in ('seeds', 'structures', 'dataset', 'umbrella'):
        inputs.pop(key, None)
    inputs['train']['train'].update(fine_tuning_inputs(config['training']))
    return inputs


def fine_tuning_inputs(training: dict) -> dict:
    """``parent_potential`` and ``replay_dataset`` of every training from ``training.initial_potential``.

    A file becomes a ``PotentialData`` (its SHA-256 in ``content_hash``); a pk/UUID must be a ``PotentialData``.
    The replay set is ``training.replay_dataset`` (an extxyz file or a ``TrainingSetData``), else the dataset the
    initial potential was trained on when its provenance holds it. Raises :class:`CampaignConfigError`.
    """
    source = training.get('initial_potential')
    if source is None:
        return {}
    inputs = {'parent_potential': _node_or_file(source, PotentialData, 'training.initial_potential')}
    replay = training.get('replay_dataset')
    if replay is not None:
        inputs['replay_dataset'] = _node_or_file(replay, TrainingSetData, 'training.replay_dataset')
    else:
        dataset = _training_dataset(inputs['parent_potential'])
        if dataset is not None:
            inputs['replay_dataset'] = dataset
    if (training.get('replay_fraction') or 0) > 0 and 'replay_dataset' not in inputs:
        raise CampaignConfigError(
            [
                'training.replay_fraction: no replay set: the provenance of training.initial_potential holds no '
                'dataset (a file has none); give training.replay_dataset'
            ]
        )
    return inputs


def _node_or_file(value, node_class, field: str):
    """A stored node of ``node_class`` from a pk/UUID, or a new one from a file."""
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    if isinstance(value, str) and Path(value).is_file():
        try:
            node = PotentialData(value) if node_class is PotentialData else TrainingSetData.from_extxyz(value)
        except Exception as error:
            raise CampaignConfigError([f'{field}: {value} cannot be read: {error}']) from error
        return node.store()
    try:
        node = orm.load_node(value)
    except (NotExistent, MultipleObjectsError, ValueError) as error:
        raise CampaignConfigError([f'{field}: no node {value!r} in this profile ({error})']) from error
    if not isinstance(node, node_class):
        raise CampaignConfigError([f'{field}: node {value!r} is a {type(node).__name__}, not a {node_class.__name__}'])
    return node


def _training_dataset(potential: PotentialData, depth: int = 3):
    """The dataset the training that created ``potential`` read (through combined committees), or None."""
    from aiida.common.links import LinkType

    creator = potential.creator
    if creator is None or depth == 0:
        return None
    inputs = {link.link_label: link.node for link in creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC)}
    if isinstance(inputs.get('dataset'), TrainingSetData):
        return inputs['dataset']
    for label in sorted(inputs):
        if isinstance(inputs[label], PotentialData):
            found = _training_dataset(inputs[label], depth - 1)
            if found is not None:
                return found
    return None


def reference_barriers(value) -> tuple[orm.Dict, str]:
    """The ``barriers`` output and the label of the campaign that ``value`` names.

    ``value``: a pk, a UUID, or a name (the latest campaign of that label with barriers). Raises
    :class:`CampaignConfigError` naming ``reference.compare_with`` when there is none.
    """
    field = 'reference.compare_with'
    node = None
    if isinstance(value, int) or (isinstance(value, str) and (value.isdigit() or uuid_like(value))):
        try:
            node = orm.load_node(int(value) if str(value).isdigit() else value)
        except Exception as exception:  # aiida raises several kinds; the message names the value
            raise CampaignConfigError([f'{field}: no node {value!r} ({type(exception).__name__})']) from exception
    else:
        query = orm.QueryBuilder().append(
            orm.WorkflowNode, filters={'label': value, 'attributes.process_label': CampaignWorkChain.__name__}
        )
        query.order_by({orm.WorkflowNode: {'ctime': 'desc'}})
        node = next((n for (n,) in query.iterall() if 'barriers' in n.outputs), None)
        if node is None:
            raise CampaignConfigError(
                [f'{field}: no campaign called {value!r} with barriers in this profile (run that campaign first)']
            )
    if not isinstance(node, orm.WorkflowNode) or 'barriers' not in node.outputs:
        raise CampaignConfigError([f'{field}: node {value!r} is not a campaign with a barriers output'])
    return node.outputs.barriers, node.label or str(node.pk)
