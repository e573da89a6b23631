"""``mlff.umbrella``: umbrella sampling along one collective variable, then WHAM -> PMF, barrier and rate.

With ``exchange: {every: N}`` the windows of a batch swap configurations with their neighbours every N steps
(replica-exchange umbrella sampling, REUS); WHAM/MBAR still see per-window samples, because a swap moves the
configuration, not the bias. Windows added later (refinement, reruns) exchange among the windows of their own batch.

Window placement comes from ``aiida_mlff.core.windows``; periods, units and minimum images from the CV
(``aiida_mlff.core.colvars``); the options and their defaults from ``aiida_mlff.core.options.UMBRELLA``. Windows are
given in the CV's file unit (degrees for angles and dihedrals, Å for distances); inside, the engine works in its own
units.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mlff.calculations.surface import umbrella_surface
from aiida_mlff.calculations.wham import wham_pmf
from aiida_mlff.core.colvars import CVSpecError, cv_from_spec, cv_spec_errors
from aiida_mlff.core.fes2d import umbrella_grid
from aiida_mlff.core.md.exchange import grid_pairs
from aiida_mlff.core.options import MD, UMBRELLA
from aiida_mlff.core.wham import KB_EV
from aiida_mlff.core.windows import exchange_pairs, midpoint, place_windows
from aiida_mlff.data.potential import PotentialData
from aiida_mlff.workflows.md.base import MdBaseWorkChain, blown_replicas
from aiida_mlff.workflows.protocols import ProtocolMixin, cv_sampling_builder

__all__ = ['UmbrellaWorkChain', 'umbrella_windows', 'validate_umbrella']

#: options of a window's MD job taken over from the umbrella options as they are
MD_KEYS = tuple(key for key in UMBRELLA if key in MD)


def umbrella_windows(cv, parameters: dict):
    """The windows of ``parameters`` (file units) and their force constant: ``(Windows, kappa)``.

    Without ``kappa`` the force constant is ``3 kT / spacing^2`` (internal units), so that neighbouring windows
    overlap (the bias standard deviation is spacing / sqrt(3)).
    """
    windows = place_windows(cv, **parameters['windows'])
    kappa = parameters.get('kappa')
    if kappa is None:
        centers = np.sort(np.asarray(windows.centers, dtype=float))
        spacing = float(np.median(np.diff(centers)))
        kappa = 3.0 * KB_EV * float(parameters['temperature']) / spacing**2
    return windows, float(kappa)


def second_windows(cv2, parameters: dict):
    """The windows and force constant along the second CV of a 2-D grid (``windows2``, ``kappa2``)."""
    return umbrella_windows(cv2, {**parameters, 'windows': parameters['windows2'], 'kappa': parameters['kappa2']})


def validate_umbrella(
    cv: dict,
    parameters: dict,
    n_atoms: int | None = None,
    cv_where: str = 'cv',
    where: str = 'parameters',
    cv2: dict | None = None,
) -> list[str]:
    """Every problem of a CV spec (and a second one) and umbrella options, each naming its field."""
    errors = cv_spec_errors(cv, where=cv_where, n_atoms=n_atoms)
    if cv2 is not None:
        errors += cv_spec_errors(cv2, where=f'{cv_where}2', n_atoms=n_atoms)
    merged, problems = UMBRELLA.resolve(parameters, where)
    errors += problems
    if merged.get('windows') is None:
        errors.append(f'{where}.windows: give centers, or start, stop and count')
    if cv2 is not None and merged.get('windows2') is None:
        errors.append(f'{where}.windows2: a second CV needs its windows (centers, or start, stop and count)')
    if cv2 is None and merged.get('windows2') is not None:
        errors.append(f'{where}.windows2: given without a second CV (cv2)')
    if errors:
        return errors
    try:
        umbrella_windows(cv_from_spec(cv), merged)
    except (ValueError, CVSpecError) as exception:
        errors.append(f'{where}.windows: {exception}')
    if cv2 is not None:
        try:
            second_windows(cv_from_spec(cv2), merged)
        except (ValueError, CVSpecError) as exception:
            errors.append(f'{where}.windows2: {exception}')
    return errors


def validate_inputs(value, ctx) -> str | None:
    """Check the CV, the windows and the MD settings before anything runs.

    Exposed in a composite that gives the CV, structure and potential itself, the composite checks the windows.
    """
    if 'structure' not in ctx:
        return None
    cv2 = value['cv2'].get_dict() if 'cv2' in value else None
    errors = validate_umbrella(
        value['cv'].get_dict(), value['parameters'].get_dict(), n_atoms=len(value['structure'].sites), cv2=cv2
    )
    potential = value['potential']
    missing = sorted({k.symbol for k in value['structure'].kinds} - set(potential.elements))
    if missing:
        errors.append(f'structure: has {missing}, which the potential ({potential.elements}) does not know')
    return '; '.join(errors) if errors else None


class UmbrellaWorkChain(ProtocolMixin, WorkChain):
    """Run every umbrella window (in one batched MD job, or one job per window), WHAM, and refine poor overlap.

    Where neighbouring windows overlap less than ``min_overlap``, a window is added half-way between them and only
    the new windows run; WHAM then uses every window. At most ``max_refinements`` such rounds. Windows that blow up
    run again on their own (new velocities, then half the time step), at most ``max_reruns`` times, and are left
    out of WHAM and named in ``dropped_windows`` after that.
    """

    _protocol_file = 'umbrella/base.yaml'

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('code', valid_type=orm.AbstractCode, help='The `mlff-run` code.')
        spec.input('potential', valid_type=PotentialData)
        spec.input('structure', valid_type=orm.StructureData, help='Starting structure (windows are pulled from it).')
        spec.input('cv', valid_type=orm.Dict, help="The CV's spec, e.g. {'type': 'dihedral', 'atoms': [2, 0, 1, 3]}.")
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            help='Umbrella options (`aiida_mlff.core.options.UMBRELLA`): windows in the CV file unit, MD, WHAM.',
        )
        spec.input('cv2', valid_type=orm.Dict, required=False, help='A second CV: a 2-D grid of windows (`windows2`).')
        spec.input('options', valid_type=orm.Dict, required=False, help='metadata.options of the MD jobs.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.is_surface)(cls.run_grid, cls.analyse_grid).else_(
                while_(cls.has_new_windows)(cls.run_windows, cls.analyse),
                cls.results,
            ),
        )
        spec.output('pmf', valid_type=orm.XyData, required=False, help='Free energy, error band, each member (eV).')
        spec.output('fes', valid_type=orm.ArrayData, required=False, help='Two CVs: the surface, its basins and paths.')
        spec.output('overlap', valid_type=orm.ArrayData, required=False, help='1-D: overlap matrix and neighbours.')
        spec.output('barrier', valid_type=orm.Float, required=False, help='eV; kcal/mol in attributes.')
        spec.output('rate', valid_type=orm.Float, required=False, help='TST rate, s^-1.')
        spec.output(
            'dropped_windows',
            valid_type=orm.List,
            required=False,
            help='Centres (CV file unit) of windows left out because they kept blowing up.',
        )
        spec.exit_code(401, 'ERROR_MD_FAILED', message='The umbrella MD failed: {message}')
        spec.exit_code(403, 'ERROR_GRID_FAILED', message='No window of the 2-D grid finished: {message}')

    @classmethod
    def get_builder_from_protocol(
        cls, code, potential, structure, cv: dict, protocol=None, overrides=None, options=None, cv2=None
    ):
        """Return a builder filled from a protocol (fast, balanced, stringent); ``overrides`` are umbrella options."""
        return cv_sampling_builder(cls, code, potential, structure, cv, protocol, overrides, options, cv2)

    @property
    def parameters(self) -> dict:
        """The umbrella options, defaults filled in."""
        return UMBRELLA.validate(self.inputs.parameters.get_dict())

    def setup(self):
        """Place the first windows."""
        self.ctx.cv = cv_from_spec(self.inputs.cv.get_dict())
        windows, self.ctx.kappa = umbrella_windows(self.ctx.cv, self.parameters)
        self.ctx.closed = bool(windows.closed)
        self.ctx.new_windows = [float(c) for c in windows.centers]
        self.ctx.all_windows = []
        self.ctx.runs = []
        self.ctx.refinements = 0
        self.ctx.attempt = 0  # 0: first run of the new windows; k > 0: k-th rerun of windows that blew up
        self.ctx.latest = []  # run keys of the last round: where to look for windows that blew up
        self.ctx.exclude = {}  # run key -> replicas left out of WHAM (blown up)
        self.ctx.dropped = []  # centres of windows given up on (internal units)

    def is_surface(self):
        """Whether a second CV makes this a 2-D grid of windows."""
        return 'cv2' in self.inputs

    def run_grid(self):
        """Every window of the 2-D grid in one batched job (neighbours along both CVs exchange, if asked)."""
        p = self.parameters
        cv2 = cv_from_spec(self.inputs.cv2.get_dict())
        first, _ = umbrella_windows(self.ctx.cv, p)
        second, kappa2 = second_windows(cv2, p)
        cx, cy = umbrella_grid(first.centers, second.centers)
        self.ctx.kappa2 = kappa2
        pairs = grid_pairs((len(first.centers), len(second.centers)), (bool(first.closed), bool(second.closed)))
        inputs = self._md_inputs([float(c) for c in cx], 'windows_grid', pairs)
        parameters = inputs['md']['parameters'].get_dict()
        parameters['biases'].append(
            {'cv': self.inputs.cv2.get_dict(), 'centers': [float(c) for c in cy], 'kappa': kappa2}
        )
        parameters['steer_steps'] = 0  # steering pulls along one CV: the grid's windows start from the structure
        inputs['md']['parameters'] = orm.Dict(parameters)
        self.report(f'{len(cx)} windows on a {len(first.centers)} x {len(second.centers)} grid in one MD job')
        return ToContext(grid=self.submit(MdBaseWorkChain, **inputs))

    def analyse_grid(self):
        """WHAM (or MBAR) of the 2-D grid: the surface, its basins and the minimum free-energy paths."""
        node = self.ctx.grid
        outputs = node.outputs if node.is_finished_ok else None
        if outputs is None or 'colvars' not in outputs:
            return self.exit_codes.ERROR_GRID_FAILED.format(message=f'exit {node.exit_status}: {node.exit_message}')
        p = self.parameters
        blown = blown_replicas(outputs)
        if blown:
            self.report(f'{len(blown)} windows of the grid blew up and are left out: {blown}')
        self._report_exchange(node)
        settings = {
            'cvs': [self.inputs.cv.get_dict(), self.inputs.cv2.get_dict()],
            'kappa': [self.ctx.kappa, self.ctx.kappa2],
            'temperature': float(p['temperature']),
            'timestep': float(p['timestep']),
            'equilibration_steps': p['equilibration_steps'],
            'estimator': p['estimator'],
            'bins': p['bins'],
            'bootstrap': p['bootstrap'],
            'exclude': {'grid': blown} if blown else {},
        }
        self.out('fes', umbrella_surface(settings=orm.Dict(settings), colvars_grid=outputs.colvars))
        return None

    def has_new_windows(self):
        """Whether windows are waiting to run."""
        return bool(self.ctx.new_windows)

    def _md_inputs(self, centers: list[float], label: str, pairs: list[tuple[int, int]] | None = None) -> dict:
        """The MD of the windows at ``centers`` (first CV).

        With ``exchange`` on, the replica ``pairs`` may swap (default: neighbours along the CV).
        """
        md = self.parameters
        cv = self.inputs.cv.get_dict()
        parameters = {key: md[key] for key in MD_KEYS}
        parameters['steps'] = md['equilibration_steps'] + md['production_steps']
        attempt = self.ctx.attempt
        if attempt:  # a rerun of windows that blew up: new velocities and noise, then also half the time step
            parameters['seed'] = int(parameters['seed']) + 1000 * attempt
            if attempt >= 2:
                parameters['timestep'] = 0.5 * float(parameters['timestep'])
                parameters['steps'] *= 2
                parameters['stride'] = 2 * int(parameters['stride'])
        parameters['checkpoint_every'] = max(parameters['stride'], parameters['steps'] // 4)
        parameters['biases'] = [{'cv': cv, 'centers': [float(c) for c in centers], 'kappa': self.ctx.kappa}]
        pairs = exchange_pairs(self.ctx.cv, centers) if pairs is None else pairs
        if md['exchange'] is not None and pairs:  # REUS: neighbouring windows of this batch swap configurations
            parameters['exchange'] = {'every': int(md['exchange']['every']), 'pairs': [list(p) for p in pairs]}
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
        if self.parameters['mode'] == 'batched':
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
        self.report(f'round {round_}: {what} in {len(futures)} MD job(s) ({self.parameters["mode"]})')
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
            if key in self.ctx.latest:
                self._report_exchange(node)
            if key in self.ctx.latest:  # a run of the last round: its windows that blew up are left out, rerun
                blown = blown_replicas(node.outputs)
                if blown:
                    self.ctx.exclude[key] = blown
                    centres = node.outputs.colvars.get_array('centers')[:, 0]
                    rerun += [float(centres[r]) for r in blown]
        self.ctx.latest = []
        rerun = sorted(set(rerun))
        cv = self.ctx.cv
        if rerun:
            shown = np.round(cv.to_file(rerun), 3).tolist()
            if self.ctx.attempt < self.parameters['max_reruns']:
                self.ctx.attempt += 1
                self.ctx.new_windows = rerun
                self.report(f'{len(rerun)} windows blew up; running them again: {shown} {cv.file_unit}')
                return None
            self.ctx.dropped.extend(rerun)
            self.report(f'{len(rerun)} windows still blew up after {self.ctx.attempt} reruns; left out: {shown}')
        self.ctx.attempt = 0
        self.ctx.wham = wham_pmf(settings=orm.Dict(self._wham_settings()), **runs)
        low = self.ctx.wham['overlap'].base.attributes.get('low_overlap_pairs', [])
        if low and self.ctx.refinements < self.parameters['max_refinements']:
            self.ctx.refinements += 1
            self.ctx.new_windows = [float(midpoint(cv, a, b)) for a, b in low]
            shown = np.round(cv.to_file(self.ctx.new_windows), 3).tolist()
            self.report(f'{len(low)} neighbouring windows overlap too little: adding windows at {shown} {cv.file_unit}')
        elif low:
            shown = np.round(cv.to_file(np.asarray(low)), 3).tolist()
            self.report(
                f'overlap still too low between {shown} {cv.file_unit} after {self.ctx.refinements} refinements'
            )
        return None

    def _report_exchange(self, node) -> None:
        """Report the replica-exchange acceptance of a batched run (lowest pair first), if it exchanged."""
        exchange = node.outputs.status.get_dict().get('exchange') if 'status' in node.outputs else None
        if not exchange:
            return
        acceptance = np.array([np.nan if a is None else a for a in exchange['acceptance']], dtype=float)
        if not np.isfinite(acceptance).any():
            return
        centres = self.ctx.cv.to_file(node.outputs.colvars.get_array('centers')[:, 0])
        low = int(np.nanargmin(acceptance))
        a, b = exchange['pairs'][low]
        self.report(
            f'replica exchange every {exchange["every"]} steps: acceptance {np.nanmean(acceptance):.2f} on average, '
            f'lowest {acceptance[low]:.2f} between {centres[a]:.4g} and {centres[b]:.4g} {self.ctx.cv.file_unit}'
        )

    def _wham_settings(self) -> dict:
        parameters = self.parameters
        cv = self.ctx.cv
        settings = {
            'kappa': self.ctx.kappa,
            'temperature': float(parameters['temperature']),
            'timestep': float(parameters['timestep']),
            'equilibration_steps': parameters['equilibration_steps'],
            'estimator': parameters['estimator'],
            'bins': parameters['bins'],
            'bootstrap': parameters['bootstrap'],
            'period': cv.period,
            'closed': self.ctx.closed,
            'min_overlap': parameters['min_overlap'],
            'name': cv.name,
            'unit': cv.unit,
        }
        if self.ctx.exclude:
            settings['exclude'] = dict(self.ctx.exclude)
        return settings

    def results(self):
        """Attach the PMF, overlap, barrier and rate."""
        for key in ('pmf', 'overlap', 'barrier', 'rate'):
            if key in self.ctx.wham:
                self.out(key, self.ctx.wham[key])
        if self.ctx.dropped:
            dropped = sorted(float(x) for x in self.ctx.cv.to_file(self.ctx.dropped))
            self.report(f'windows left out because they kept blowing up: {np.round(dropped, 3).tolist()}')
            self.out('dropped_windows', orm.List(dropped).store())
