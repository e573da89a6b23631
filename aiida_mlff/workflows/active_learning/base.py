"""``mlff.active_learning``: train a committee -> explore with MD -> select by disagreement -> label -> retrain."""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mlff.calculations.functions import merge_datasets, select_frames
from aiida_mlff.core.options import ACTIVE_LEARNING, EXPLORE, MD
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows import PROGRESS_EXTRA
from aiida_mlff.workflows.dft.label import DftLabelWorkChain
from aiida_mlff.workflows.md.base import MdBaseWorkChain
from aiida_mlff.workflows.protocols import ProtocolMixin, option_port
from aiida_mlff.workflows.train.base import TrainBaseWorkChain

__all__ = ['ActiveLearningWorkChain']

#: exploration options that go to the MD jobs as they are
EXPLORE_KEYS = tuple(key for key in EXPLORE if key in MD)


def validate_inputs(value, ctx) -> str | None:
    """Check trust levels, the stop rule and that there is something to learn from.

    Exposed in a composite without ``seeds`` (the composite gives them), only the options are checked.
    """
    standalone = 'seeds' in ctx
    if standalone and 'dataset' not in value and not value.get('structures'):
        return 'give a labelled `dataset`, `structures` to label first, or both'
    if standalone and not value.get('seeds'):
        return '`seeds` (starting structures of the exploration MD) needs at least one structure'
    lower, upper = value['trust_lower'].value, value['trust_upper'].value
    if not 0 < lower < upper:
        return f'trust levels must satisfy 0 < trust_lower < trust_upper, got {lower} and {upper} eV/Å'
    errors = []
    for name, schema in (('stop_rule', ACTIVE_LEARNING['stop_rule']), ('explore', EXPLORE)):
        errors += schema.resolve(value[name].get_dict(), name)[1]
    return '; '.join(errors) if errors else None


class ActiveLearningWorkChain(ProtocolMixin, WorkChain):
    """Concurrent learning of a committee potential.

    Each iteration: train a committee on the dataset -> run MD from the seeds at every temperature (and in umbrella
    windows when ``umbrella`` is given) -> classify every frame by the committee's max force deviation
    (accurate < ``trust_lower`` <= candidate < ``trust_upper`` <= failed) -> stop by the rule or at
    ``max_iterations`` -> else label at most ``max_candidates`` diverse candidates with pw.x and merge them.
    The ``history`` output records every iteration and why the loop stopped.
    """

    _protocol_file = 'active_learning/base.yaml'
    _options = ACTIVE_LEARNING

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('dataset', valid_type=TrainingSetData, required=False, help='Labelled structures to start from.')
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True, required=False)
        spec.input_namespace('seeds', valid_type=orm.StructureData, dynamic=True, help='Starting MD structures.')
        spec.expose_inputs(
            DftLabelWorkChain,
            namespace='label',
            exclude=('structures',),
            namespace_options={'help': 'Inputs of `mlff.dft.label` for every batch of labels.'},
        )
        spec.expose_inputs(
            TrainBaseWorkChain,
            namespace='train',
            exclude=('train.dataset',),
            namespace_options={'help': 'Inputs of `mlff.train.base`; the committee size is set by `committee`.'},
        )
        spec.input('md_code', valid_type=orm.AbstractCode, help='The `mlff-run` code for exploration MD.')
        option_port(spec, 'committee', ACTIVE_LEARNING)
        spec.input('explore', valid_type=orm.Dict, help='temperatures (K), replicas_per_temperature, MD settings.')
        spec.input(
            'umbrella',
            valid_type=orm.Dict,
            required=False,
            help="Also explore in umbrella windows: {'cv': {...}, 'centers': [...], 'kappa': eV/unit^2}.",
        )
        spec.input(
            'metadynamics',
            valid_type=orm.Dict,
            required=False,
            help='Also explore with metadynamics walkers: the job-file bias of `core.enhanced.metadynamics_job_bias` '
            '(walkers sharing one well-tempered bias reach barrier tops that free MD never visits).',
        )
        for name in ('trust_lower', 'trust_upper', 'max_candidates', 'max_iterations'):
            option_port(spec, name, ACTIVE_LEARNING)
        option_port(
            spec,
            'stop_rule',
            ACTIVE_LEARNING,
            help='Stop when the accurate fraction reaches this in this many consecutive iterations.',
        )
        for name in ('max_failed_label_fraction', 'max_failed_exploration_fraction', 'seed'):
            option_port(spec, name, ACTIVE_LEARNING)
        spec.input(
            'fill_from_failed',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='With fewer candidates than max_candidates, top up with the least-failed frames (a young committee).',
        )
        spec.input(
            'stop_deviation_factor',
            valid_type=orm.Float,
            default=lambda: orm.Float(3.0),
            help='Exploration replicas stop when the deviation exceeds this times trust_upper (frame kept).',
        )
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.has_structures)(cls.label_initial, cls.merge_initial),
            while_(cls.should_iterate)(
                cls.train,
                cls.inspect_training,
                cls.explore,
                cls.select,
                if_(cls.should_label)(cls.label_candidates, cls.merge_candidates),
            ),
            cls.results,
        )
        spec.output('potential', valid_type=PotentialData, help='The last committee potential.')
        spec.output('dataset', valid_type=TrainingSetData, help='Every label gathered.')
        spec.output('history', valid_type=orm.Dict, help='Per iteration: sizes, fractions, errors; stop reason.')
        spec.exit_code(401, 'ERROR_INITIAL_LABELS_FAILED', message='Labelling the initial structures failed: {message}')
        spec.exit_code(402, 'ERROR_TRAINING_FAILED', message='Training failed in iteration {iteration}: {message}')
        spec.exit_code(403, 'ERROR_TOO_MANY_FAILED_LABELS', message='{message}')
        spec.exit_code(404, 'ERROR_TOO_MANY_FAILED_EXPLORATIONS', message='{message}')

    @classmethod
    def get_builder_from_protocol(
        cls,
        pw_code,
        mlff_code,
        seeds,
        structures=None,
        dataset=None,
        protocol=None,
        overrides=None,
        label_overrides=None,
        train_overrides=None,
        label_protocol=None,
        train_protocol=None,
    ):
        """Return a builder from the protocols of this work chain, `mlff.dft.label` and `mlff.train.base`.

        ``label_protocol`` and ``train_protocol`` name the protocols of the labelling and training steps (default:
        ``protocol``).
        """
        from aiida_mlff.core.structures import to_atoms

        inputs = cls.get_protocol_inputs(protocol, overrides)
        mlff_code = orm.load_code(mlff_code) if isinstance(mlff_code, str) else mlff_code

        def nodes(objs, prefix):
            return {
                f'{prefix}{k:04d}': o if isinstance(o, orm.StructureData) else orm.StructureData(ase=to_atoms(o))
                for k, o in enumerate(objs)
            }

        seed_nodes = nodes(seeds, 'seed_')
        label = DftLabelWorkChain.get_builder_from_protocol(
            pw_code, seed_nodes, protocol=label_protocol or protocol, overrides=label_overrides
        )
        train = TrainBaseWorkChain.get_builder_from_protocol(
            mlff_code, None, protocol=train_protocol or protocol, overrides=train_overrides
        )
        builder = cls.get_builder()
        builder.label = {k: v for k, v in label._inputs(prune=True).items() if k != 'structures'}
        train_inputs = train._inputs(prune=True)
        train_inputs['train'].pop('dataset', None)
        builder.train = train_inputs
        builder.md_code = mlff_code
        builder.seeds = seed_nodes
        if structures:
            builder.structures = nodes(structures, 's')
        if dataset is not None:
            builder.dataset = dataset
        builder.committee = orm.Int(inputs['committee'])
        builder.explore = orm.Dict(inputs['explore'])
        builder.trust_lower = orm.Float(inputs['trust_lower'])
        builder.trust_upper = orm.Float(inputs['trust_upper'])
        builder.max_candidates = orm.Int(inputs['max_candidates'])
        builder.max_iterations = orm.Int(inputs['max_iterations'])
        builder.stop_rule = orm.Dict(inputs['stop_rule'])
        builder.max_failed_label_fraction = orm.Float(inputs['max_failed_label_fraction'])
        builder.max_failed_exploration_fraction = orm.Float(inputs['max_failed_exploration_fraction'])
        builder.seed = orm.Int(inputs['seed'])
        return builder

    # ------------------------------------------------------------------------------------------------ outline
    def setup(self):
        """Start the history."""
        self.ctx.iteration = 0
        self.ctx.history = []
        self.ctx.stop_reason = None
        self.ctx.dataset = self.inputs.get('dataset')
        self.ctx.streak = 0

    def has_structures(self):
        """Whether initial structures wait to be labelled."""
        return bool(self.inputs.get('structures'))

    def _label(self, structures: dict, link: str):
        inputs = AttributeDict(self.exposed_inputs(DftLabelWorkChain, 'label'))
        inputs.structures = structures
        inputs.max_failure_fraction = orm.Float(1.0)  # judged here, against max_failed_label_fraction
        inputs.metadata = {'call_link_label': link}
        return self.submit(DftLabelWorkChain, **inputs)

    def label_initial(self):
        """Label the initial structures with pw.x."""
        self.report(f'labelling {len(self.inputs.structures)} initial structures')
        return ToContext(initial_labels=self._label(dict(self.inputs.structures), 'label_initial'))

    def _accept_labels(self, node, total: int) -> tuple[TrainingSetData | None, int, str | None]:
        failed = (
            len(node.outputs.failed.get_dict()) if 'failed' in node.outputs else (0 if node.is_finished_ok else total)
        )
        if not node.is_finished_ok and 200 <= (node.exit_status or 0) < 300:  # bad input: no label was attempted
            return None, total, f'labelling refused its input: {node.exit_message}'
        dataset = node.outputs.dataset if 'dataset' in node.outputs else None
        limit = self.inputs.max_failed_label_fraction.value
        if total and failed / total > limit:
            return dataset, failed, f'{failed} of {total} labels failed, more than max_failed_label_fraction={limit}'
        return dataset, failed, None

    def merge_initial(self):
        """Merge the initial labels into the dataset."""
        node = self.ctx.initial_labels
        dataset, failed, problem = self._accept_labels(node, len(self.inputs.structures))
        if problem or (dataset is None and self.ctx.dataset is None):
            return self.exit_codes.ERROR_INITIAL_LABELS_FAILED.format(message=problem or node.exit_message)
        self.ctx.initial_label_failures = failed
        self.ctx.initial_labelled = dataset.n_structures if dataset is not None else 0
        if failed:
            self.report(f'{failed} initial labels failed: {sorted(node.outputs.failed.keys())}')
        if dataset is not None:
            self.ctx.dataset = dataset if self.ctx.dataset is None else merge_datasets(a=self.ctx.dataset, b=dataset)
        return None

    def should_iterate(self):
        """Whether to run another iteration."""
        return self.ctx.stop_reason is None

    def train(self):
        """Train a committee on the current dataset."""
        self.ctx.iteration += 1
        inputs = AttributeDict(self.exposed_inputs(TrainBaseWorkChain, 'train'))
        inputs.train = AttributeDict(inputs.train)
        parameters = inputs.train.parameters.get_dict()
        model = dict(parameters.get('model', {}))
        model['committee'] = self.inputs.committee.value
        parameters['model'] = model
        parameters['seed'] = self.inputs.seed.value + self.ctx.iteration
        inputs.train.parameters = orm.Dict(parameters)
        inputs.train.dataset = self.ctx.dataset
        inputs.metadata = {'call_link_label': f'train_{self.ctx.iteration:02d}'}
        progress = {
            'stage': 'active learning',
            'iteration': self.ctx.iteration,
            'max_iterations': self.inputs.max_iterations.value,
            'labels_used': self.ctx.dataset.n_structures,
        }
        self.node.base.extras.set(PROGRESS_EXTRA, progress)
        self.report(f'iteration {self.ctx.iteration}: training on {self.ctx.dataset.n_structures} structures')
        return ToContext(training=self.submit(TrainBaseWorkChain, **inputs))

    def inspect_training(self):
        """Keep the new potential or stop with the reason."""
        node = self.ctx.training
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(iteration=self.ctx.iteration, message=node.exit_message)
        self.ctx.potential = node.outputs.potential
        return None

    def explore(self):
        """MD from every seed at every temperature (one batched job); in umbrella windows and metadynamics if asked."""
        explore = EXPLORE.validate(self.inputs.explore.get_dict(), 'explore')
        seeds = [self.inputs.seeds[k] for k in sorted(self.inputs.seeds)]
        replicas, temperatures = {}, []
        for t in explore['temperatures']:
            for _ in range(int(explore['replicas_per_temperature'])):
                for seed in seeds:
                    replicas[f'r{len(replicas):04d}'] = seed
                    temperatures.append(float(t))
        parameters = {key: explore[key] for key in EXPLORE_KEYS if key in explore}
        parameters.update(
            temperature=temperatures,
            seed=self.inputs.seed.value * 1000 + self.ctx.iteration,
            max_force_deviation=self.inputs.stop_deviation_factor.value * self.inputs.trust_upper.value,
        )
        futures = {'explore_free': self._md(replicas, parameters, 'explore_free')}
        if 'umbrella' in self.inputs:
            umbrella = self.inputs.umbrella.get_dict()
            biased = dict(parameters)
            biased['temperature'] = float(explore['temperatures'][0])
            biased['biases'] = [{'cv': umbrella['cv'], 'centers': umbrella['centers'], 'kappa': umbrella['kappa']}]
            futures['explore_umbrella'] = self._md({'start': seeds[0]}, biased, 'explore_umbrella')
        if 'metadynamics' in self.inputs:
            biased = dict(parameters)
            biased['temperature'] = float(explore['temperatures'][0])
            biased['biases'] = [self.inputs.metadynamics.get_dict()]
            futures['explore_metadynamics'] = self._md({'start': seeds[0]}, biased, 'explore_metadynamics')
        self.ctx.explorations = list(futures)
        return ToContext(**futures)

    def _md(self, structures: dict, parameters: dict, label: str):
        inputs = {
            'md': {
                'code': self.inputs.md_code,
                'potential': self.ctx.potential,
                'structures': structures,
                'parameters': orm.Dict(parameters),
            },
            'max_iterations': orm.Int(2),
            'metadata': {'call_link_label': f'{label}_{self.ctx.iteration:02d}'},
        }
        return self.submit(MdBaseWorkChain, **inputs)

    def _exploration_outputs(self, node):
        """Outputs of an exploration: of the work chain, or, when it failed, of its last MD job (frames kept)."""
        if node.is_finished_ok:
            return node.outputs, 0
        calcs = sorted((n for n in node.called if n.process_label == 'MdCalculation'), key=lambda n: n.ctime)
        last = calcs[-1] if calcs else None
        if last is None or 'deviations' not in last.outputs:
            return None, None
        blown = sum(1 for s in last.outputs.status['status'] if s == 'blown_up')
        return last.outputs, blown

    def select(self):
        """Classify the explored frames, record the iteration, and apply the stop rule."""
        runs, n_blown, n_failed_runs, n_reseeds = {}, 0, 0, 0
        for key in self.ctx.explorations:
            node = self.ctx[key]
            n_reseeds += max(0, len([n for n in node.called if n.process_label == 'MdCalculation']) - 1)
            outputs, blown = self._exploration_outputs(node)
            if outputs is None:
                n_failed_runs += 1
                self.report(f'exploration {key} failed without frames: {node.exit_message}')
                continue
            if blown:
                n_blown += blown
                self.report(f'exploration {key}: {blown} replicas blew up (kept their frames before the blow-up)')
            runs[f'deviations_{key}'] = outputs['deviations']
            for r, trajectory in outputs['trajectories'].items():
                runs[f'trajectory_{key}_{r}'] = trajectory
        if n_failed_runs / max(1, len(self.ctx.explorations)) > self.inputs.max_failed_exploration_fraction.value:
            return self.exit_codes.ERROR_TOO_MANY_FAILED_EXPLORATIONS.format(
                message=f'{n_failed_runs} of {len(self.ctx.explorations)} explorations failed without frames'
            )
        settings = {
            'trust_lower': self.inputs.trust_lower.value,
            'trust_upper': self.inputs.trust_upper.value,
            'max_candidates': self.inputs.max_candidates.value,
            'seed': self.inputs.seed.value + self.ctx.iteration,
            'fill_from_failed': self.inputs.fill_from_failed.value,
        }
        selection = select_frames(settings=orm.Dict(settings), **runs)
        stats = selection['statistics'].get_dict()
        self.ctx.candidates = {k: v for k, v in selection.items() if k.startswith('candidate_')}
        metrics = self.ctx.potential.base.attributes.get('metrics', {}) or {}
        entry = {
            'iteration': self.ctx.iteration,
            'n_structures': self.ctx.dataset.n_structures,
            'accurate': stats['accurate'],
            'candidate': stats['candidate'],
            'failed': stats['failed'],
            'n_frames': stats['n_frames'],
            'n_selected': stats['n_selected'],
            'max_deviation': stats['max_deviation'],
            'n_blown_up': n_blown,
            'n_reseeds': n_reseeds,
            'n_failed_explorations': n_failed_runs,
            'validation': metrics.get('validation') or metrics.get('train'),
            'potential': self.ctx.potential.uuid,
            'n_labelled': 0,
            'n_initial_labelled': getattr(self.ctx, 'initial_labelled', 0) if self.ctx.iteration == 1 else 0,
            'n_label_failures': getattr(self.ctx, 'initial_label_failures', 0) if self.ctx.iteration == 1 else 0,
        }
        self.ctx.history.append(entry)
        self.report(
            f'iteration {self.ctx.iteration}: accurate {stats["accurate"]:.2f}, candidate {stats["candidate"]:.2f}, '
            f'failed {stats["failed"]:.2f} of {stats["n_frames"]} frames; {stats["n_selected"]} selected'
        )
        rule = self.inputs.stop_rule.get_dict()
        self.ctx.streak = self.ctx.streak + 1 if stats['accurate'] >= rule['accurate_fraction'] else 0
        if self.ctx.streak >= int(rule['consecutive']):
            self.ctx.stop_reason = (
                f'converged: accurate fraction >= {rule["accurate_fraction"]} in {rule["consecutive"]} consecutive '
                f'iterations'
            )
        elif self.ctx.iteration >= self.inputs.max_iterations.value:
            self.ctx.stop_reason = f'max_iterations ({self.inputs.max_iterations.value}) reached without convergence'
        elif not self.ctx.candidates:
            self.ctx.stop_reason = 'no frames left to label (every frame accurate, or failed with no fallback)'
        return None

    def should_label(self):
        """Whether this iteration labels its candidates."""
        return self.ctx.stop_reason is None

    def label_candidates(self):
        """Label the selected candidates with pw.x."""
        return ToContext(labels=self._label(dict(self.ctx.candidates), f'label_{self.ctx.iteration:02d}'))

    def merge_candidates(self):
        """Merge the new labels; record failures; stop when too many failed."""
        node = self.ctx.labels
        dataset, failed, problem = self._accept_labels(node, len(self.ctx.candidates))
        entry = self.ctx.history[-1]
        entry['n_label_failures'] = entry.get('n_label_failures', 0) + failed
        entry['n_labelled'] = dataset.n_structures if dataset is not None else 0
        if failed:
            self.report(f'{failed} of {len(self.ctx.candidates)} labels failed: {list(node.outputs.failed.keys())}')
        if problem:
            self.ctx.stop_reason = f'stopped: {problem}'
            self.ctx.exit = self.exit_codes.ERROR_TOO_MANY_FAILED_LABELS.format(message=problem)
            return None
        if dataset is not None:
            self.ctx.dataset = merge_datasets(a=self.ctx.dataset, b=dataset)
        return None

    def results(self):
        """Attach the potential, the dataset and the history."""
        self.out('potential', self.ctx.potential)
        self.out('dataset', self.ctx.dataset)
        history = orm.Dict({'iterations': self.ctx.history, 'stop_reason': self.ctx.stop_reason}).store()
        self.out('history', history)
        self.report(f'stopped after {self.ctx.iteration} iterations: {self.ctx.stop_reason}')
        return getattr(self.ctx, 'exit', None)
