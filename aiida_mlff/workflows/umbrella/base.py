"""``mlff.umbrella``: umbrella sampling along one collective variable, then WHAM -> PMF, barrier and rate."""

from __future__ import annotations

import math

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, while_

from aiida_mlff.calculations.wham import wham_pmf
from aiida_mlff.core.files import CV_ATOMS
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows.md.base import MdBaseWorkChain
from aiida_mlff.workflows.protocols import ProtocolMixin

__all__ = ['UmbrellaWorkChain', 'window_centers']

PERIODIC = {'dihedral': 2 * math.pi}
MD_KEYS = {'ensemble', 'timestep', 'temperature', 'friction', 'stride', 'seed', 'dtype', 'device'}


def window_centers(windows: dict, cv_type: str) -> tuple[list[float], float]:
    """Return ``(centres, kappa)`` from ``{'centers': [...]}`` or ``{'start', 'stop', 'count'}`` plus ``kappa``.

    For a periodic CV (dihedral) a range that spans the full period does not repeat its end point.
    """
    if 'kappa' not in windows:
        raise ValueError('`windows.kappa` (eV per CV unit squared) is required')
    kappa = float(windows['kappa'])
    if not kappa > 0:
        raise ValueError(f'`windows.kappa` must be positive, got {kappa}')
    if 'centers' in windows:
        centers = [float(c) for c in windows['centers']]
    elif {'start', 'stop', 'count'} <= set(windows):
        count = int(windows['count'])
        if count < 2:
            raise ValueError(f'`windows.count` must be at least 2, got {count}')
        start, stop = float(windows['start']), float(windows['stop'])
        period = PERIODIC.get(cv_type)
        full = period is not None and abs(abs(stop - start) - period) < 1e-9
        centers = list(np.linspace(start, stop, count, endpoint=not full))
    else:
        raise ValueError('`windows` needs `centers`, or `start`, `stop` and `count`')
    if len(centers) < 2:
        raise ValueError('umbrella sampling needs at least two windows')
    return centers, kappa


def validate_inputs(value, _) -> str | None:
    """Check the CV, the windows and the MD settings before anything runs."""
    cv = value['cv'].get_dict()
    if cv.get('type') not in CV_ATOMS:
        return f'`cv.type` must be one of {sorted(CV_ATOMS)}, got {cv.get("type")!r}'
    atoms = cv.get('atoms', [])
    n_atoms = len(value['structure'].sites)
    if len(atoms) != CV_ATOMS[cv['type']] or any((not isinstance(a, int)) or a < 0 or a >= n_atoms for a in atoms):
        return f'`cv.atoms` must be {CV_ATOMS[cv["type"]]} indices below {n_atoms} for a {cv["type"]}, got {atoms}'
    try:
        window_centers(value['windows'].get_dict(), cv['type'])
    except ValueError as exception:
        return str(exception)
    md = value['md'].get_dict()
    for key in ('equilibration_steps', 'production_steps'):
        if not isinstance(md.get(key), int) or md[key] < 0 or (key == 'production_steps' and md[key] == 0):
            return f'`md.{key}` must be a {"positive" if key == "production_steps" else "non-negative"} integer'
    unknown = set(md) - MD_KEYS - {'equilibration_steps', 'production_steps'}
    if unknown:
        return f'unknown `md` settings {sorted(unknown)}'
    if value['mode'].value not in ('batched', 'parallel'):
        return f"`mode` must be 'batched' or 'parallel', got {value['mode'].value!r}"
    potential = value['potential']
    missing = sorted({k.symbol for k in value['structure'].kinds} - set(potential.elements))
    if missing:
        return f'the structure has {missing}, which the potential ({potential.elements}) does not know'
    return None


class UmbrellaWorkChain(ProtocolMixin, WorkChain):
    """Run every umbrella window (in one batched MD job, or one job per window), WHAM, and refine poor overlap.

    Where neighbouring windows overlap less than ``min_overlap``, a window is added half-way between them and only
    the new windows run; WHAM then uses every window. At most ``max_refinements`` such rounds.
    """

    _protocol_file = 'umbrella/base.yaml'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('code', valid_type=orm.AbstractCode, help='The `mlff-run` code.')
        spec.input('potential', valid_type=PotentialData)
        spec.input('structure', valid_type=orm.StructureData, help='Starting structure of every window.')
        spec.input(
            'cv',
            valid_type=orm.Dict,
            help="{'type': 'dihedral', 'angle', 'distance' or 'distance_difference', 'atoms': [indices]}.",
        )
        spec.input(
            'windows',
            valid_type=orm.Dict,
            help="{'centers': [...]} or {'start', 'stop', 'count'}, plus 'kappa' (eV per CV unit^2; radians).",
        )
        spec.input('md', valid_type=orm.Dict, help='MD settings, with equilibration_steps and production_steps.')
        spec.input('mode', valid_type=orm.Str, default=lambda: orm.Str('batched'))
        spec.input('bins', valid_type=orm.Int, default=lambda: orm.Int(72))
        spec.input('bootstrap', valid_type=orm.Int, default=lambda: orm.Int(50))
        spec.input('max_refinements', valid_type=orm.Int, default=lambda: orm.Int(2))
        spec.input('min_overlap', valid_type=orm.Float, default=lambda: orm.Float(0.03))
        spec.input(
            'max_reruns',
            valid_type=orm.Int,
            default=lambda: orm.Int(2),
            help='Rounds in which windows that blew up run again (first with new velocities, then also with half '
            'the time step); windows still unstable after that are left out of WHAM and named in the report.',
        )
        spec.input('basins', valid_type=orm.List, required=False, help='Two CV ranges for the barrier.')
        spec.input('options', valid_type=orm.Dict, required=False, help='metadata.options of the MD jobs.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.has_new_windows)(cls.run_windows, cls.analyse),
            cls.results,
        )
        spec.output('pmf', valid_type=orm.XyData, help='Free energy, error band, and each member (eV).')
        spec.output('overlap', valid_type=orm.ArrayData, help='Overlap matrix and neighbour overlaps.')
        spec.output('barrier', valid_type=orm.Float, required=False, help='eV; kcal/mol in attributes.')
        spec.output('rate', valid_type=orm.Float, required=False, help='TST rate, s^-1.')
        spec.output(
            'dropped_windows',
            valid_type=orm.List,
            required=False,
            help='Centres (CV units) of windows left out because they kept blowing up.',
        )
        spec.exit_code(401, 'ERROR_MD_FAILED', message='The umbrella MD failed: {message}')

    @classmethod
    def get_builder_from_protocol(
        cls, code, potential, structure, cv: dict, windows: dict, protocol=None, overrides=None, options=None
    ):
        """Return a builder filled from a protocol (fast, balanced, stringent)."""
        if isinstance(code, str):
            code = orm.load_code(code)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.code = code
        builder.potential = potential
        builder.structure = structure
        builder.cv = orm.Dict(cv)
        builder.windows = orm.Dict(windows)
        builder.md = orm.Dict(inputs['md'])
        builder.mode = orm.Str(inputs['mode'])
        builder.bins = orm.Int(inputs['bins'])
        builder.bootstrap = orm.Int(inputs['bootstrap'])
        builder.max_refinements = orm.Int(inputs['max_refinements'])
        builder.min_overlap = orm.Float(inputs['min_overlap'])
        builder.options = orm.Dict({**inputs['options'], **(options or {})})
        return builder

    def setup(self):
        """Place the first windows."""
        cv = self.inputs.cv.get_dict()
        centers, self.ctx.kappa = window_centers(self.inputs.windows.get_dict(), cv['type'])
        self.ctx.new_windows = centers
        self.ctx.all_windows = []
        self.ctx.runs = []
        self.ctx.refinements = 0
        self.ctx.attempt = 0  # 0: first run of the new windows; k > 0: k-th rerun of windows that blew up
        self.ctx.latest = []  # run keys of the last round: where to look for windows that blew up
        self.ctx.exclude = {}  # run key -> replicas left out of WHAM (blown up)
        self.ctx.dropped = []  # centres of windows given up on

    def has_new_windows(self):
        """Whether windows are waiting to run."""
        return bool(self.ctx.new_windows)

    def _md_inputs(self, centers: list[float], label: str) -> dict:
        md = self.inputs.md.get_dict()
        cv = self.inputs.cv.get_dict()
        parameters = {key: md[key] for key in MD_KEYS if key in md}
        parameters['steps'] = md['equilibration_steps'] + md['production_steps']
        attempt = self.ctx.attempt
        if attempt:  # a rerun of windows that blew up: new velocities and noise, then also half the time step
            parameters['seed'] = int(parameters.get('seed', 0)) + 1000 * attempt
            if attempt >= 2:
                parameters['timestep'] = 0.5 * float(parameters.get('timestep', 0.5))
                parameters['steps'] *= 2
                parameters['stride'] = 2 * int(parameters.get('stride', 10))
        parameters['checkpoint_every'] = max(parameters.get('stride', 10), parameters['steps'] // 4)
        parameters['biases'] = [{'cv': cv, 'centers': [float(c) for c in centers], 'kappa': self.ctx.kappa}]
        metadata = {'call_link_label': label}
        inputs = {
            'md': {
                'code': self.inputs.code,
                'potential': self.inputs.potential,
                'structures': {'start': self.inputs.structure},
                'parameters': orm.Dict(parameters),
                'metadata': {'options': self.inputs.options.get_dict()} if 'options' in self.inputs else {},
            },
            'max_iterations': orm.Int(3),
            'tolerate_unstable': orm.Bool(True),  # windows that blow up are rerun on their own (analyse)
            'metadata': metadata,
        }
        return inputs

    def run_windows(self):
        """Run the new windows: all in one job (batched) or one job each (parallel)."""
        centers = list(self.ctx.new_windows)
        self.ctx.new_windows = []
        if self.ctx.attempt == 0:
            self.ctx.all_windows.extend(centers)
        round_ = f'{self.ctx.refinements}_rerun{self.ctx.attempt}' if self.ctx.attempt else str(self.ctx.refinements)
        futures = {}
        if self.inputs.mode.value == 'batched':
            futures[f'umbrella_{round_}_all'] = self.submit(
                MdBaseWorkChain, **self._md_inputs(centers, f'windows_round_{round_}')
            )
        else:
            for k, c in enumerate(centers):
                futures[f'umbrella_{round_}_{k:03d}'] = self.submit(
                    MdBaseWorkChain, **self._md_inputs([c], f'window_round_{round_}_{k:03d}')
                )
        self.ctx.runs.extend(futures)
        self.ctx.latest = list(futures)
        what = f'{len(centers)} windows'
        if self.ctx.attempt:
            what = f'rerun {self.ctx.attempt} of {what} that blew up'
        self.report(f'round {round_}: {what} in {len(futures)} MD job(s) ({self.inputs.mode.value})')
        return ToContext(**futures)

    def analyse(self):
        """WHAM over every window so far; place new windows where neighbours overlap too little."""
        runs, rerun = {}, []
        for key in self.ctx.runs:
            node = self.ctx[key]
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MD_FAILED.format(
                    message=f'{node.process_label}<{node.pk}> exit {node.exit_status}: {node.exit_message}'
                )
            runs[f'colvars_{key}'] = node.outputs.colvars
            runs[f'deviations_{key}'] = node.outputs.deviations
            if key in self.ctx.latest:  # a run of the last round: its windows that blew up are left out, rerun
                status = node.outputs.status.get_dict().get('status', []) if 'status' in node.outputs else []
                blown = [r for r, s in enumerate(status) if s == 'blown_up']
                if blown:
                    self.ctx.exclude[key] = blown
                    centres = node.outputs.colvars.get_array('centers')[:, 0]
                    rerun += [float(centres[r]) for r in blown]
        self.ctx.latest = []
        rerun = sorted(set(rerun))
        if rerun:
            if self.ctx.attempt < self.inputs.max_reruns.value:
                self.ctx.attempt += 1
                self.ctx.new_windows = rerun
                self.report(f'{len(rerun)} windows blew up; running them again: {np.round(rerun, 3)}')
                return None
            self.ctx.dropped.extend(rerun)
            self.report(f'{len(rerun)} windows still blew up after {self.ctx.attempt} reruns; left out: {rerun}')
        self.ctx.attempt = 0
        md = self.inputs.md.get_dict()
        cv = self.inputs.cv.get_dict()
        settings = {
            'kappa': self.ctx.kappa,
            'temperature': float(md.get('temperature', 300.0)),
            'timestep': float(md.get('timestep', 0.5)),
            'equilibration_steps': md['equilibration_steps'],
            'bins': self.inputs.bins.value,
            'bootstrap': self.inputs.bootstrap.value,
            'period': PERIODIC.get(cv['type']),
            'min_overlap': self.inputs.min_overlap.value,
            'name': f'{cv["type"]}({",".join(map(str, cv["atoms"]))})',
            'unit': 'Å' if cv['type'] in ('distance', 'distance_difference') else 'rad',
        }
        if 'basins' in self.inputs:
            settings['basins'] = self.inputs.basins.get_list()
        if self.ctx.exclude:
            settings['exclude'] = dict(self.ctx.exclude)
        self.ctx.wham = wham_pmf(settings=orm.Dict(settings), **runs)
        low = self.ctx.wham['overlap'].base.attributes.get('low_overlap_pairs', [])
        if low and self.ctx.refinements < self.inputs.max_refinements.value:
            self.ctx.refinements += 1
            period = settings['period']
            new = []
            for a, b in low:
                if period is not None and b < a:
                    b += period
                mid = 0.5 * (a + b)
                if period is not None:
                    mid = (mid + period / 2) % period - period / 2
                new.append(mid)
            self.ctx.new_windows = new
            self.report(f'{len(low)} neighbouring windows overlap too little: adding windows at {np.round(new, 3)}')
        elif low:
            self.report(f'overlap still too low between {low} after {self.ctx.refinements} refinements')
        return None

    def results(self):
        """Attach the PMF, overlap, barrier and rate."""
        for key in ('pmf', 'overlap', 'barrier', 'rate'):
            if key in self.ctx.wham:
                self.out(key, self.ctx.wham[key])
        if self.ctx.dropped:
            self.report(f'windows left out because they kept blowing up: {np.round(self.ctx.dropped, 3).tolist()}')
            self.out('dropped_windows', orm.List(sorted(self.ctx.dropped)).store())
        barrier = self.ctx.wham.get('barrier')
        if barrier is not None:
            self.report(f'barrier {barrier.value:.4f} eV ({barrier.base.attributes.get("kcal_mol"):.2f} kcal/mol)')
