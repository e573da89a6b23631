"""``mlff.campaign``: from a molecule to a free-energy profile with error band, traceable to every DFT label.

sample (rattles, dihedral scan) -> label with pw.x and active-learn a committee (``mlff.active_learning``) ->
umbrella sampling along the CV (``mlff.umbrella``), handing untrusted windows back for labels and a refit ->
WHAM -> PMF, barriers, rates -> the potential's relaxed scan checked against pw.x single points.
"""

from __future__ import annotations

import math

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mlff.calculations.campaign import campaign_numbers, compare_scan, relaxed_dihedral_scan
from aiida_mlff.calculations.functions import (
    dihedral_scan_structure,
    frame_key,
    merge_datasets,
    rattle_structure,
    select_frames,
)
from aiida_mlff.data.dataset import TrainingSetData
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows.active_learning.base import ActiveLearningWorkChain
from aiida_mlff.workflows.campaign.config import CampaignConfigError, validate_campaign
from aiida_mlff.workflows.dft.label import DftLabelWorkChain
from aiida_mlff.workflows.train.base import TrainBaseWorkChain
from aiida_mlff.workflows.umbrella.base import UmbrellaWorkChain

__all__ = ['CampaignWorkChain', 'build_structure']


def build_structure(config: dict):
    """The campaign's molecule (``ase.Atoms``) centred in its periodic box."""
    system = config['system']
    if system.get('molecule'):
        from ase.build import molecule

        atoms = molecule(system['molecule'])
    else:
        from ase.io import read

        atoms = read(system['file'])
    box = float(system['box'])
    atoms.set_cell([box, box, box])
    atoms.center()
    atoms.pbc = True
    return atoms


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
            cls.run_relaxed_scan,
            cls.inspect_scan,
            cls.results,
        )
        spec.output('dataset', valid_type=TrainingSetData)
        spec.output('potential', valid_type=PotentialData)
        spec.output('history', valid_type=orm.Dict)
        spec.output('learning_curve', valid_type=orm.ArrayData, required=False)
        spec.output('pmf', valid_type=orm.XyData, required=False, help='x: dihedral (degrees); y: eV.')
        spec.output('overlap', valid_type=orm.ArrayData, required=False)
        spec.output('barriers', valid_type=orm.Dict, required=False)
        spec.output('rates', valid_type=orm.Dict, required=False)
        spec.output('scan', valid_type=orm.ArrayData, required=False, help='Relaxed scan: potential vs pw.x.')
        spec.exit_code(401, 'ERROR_ACTIVE_LEARNING_FAILED', message='Active learning failed: {message}')
        spec.exit_code(402, 'ERROR_UMBRELLA_FAILED', message='Umbrella sampling failed: {message}')
        spec.exit_code(403, 'ERROR_SCAN_LABELS_FAILED', message='The pw.x check of the relaxed scan failed: {message}')
        spec.exit_code(404, 'ERROR_REFIT_FAILED', message='Refitting on untrusted umbrella frames failed: {message}')

    # -------------------------------------------------------------------------------------------------- helpers
    @property
    def config(self) -> dict:
        """The validated campaign, defaults filled in."""
        return validate_campaign(self.inputs.config.get_dict())

    def _train_overrides(self) -> dict:
        t = self.config['training']
        keys = (
            'model',
            'epochs',
            'patience',
            'batch_size',
            'learning_rate',
            'energy_weight',
            'forces_weight',
            'lr_patience',
            'weight_decay',
            'polish_steps',
            'precision',
        )
        parameters = {key: t[key] for key in keys if key in t}
        parameters['device'] = t.get('device', 'auto')
        return {'train': {'parameters': parameters}}

    def _label_overrides(self) -> dict:
        d = self.config['dft']
        overrides = {'max_concurrent': d['max_concurrent'], 'max_failure_fraction': d['max_failure_fraction']}
        if 'pseudo_family' in self.inputs:
            overrides['pseudo_family'] = self.inputs.pseudo_family.value
        return overrides

    # -------------------------------------------------------------------------------------------------- outline
    def setup(self):
        """Build the structure and remember the settings."""
        self.ctx.structure = orm.StructureData(ase=build_structure(self.config))
        self.ctx.refits = 0
        self.ctx.umbrella_done = False
        self.ctx.refit_history = []

    def sample(self):
        """Rattles and a dihedral scan of the molecule: the first structures to label."""
        sampling = self.config['sampling']
        cv = self.config['system']['cv']
        structures = {}
        rattle = sampling['rattle']
        if rattle['n']:
            out = rattle_structure(
                self.ctx.structure, orm.Int(rattle['n']), orm.Float(rattle['stdev']), orm.Int(rattle['seed'])
            )
            structures.update({f'rattle_{k}': v for k, v in out.items()})
        scan = sampling['dihedral_scan']
        if scan.get('angles'):
            out = dihedral_scan_structure(
                self.ctx.structure,
                orm.List(cv['atoms']),
                orm.List([float(a) for a in scan['angles']]),
                orm.Float(scan['rattle_stdev']),
                orm.Int(scan['seed']),
            )
            structures.update({f'scan_{k}': v for k, v in out.items()})
        self.ctx.initial = structures
        self.report(f'sampled {len(structures)} structures to label')

    def run_active_learning(self):
        """Label the samples and active-learn a committee (exploring in umbrella windows too, if asked)."""
        config = self.config
        al = config['active_learning']
        training = config['training']
        overrides = {
            key: al[key]
            for key in ('max_iterations', 'max_candidates', 'trust_lower', 'trust_upper', 'stop_rule', 'explore')
        }
        overrides['committee'] = training['committee']
        overrides['explore'] = {**al['explore'], 'device': training.get('device', 'auto')}
        seeds = [self.ctx.structure]
        builder = ActiveLearningWorkChain.get_builder_from_protocol(
            self.inputs.pw_code,
            self.inputs.mlff_code,
            seeds,
            protocol=config['dft']['protocol'],
            overrides=overrides,
            label_overrides=self._label_overrides(),
            train_overrides=self._train_overrides(),
        )
        builder.structures = dict(self.ctx.initial)
        cv = config['system']['cv']
        n_windows = int(al.get('umbrella_windows', 0))
        if n_windows and cv['type'] == 'dihedral':
            centers = [-math.pi + 2 * math.pi * (k + 0.5) / n_windows for k in range(n_windows)]
            builder.umbrella = orm.Dict({'cv': cv, 'centers': centers, 'kappa': float(config['umbrella']['kappa'])})
        builder.metadata.call_link_label = 'active_learning'
        return ToContext(active_learning=self.submit(builder))

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
        config = self.config
        u = config['umbrella']
        cv = config['system']['cv']
        windows = dict(u['windows'])
        degrees = cv['type'] in ('dihedral', 'angle')
        if degrees:
            if 'centers' in windows:
                windows['centers'] = [math.radians(c) for c in windows['centers']]
            else:
                windows['start'], windows['stop'] = math.radians(windows['start']), math.radians(windows['stop'])
        windows['kappa'] = float(u['kappa'])
        md = {
            'temperature': float(u['temperature']),
            'timestep': float(u['timestep']),
            'equilibration_steps': int(u['equilibration_steps']),
            'production_steps': int(u['production_steps']),
            'stride': 10,
            'friction': 0.02,
            'device': u.get('device', 'auto'),
            'seed': self.ctx.refits,
        }
        builder = UmbrellaWorkChain.get_builder_from_protocol(
            self.inputs.mlff_code,
            self.ctx.potential,
            self.ctx.structure,
            cv,
            windows,
            protocol='fast',
            overrides={'md': md, 'bins': u['bins'], 'bootstrap': u['bootstrap'], 'mode': u['mode']},
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
        upper = self.config['active_learning']['trust_upper']
        untrusted = [float(c) for c, d in zip(overlap.get_array('centers'), deviation, strict=True) if d >= upper]
        dropped = node.outputs.dropped_windows.get_list() if 'dropped_windows' in node.outputs else []
        self.ctx.untrusted = untrusted + list(dropped)  # windows that kept blowing up need labels most of all
        self.report(
            f'umbrella: {len(untrusted)} of {len(deviation)} windows exceed the trust level {upper} eV/Å '
            f'(largest deviation {float(deviation.max()):.3f} eV/Å); {len(dropped)} left out after blowing up'
        )
        if not self.ctx.untrusted or self.ctx.refits >= self.config['umbrella']['refit_rounds']:
            self.ctx.umbrella_done = True
        return None

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
        al = self.config['active_learning']
        settings = {
            'trust_lower': al['trust_lower'],
            'trust_upper': 10.0 * al['trust_upper'],  # beyond the trust region is exactly what needs labels here
            'max_candidates': al['max_candidates'],
            'seed': 100 + self.ctx.refits,
        }
        selection = select_frames(settings=orm.Dict(settings), **runs)
        candidates = {k: v for k, v in selection.items() if k.startswith('candidate_')}
        self.ctx.refit_history.append({'round': self.ctx.refits + 1, **selection['statistics'].get_dict()})
        builder = DftLabelWorkChain.get_builder_from_protocol(
            self.inputs.pw_code,
            candidates,
            protocol=self.config['dft']['protocol'],
            overrides=self._label_overrides(),
            molecule=True,
        )
        builder.metadata.call_link_label = f'label_umbrella_{self.ctx.refits}'
        return ToContext(refit_labels=self.submit(builder))

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
        overrides['train']['parameters']['model'] = {
            **overrides['train']['parameters']['model'],
            'committee': self.config['training']['committee'],
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

    def run_relaxed_scan(self):
        """Relax the molecule with the potential along the CV, then label those geometries with pw.x."""
        angles = self.config['check']['relaxed_scan_angles']
        cv = self.config['system']['cv']
        if not angles or cv['type'] != 'dihedral':
            return None
        out = relaxed_dihedral_scan(
            self.ctx.potential, self.ctx.structure, orm.Dict({'atoms': cv['atoms'], 'angles': angles})
        )
        self.ctx.scan_energies = out['energies']
        structures = {frame_key(k): out[frame_key(k)] for k in range(len(angles))}
        builder = DftLabelWorkChain.get_builder_from_protocol(
            self.inputs.pw_code,
            structures,
            protocol=self.config['dft']['protocol'],
            overrides={**self._label_overrides(), 'max_failure_fraction': 0.0},
            molecule=True,
        )
        builder.metadata.call_link_label = 'label_scan'
        return ToContext(scan_labels=self.submit(builder))

    def inspect_scan(self):
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
        """Attach every result."""
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
            settings = {
                'temperature': float(self.config['umbrella']['temperature']),
                'experiment_kcal_mol': self.config['reference'].get('experiment_kcal_mol', {}),
            }
            numbers = campaign_numbers(umbrella.outputs.pmf, orm.Dict(settings))
            for key in ('pmf', 'barriers', 'rates'):
                self.out(key, numbers[key])
            self.out('overlap', umbrella.outputs.overlap)
            b = numbers['barriers']
            self.report(
                f'barriers: trans {b["trans"]["kcal_mol"]:.2f} kcal/mol, cis {b["cis"]["kcal_mol"]:.2f} kcal/mol'
            )
        if 'scan' in self.ctx:
            self.out('scan', self.ctx.scan)
        return None
