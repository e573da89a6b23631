"""``mlff.campaign``: from a structure and a CV to a free-energy profile with error band, traceable to every label.

sample (rattles, restrained scans along the CV, a path between two end structures) -> label with pw.x and
active-learn a committee (``mlff.active_learning``) -> umbrella sampling along the CV (``mlff.umbrella``), handing
untrusted windows back for labels and a refit -> WHAM -> PMF, states, barriers of every transition, rates -> the
potential relaxed at fixed CV values, checked against pw.x single points.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mlff.calculations.campaign import compare_scan, relaxed_cv_scan
from aiida_mlff.calculations.functions import (
    cv_scan_structure,
    frame_key,
    merge_datasets,
    path_structure,
    rattle_structure,
    select_frames,
)
from aiida_mlff.calculations.states import pmf_states
from aiida_mlff.core.colvars import cv_from_spec, place_windows
from aiida_mlff.core.options import UMBRELLA
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows.active_learning.base import ActiveLearningWorkChain
from aiida_mlff.workflows.campaign.config import CampaignConfigError, build_structure, validate_campaign
from aiida_mlff.workflows.dft.label import DftLabelWorkChain
from aiida_mlff.workflows.train.base import TrainBaseWorkChain
from aiida_mlff.workflows.umbrella.base import UmbrellaWorkChain, umbrella_windows

__all__ = ['CampaignWorkChain', 'build_structure']


def _given(section: dict, *drop: str) -> dict:
    """A campaign section as overrides of its step's protocol (without the campaign's own keys)."""
    return {k: v for k, v in section.items() if k not in ('protocol', *drop)}


def validate_config(value, _) -> str | None:
    """Check the campaign before anything runs."""
    try:
        validate_campaign(value.get_dict())
    except CampaignConfigError as exception:
        return str(exception)
    return None


class CampaignWorkChain(WorkChain):
    """The whole campaign of a campaign file, every step linked in one provenance graph."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('config', valid_type=orm.Dict, validator=validate_config, help="A campaign file's content.")
        spec.input('pw_code', valid_type=orm.AbstractCode, help='The pw.x code.')
        spec.input('mlff_code', valid_type=orm.AbstractCode, help='The mlff-run code.')
        spec.input('pseudo_family', valid_type=orm.Str, required=False, help='Default: the setup family.')
        spec.outline(
            cls.setup,
            cls.sample,
            cls.run_active_learning,
            cls.inspect_active_learning,
            while_(cls.should_run_umbrella)(
                cls.run_umbrella,
                cls.inspect_umbrella,
                if_(cls.should_refit)(cls.label_untrusted, cls.retrain, cls.inspect_retrain),
            ),
            cls.run_check,
            cls.inspect_check,
            cls.results,
        )
        spec.output('dataset', valid_type=TrainingSetData)
        spec.output('potential', valid_type=PotentialData)
        spec.output('history', valid_type=orm.Dict)
        spec.output('learning_curve', valid_type=orm.ArrayData, required=False)
        spec.output('pmf', valid_type=orm.XyData, required=False, help='x: the CV in its file unit; y: eV.')
        spec.output('overlap', valid_type=orm.ArrayData, required=False)
        spec.output('barriers', valid_type=orm.Dict, required=False, help='States and every transition, named.')
        spec.output('rates', valid_type=orm.Dict, required=False)
        spec.output('scan', valid_type=orm.ArrayData, required=False, help='Relaxed scan: potential vs pw.x.')
        spec.exit_code(401, 'ERROR_ACTIVE_LEARNING_FAILED', message='Active learning failed: {message}')
        spec.exit_code(402, 'ERROR_UMBRELLA_FAILED', message='Umbrella sampling failed: {message}')
        spec.exit_code(403, 'ERROR_SCAN_LABELS_FAILED', message='The pw.x check of the relaxed scan failed: {message}')
        spec.exit_code(404, 'ERROR_REFIT_FAILED', message='Refitting on untrusted umbrella frames failed: {message}')

    @classmethod
    def get_builder_from_protocol(cls, pw_code, mlff_code, structure, cv: dict, protocol=None, overrides=None):
        """A builder for a campaign on ``structure`` along ``cv``; ``overrides`` are the sections of a campaign file.

        ``structure``: a ``StructureData``, an ``ase.Atoms``, a pymatgen ``Molecule``/``Structure``, a file ASE
        reads, or a molecule name (``'H2O2'``). A structure without a cell is boxed by ``system.box``.
        """
        from pathlib import Path

        config = dict(overrides or {})
        system = dict(config.get('system') or {})
        system['cv'] = cv
        if isinstance(structure, str) and not Path(structure).is_file():
            system['molecule'] = structure
        else:
            if not isinstance(structure, str | Path):
                structure = _write_structure(structure)
            system['file'] = str(Path(structure).resolve())
        config['system'] = system
        if protocol is not None:
            config['protocol'] = protocol
        config = validate_campaign(config)
        builder = cls.get_builder()
        builder.config = orm.Dict(config)
        builder.pw_code = orm.load_code(pw_code) if isinstance(pw_code, str) else pw_code
        builder.mlff_code = orm.load_code(mlff_code) if isinstance(mlff_code, str) else mlff_code
        builder.metadata.label = config['name']
        builder.metadata.description = config['description']
        return builder

    # -------------------------------------------------------------------------------------------------- helpers
    @property
    def config(self) -> dict:
        """The validated campaign, defaults filled in."""
        return validate_campaign(self.inputs.config.get_dict())

    def _train_overrides(self) -> dict:
        return {'train': {'parameters': _given(self.config['training'], 'committee')}}

    def _label_overrides(self) -> dict:
        overrides = _given(self.config['dft'])
        if 'pseudo_family' in self.inputs:
            overrides['pseudo_family'] = self.inputs.pseudo_family.value
        return overrides

    def _label(self, structures: dict, label: str, **extra):
        builder = DftLabelWorkChain.get_builder_from_protocol(
            self.inputs.pw_code,
            structures,
            protocol=self.config['dft']['protocol'],
            overrides={**self._label_overrides(), **extra},
            molecule=not self.ctx.periodic,
        )
        builder.metadata.call_link_label = label
        return self.submit(builder)

    # -------------------------------------------------------------------------------------------------- outline
    def setup(self):
        """Build the structure and remember the settings."""
        atoms = build_structure(self.config)
        self.ctx.structure = orm.StructureData(ase=atoms)
        self.ctx.periodic = not atoms.info.get('boxed', False)  # a molecule in a box is labelled at Gamma
        self.ctx.cv = cv_from_spec(self.config['system']['cv'])
        self.ctx.refits = 0
        self.ctx.umbrella_done = False
        self.ctx.refit_history = []

    def sample(self):
        """Rattles, restrained relaxations along the CV and a path between two ends: the first structures to label."""
        sampling = self.config['sampling']
        cv = self.config['system']['cv']
        structures = {}
        rattle = sampling['rattle']
        if rattle['n']:
            out = rattle_structure(
                self.ctx.structure, orm.Int(rattle['n']), orm.Float(rattle['stdev']), orm.Int(rattle['seed'])
            )
            structures.update({f'rattle_{k}': v for k, v in out.items()})
        scan = sampling['scan']
        if scan['values']:
            out = cv_scan_structure(self.ctx.structure, orm.Dict({'cv': cv, **scan}))
            structures.update({f'scan_{k}': v for k, v in out.items()})
        path = sampling['path']
        if path['to']:
            ends = [self._end_structure(path[key]) for key in ('from', 'to')]
            settings = {k: path[k] for k in ('images', 'rattle_stdev', 'seed')}
            out = path_structure(ends[0], ends[1], orm.Dict(settings))
            structures.update({f'path_{k}': v for k, v in out.items()})
        self.ctx.initial = structures
        self.report(f'sampled {len(structures)} structures to label')

    def _end_structure(self, path: str | None) -> orm.StructureData:
        """An end of the sampling path: the system, or a file in the system's cell."""
        if path is None:
            return self.ctx.structure
        from ase.io import read

        atoms = read(path)
        reference = self.ctx.structure.get_ase()
        if not (atoms.pbc.any() and atoms.cell.volume > 0):
            atoms.set_cell(reference.cell)
            atoms.center()
            atoms.pbc = reference.pbc
        return orm.StructureData(ase=atoms)

    def _umbrella_options(self) -> dict:
        """The umbrella options of the file over the umbrella protocol (defaults from the schema)."""
        given = _given(self.config['umbrella'], 'refit_rounds')
        protocol = UmbrellaWorkChain.get_protocol_inputs(self.config['umbrella']['protocol'], {'parameters': given})
        return UMBRELLA.validate(protocol['parameters'], 'umbrella')

    def run_active_learning(self):
        """Label the samples and active-learn a committee (exploring in umbrella windows too, if asked)."""
        config = self.config
        overrides = _given(config['active_learning'], 'umbrella_windows')
        if 'committee' in config['training']:
            overrides['committee'] = config['training']['committee']
        builder = ActiveLearningWorkChain.get_builder_from_protocol(
            self.inputs.pw_code,
            self.inputs.mlff_code,
            [self.ctx.structure],
            protocol=config['active_learning']['protocol'],
            overrides=overrides,
            label_overrides=self._label_overrides(),
            train_overrides=self._train_overrides(),
            label_protocol=config['dft']['protocol'],
            train_protocol=config['training']['protocol'],
        )
        builder.structures = dict(self.ctx.initial)
        n_windows = int(config['active_learning'].get('umbrella_windows', 0))
        if n_windows:
            builder.umbrella = orm.Dict(self._exploration_windows(n_windows))
        builder.metadata.call_link_label = 'active_learning'
        return ToContext(active_learning=self.submit(builder))

    def _exploration_windows(self, count: int) -> dict:
        """``count`` windows spread over the umbrella's range, with the umbrella's force constant (internal units)."""
        options = self._umbrella_options()
        cv = self.ctx.cv
        windows, kappa = umbrella_windows(cv, options)
        file_centers = cv.to_file(windows.centers)
        lo, hi = float(file_centers.min()), float(file_centers.max())
        if windows.closed:
            spread = place_windows(cv, start=lo, stop=lo + cv.file_period, count=count)
        else:
            spread = place_windows(cv, start=lo, stop=hi, count=count)
        return {'cv': self.config['system']['cv'], 'centers': [float(c) for c in spread.centers], 'kappa': kappa}

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

    def should_run_umbrella(self):
        """Until the umbrella sampling ran with a trusted potential (or the refits are spent)."""
        return not self.ctx.umbrella_done

    def run_umbrella(self):
        """Umbrella sampling along the CV with the current potential."""
        umbrella = self.config['umbrella']
        overrides = _given(umbrella, 'refit_rounds')
        overrides['seed'] = int(overrides.get('seed', 0)) + self.ctx.refits
        builder = UmbrellaWorkChain.get_builder_from_protocol(
            self.inputs.mlff_code,
            self.ctx.potential,
            self.ctx.structure,
            self.config['system']['cv'],
            protocol=umbrella['protocol'],
            overrides=overrides,
        )
        builder.metadata.call_link_label = f'umbrella_{self.ctx.refits}'
        return ToContext(umbrella=self.submit(builder))

    def inspect_umbrella(self):
        """Keep the PMF; find windows whose committee deviation exceeds the upper trust level."""
        node = self.ctx.umbrella
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_UMBRELLA_FAILED.format(message=f'exit {node.exit_status}: {node.exit_message}')
        overlap = node.outputs.overlap
        deviation = overlap.get_array('max_force_deviation')
        upper = self._trust('trust_upper')
        untrusted = [float(c) for c, d in zip(overlap.get_array('centers'), deviation, strict=True) if d >= upper]
        dropped = node.outputs.dropped_windows.get_list() if 'dropped_windows' in node.outputs else []
        self.ctx.untrusted = untrusted + list(dropped)  # windows that kept blowing up need labels most of all
        self.report(
            f'umbrella: {len(untrusted)} of {len(deviation)} windows exceed the trust level {upper} eV/Å '
            f'(largest deviation {float(deviation.max()):.3f} eV/Å); {len(dropped)} left out after blowing up'
        )
        if not self.ctx.untrusted or self.ctx.refits >= self.config['umbrella'].get('refit_rounds', 1):
            self.ctx.umbrella_done = True
        return None

    def _trust(self, key: str):
        return self.ctx.active_learning.inputs[key].value

    def should_refit(self):
        """Whether untrusted windows go back to DFT before the final PMF."""
        return not self.ctx.umbrella_done

    def label_untrusted(self):
        """Select diverse frames of the umbrella MD above the lower trust level and label them with pw.x."""
        runs = {}
        for md in self.ctx.umbrella.called:
            if md.process_label != 'MdBaseWorkChain' or not md.is_finished_ok:
                continue
            key = f'{md.pk}'
            runs[f'deviations_{key}'] = md.outputs.deviations
            for r, trajectory in md.outputs.trajectories.items():
                runs[f'trajectory_{key}_{r}'] = trajectory
        settings = {
            'trust_lower': self._trust('trust_lower'),
            'trust_upper': 10.0 * self._trust('trust_upper'),  # beyond the trust region is what needs labels here
            'max_candidates': self.ctx.active_learning.inputs.max_candidates.value,
            'seed': 100 + self.ctx.refits,
        }
        selection = select_frames(settings=orm.Dict(settings), **runs)
        candidates = {k: v for k, v in selection.items() if k.startswith('candidate_')}
        self.ctx.refit_history.append({'round': self.ctx.refits + 1, **selection['statistics'].get_dict()})
        return ToContext(refit_labels=self._label(candidates, f'label_umbrella_{self.ctx.refits}'))

    def retrain(self):
        """Merge the new labels and retrain the committee."""
        labels = self.ctx.refit_labels
        if 'dataset' in labels.outputs:
            self.ctx.dataset = merge_datasets(a=self.ctx.dataset, b=labels.outputs.dataset)
        self.ctx.refit_history[-1]['n_labelled'] = (
            labels.outputs.dataset.n_structures if 'dataset' in labels.outputs else 0
        )
        self.ctx.refit_history[-1]['n_label_failures'] = (
            len(labels.outputs.failed.get_dict()) if 'failed' in labels.outputs else 0
        )
        overrides = self._train_overrides()
        parameters = overrides['train']['parameters']
        parameters['model'] = {
            **parameters.get('model', {}),
            'committee': self.ctx.active_learning.inputs.committee.value,
        }
        builder = TrainBaseWorkChain.get_builder_from_protocol(
            self.inputs.mlff_code, self.ctx.dataset, protocol=self.config['training']['protocol'], overrides=overrides
        )
        builder.metadata.call_link_label = f'retrain_{self.ctx.refits}'
        return ToContext(retrain=self.submit(builder))

    def inspect_retrain(self):
        """Use the refitted potential for the next umbrella round."""
        node = self.ctx.retrain
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_REFIT_FAILED.format(message=f'exit {node.exit_status}: {node.exit_message}')
        self.ctx.potential = node.outputs.potential
        self.ctx.refits += 1
        return None

    def run_check(self):
        """Relax the structure with the potential at fixed CV values, then label those geometries with pw.x."""
        check = self.config['check']
        if not check['values']:
            return None
        settings = {'cv': self.config['system']['cv'], 'values': check['values'], 'fmax': check['fmax']}
        out = relaxed_cv_scan(self.ctx.potential, self.ctx.structure, orm.Dict(settings))
        self.ctx.scan_energies = out['energies']
        structures = {frame_key(k): out[frame_key(k)] for k in range(len(check['values']))}
        return ToContext(scan_labels=self._label(structures, 'label_scan', max_failure_fraction=0.0))

    def inspect_check(self):
        """Compare the potential with pw.x along the relaxed scan."""
        if 'scan_labels' not in self.ctx:
            return None
        node = self.ctx.scan_labels
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_SCAN_LABELS_FAILED.format(message=node.exit_message)
        self.ctx.scan = compare_scan(self.ctx.scan_energies, node.outputs.dataset)
        diff = self.ctx.scan.base.attributes.get('max_abs_difference_kcal_mol')
        self.report(f'relaxed scan: potential vs pw.x differ by at most {diff:.2f} kcal/mol')
        return None

    def results(self):
        """Attach every result: the PMF in the CV's file unit, its states and every transition between them."""
        self.out('dataset', self.ctx.dataset)
        self.out('potential', self.ctx.potential)
        history = dict(self.ctx.history)
        history['umbrella_refits'] = self.ctx.refit_history
        self.out('history', orm.Dict(history).store())
        creator = self.ctx.potential.creator
        if creator is not None and 'learning_curve' in creator.outputs:
            self.out('learning_curve', creator.outputs.learning_curve)
        umbrella = self.ctx.umbrella
        if 'pmf' in umbrella.outputs:
            config = self.config
            settings = {
                'cv': config['system']['cv'],
                'temperature': float(umbrella.outputs.pmf.base.attributes.get('temperature')),
                'states': config['states'],
                'transitions': config['transitions'],
                'experiment_kcal_mol': config['reference']['experiment_kcal_mol'],
            }
            numbers = pmf_states(umbrella.outputs.pmf, orm.Dict(settings))
            for key in ('pmf', 'barriers', 'rates'):
                self.out(key, numbers[key])
            self.out('overlap', umbrella.outputs.overlap)
            self._report_barriers(numbers['barriers'].get_dict())
        if 'scan' in self.ctx:
            self.out('scan', self.ctx.scan)
        return None

    def _report_barriers(self, barriers: dict) -> None:
        for name, t in barriers.get('transitions', {}).items():
            self.report(
                f'transition {name}: forward {t["forward_kcal_mol"]:.2f} +- {t["forward_error_kcal_mol"]:.2f}, '
                f'backward {t["backward_kcal_mol"]:.2f} +- {t["backward_error_kcal_mol"]:.2f} kcal/mol'
            )
        for warning in barriers.get('warnings', []):
            self.report(f'warning: {warning}')


def _write_structure(structure) -> str:
    """A structure object (StructureData, ase.Atoms, pymatgen) written to a temporary extxyz file; its path."""
    import tempfile

    from ase.io import write

    from aiida_mlff.core.structures import to_atoms

    atoms = structure.get_ase() if isinstance(structure, orm.StructureData) else to_atoms(structure)
    handle = tempfile.NamedTemporaryFile(suffix='.extxyz', delete=False)  # noqa: SIM115 (kept for the work chain)
    handle.close()
    write(handle.name, atoms, format='extxyz')
    return handle.name
