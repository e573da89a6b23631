"""The options of every task, each defined once: default, unit, type and check.

One :class:`Schema` per task (``TRAIN``, ``MD``, ``UMBRELLA``, ``ACTIVE_LEARNING``, ``LABEL``). Core functions,
``mlff-run`` job files, CalcJob validation, the protocols (which only override) and the campaign file all read their
defaults and checks from here. :meth:`Schema.resolve` fills defaults and returns every problem at once, each naming
its field (``training.epochs: ...``); an unknown key is an error that suggests the closest known one.

Units: Å, eV, fs, K, eV/Å; umbrella window positions and force constants in the CV's file unit (degrees for angles
and dihedrals, Å for distances).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    'ACTIVE_LEARNING',
    'CONVERGENCE',
    'EXPLORE',
    'LABEL',
    'MD',
    'METADYNAMICS',
    'TRAIN',
    'UMBRELLA',
    'Option',
    'OptionsError',
    'Schema',
    'suggest',
]

Check = Callable[[Any], str | None]


class OptionsError(ValueError):
    """Bad options; ``errors`` lists each one as ``'field: problem'``."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__('; '.join(errors))


def suggest(key: str, known) -> str:
    """``"; did you mean 'x'?"`` for the closest known key, or ``''``."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


@dataclass(frozen=True)
class Option:
    """One option: its default, unit, type and range.

    Attributes
    ----------
    default
        The value used when the option is not given.
    unit
        Unit of the value ('' when dimensionless).
    kind
        'number', 'integer', 'bool', 'choice', 'numbers' (a list of numbers), 'mapping' or 'any'.
    low, high
        Bounds of numbers (``low_open`` / ``high_open``: the bound itself is excluded).
    choices
        Allowed values of a 'choice'.
    nullable
        Whether None is allowed (e.g. 'no limit').
    check
        Extra check of the value: returns a problem or None.
    """

    default: Any
    unit: str = ''
    kind: str = 'number'
    help: str = ''
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nullable: bool = False
    nonempty: bool = False
    check: Check | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None."""
        if value is None:
            return None if self.nullable else 'must be given (got None)'
        if self.kind == 'choice':
            return None if value in self.choices else f'must be one of {list(self.choices)}, got {value!r}'
        if self.kind == 'bool':
            return None if isinstance(value, bool) else f'must be true or false, got {value!r}'
        if self.kind in ('number', 'integer'):
            problem = self._number_problem(value)
        elif self.kind == 'numbers':
            problem = self._numbers_problem(value)
        elif self.kind == 'mapping':
            problem = None if isinstance(value, Mapping) else f'must be a mapping, got {value!r}'
        else:
            problem = None
        if problem is None and self.check is not None:
            problem = self.check(value)
        return problem

    def _number_problem(self, value: Any) -> str | None:
        integer = self.kind == 'integer'
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return f'must be {"an integer" if integer else "a number"}{self._range()}, got {value!r}'
        if not math.isfinite(value):
            return f'must be finite, got {value!r}'
        too_low = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        too_high = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if too_low or too_high:
            return f'must be {"an integer" if integer else "a number"}{self._range()}, got {value!r}'
        return None

    def _numbers_problem(self, value: Any) -> str | None:
        if not isinstance(value, list | tuple):
            return f'must be a list of numbers{self._range()}, got {value!r}'
        if self.nonempty and not value:
            return 'must not be empty'
        bad = [
            v for v in value if Option(None, low=self.low, low_open=self.low_open, high=self.high)._number_problem(v)
        ]
        return f'must be a list of numbers{self._range()}, got {value!r}' if bad else None

    def _range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f'{">" if self.low_open else ">="} {self.low:g}')
        if self.high is not None:
            parts.append(f'{"<" if self.high_open else "<="} {self.high:g}')
        unit = f' {self.unit}' if self.unit and parts else ''
        return (' ' + ' and '.join(parts) + unit) if parts else ''


@dataclass
class Schema:
    """Named options (and nested schemas) of one task.

    Attributes
    ----------
    fields
        Key -> :class:`Option` or nested :class:`Schema`.
    checks
        Checks across fields: ``check(values) -> list of (key, problem)`` on the filled-in values.
    fill
        Whether :meth:`resolve` fills in defaults; False for options that are overrides of a protocol (they are
        checked, and the defaults fill in later, under the protocol's values).
    """

    fields: dict[str, Option | Schema]
    checks: list[Callable[[dict], list[tuple[str, str]]]] = field(default_factory=list)
    help: str = ''
    fill: bool = True

    def __getitem__(self, key: str) -> Option | Schema:
        return self.fields[key]

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def __iter__(self):
        return iter(self.fields)

    def keys(self):
        """The known keys."""
        return self.fields.keys()

    def defaults(self) -> dict[str, Any]:
        """Every default, nested schemas included (a fresh copy)."""
        import copy

        return {
            key: f.defaults() if isinstance(f, Schema) else copy.deepcopy(f.default) for key, f in self.fields.items()
        }

    def resolve(
        self, values: Mapping[str, Any] | None, where: str = '', fill: bool = True
    ) -> tuple[dict[str, Any], list[str]]:
        """Return ``(values with defaults filled in, every problem)``; problems name the field (``where.key``).

        Defaults are filled in only when both ``fill`` and the schema's own ``fill`` are true (and likewise for
        nested schemas: the options below a protocol's overrides stay overrides).
        """
        fill = fill and self.fill
        prefix = f'{where}.' if where else ''
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            return self.defaults(), [f'{where or "options"}: must be a mapping of options, got {values!r}']
        errors: list[str] = []
        merged = self.defaults() if fill else {}
        for key, value in values.items():
            if key not in self.fields:
                errors.append(
                    f'{prefix}{key}: unknown option{suggest(key, self.fields)} (known: {", ".join(self.fields)})'
                )
                continue
            spec = self.fields[key]
            if isinstance(spec, Schema):
                merged[key], nested = spec.resolve(value, f'{prefix}{key}', fill)
                errors.extend(nested)
            else:
                merged[key] = value
                problem = spec.problem(value)
                if problem:
                    errors.append(f'{prefix}{key}: {problem}')
        if not errors:
            filled = {**self.defaults(), **merged}
            for check in self.checks:
                errors.extend(f'{prefix}{key}: {problem}' for key, problem in check(filled))
        return merged, errors

    def validate(self, values: Mapping[str, Any] | None, where: str = '') -> dict[str, Any]:
        """Like :meth:`resolve`, raising :class:`OptionsError` with every problem."""
        merged, errors = self.resolve(values, where)
        if errors:
            raise OptionsError(errors)
        return merged


# ---------------------------------------------------------------------------------------------------- checks
def _model_problem(model: Any) -> str | None:
    """Model hyperparameters are checked against the builder of their architecture (its signature holds them)."""
    import inspect

    from .architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE, ArchitectureError

    name = model.get('architecture', DEFAULT_ARCHITECTURE)
    if name not in ARCHITECTURES:
        return f'architecture {name!r} is not registered{suggest(name, ARCHITECTURES)} (known: {sorted(ARCHITECTURES)})'
    try:
        parameters = inspect.signature(ARCHITECTURES[name]).parameters
    except ArchitectureError as error:
        return str(error)
    allowed = set(parameters) - {'elements', 'seed', 'dtype', 'device'}
    unknown = sorted(set(model) - allowed - {'architecture'})
    if unknown:
        return (
            f'unknown hyperparameter {unknown[0]!r} of {name}{suggest(unknown[0], allowed)} (known: {sorted(allowed)})'
        )
    for key in ('cutoff', 'angular_cutoff'):
        value = model.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            return f'{key} must be a positive number of Å, got {value!r}'
    hidden = model.get('hidden')
    if hidden is not None and (
        not isinstance(hidden, list | tuple) or not hidden or not all(isinstance(h, int) and h > 0 for h in hidden)
    ):
        return f'hidden must be a list of positive layer widths, got {hidden!r}'
    return None


def _train_checks(values: dict) -> list[tuple[str, str]]:
    if values['energy_weight'] == 0 and values['forces_weight'] == 0:
        return [('energy_weight', 'energy_weight and forces_weight cannot both be zero')]
    return []


def _temperatures_problem(value: Any) -> str | None:
    values = value if isinstance(value, list | tuple) else [value]
    if not values or any(isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < 1e5 for t in values):
        return f'must be a temperature in K (>= 0) or a list of them, got {value!r}'
    return None


DEVICE = Option('auto', kind='choice', choices=('auto', 'cpu', 'cuda'), help='auto: CUDA when present, else CPU')
DTYPE = Option('float32', kind='choice', choices=('float32', 'float64'), help='precision of the model and the MD')
SEED = Option(0, kind='integer', low=0, help='random seed')
MAX_TIMESTEP_FS = 5.0  # beyond this no atomistic MD with hydrogens is stable

# ----------------------------------------------------------------------------------------------------- tasks
#: options of the tight-binding baseline (``{'method': ..., 'options': {...}}`` in the hyperparameters)
# below this many atoms the GFN-xTB baseline runs a structure on one OpenMP thread (BASELINE option threads = 0):
# tblite's parallel regions cost more than they save on a few atoms, and on a loaded machine their barriers spin
XTB_SMALL_SYSTEM_ATOMS = 100
BASELINE = Schema(
    {
        'electronic_temperature': Option(300.0, 'K', low=0, low_open=True, help='Fermi smearing temperature'),
        'accuracy': Option(1.0, low=0, low_open=True, help='tblite numerical accuracy (smaller is tighter)'),
        'charge': Option(0, 'e', kind='integer', help='total charge of every structure'),
        'spin': Option(0, kind='integer', low=0, help='number of unpaired electrons (2S) of every structure'),
        'max_iterations': Option(250, kind='integer', low=1, help='SCC iterations before a structure fails'),
        'boundary': Option(
            'structure',
            kind='choice',
            choices=('structure', 'isolated'),
            help="'structure': each structure's own periodicity; 'isolated': every structure as a molecule without "
            'periodic images (no lattice sums and no stress), for molecules in vacuum boxes, where the images only '
            'add cost',
        ),
        'threads': Option(
            0,
            kind='integer',
            low=0,
            help='OpenMP threads of tblite per structure; 0: one thread for structures of fewer than '
            f"{XTB_SMALL_SYSTEM_ATOMS} atoms (threads cost more than they give there), torch's thread count above",
        ),
    },
    help='GFN-xTB baseline of a delta-learned potential (tblite)',
)
TRAIN = Schema(
    {
        'model': Option({}, kind='mapping', check=_model_problem, help='architecture and its hyperparameters'),
        'epochs': Option(300, kind='integer', low=1, help='maximum number of AdamW epochs'),
        'batch_size': Option(16, kind='integer', low=1, help='structures per mini-batch'),
        'learning_rate': Option(5e-3, low=0, low_open=True),
        'weight_decay': Option(1e-6, low=0),
        'energy_weight': Option(10.0, '1/(eV/atom)^2', low=0, help='weight of the per-atom energy error'),
        'forces_weight': Option(1.0, '1/(eV/Å)^2', low=0, help='weight of the force error'),
        'stress_weight': Option(
            1.0,
            '1/(eV/atom)^2',
            low=0,
            help='weight of the virial-per-atom error (V * stress / n_atoms [eV/atom]) of frames with stress; 0: off',
        ),
        'validation_fraction': Option(0.1, low=0, high=1, high_open=True),
        'patience': Option(60, kind='integer', low=1, help='epochs without improvement before stopping'),
        'lr_patience': Option(20, kind='integer', low=1, help='epochs without improvement before halving the rate'),
        'lr_factor': Option(0.5, low=0, low_open=True, high=1, high_open=True),
        'min_learning_rate': Option(1e-5, low=0, low_open=True),
        'polish_steps': Option(100, kind='integer', low=0, help='full-batch L-BFGS iterations after AdamW'),
        'precision': Option('float64', kind='choice', choices=('float64', 'model'), help='arithmetic of training'),
        'uncertainty': Option(
            'committee',
            kind='choice',
            choices=('committee', 'last_layer', 'both'),
            help='committee spread, a last-layer Bayesian variance of one model, or both (stored with the potential)',
        ),
        'statistics': Option(
            'auto',
            kind='choice',
            choices=('auto', 'refit', 'keep'),
            help='feature normalisation, energy scale and energy offsets: refit them to the data (a new model), or '
            'keep them and only shift the per-element offsets to the new labels (fine-tuning); auto: keep for a '
            'potential that was trained already',
        ),
        'replay_fraction': Option(
            0.0,
            low=0,
            help="frames of the replay set (the parent's data) mixed into every epoch, per new training frame, drawn "
            'afresh each epoch (the L-BFGS polish keeps one draw): rehearsal against forgetting when fine-tuning; '
            '0: the replay set is only scored',
        ),
        'max_time': Option(None, 's', low=0, low_open=True, nullable=True, help='walltime: checkpoint and stop'),
        'time_budget': Option(None, 's', low=0, low_open=True, nullable=True, help='for the whole training'),
        'checkpoint_every': Option(10, 'epochs', kind='integer', low=1),
        'seed': SEED,
        'device': DEVICE,
        'dtype': DTYPE,
    },
    checks=[_train_checks],
)


def _exchange_problem(value: Any, job: bool = False) -> str | None:
    """``{every: steps}`` (and, in a job file, ``pairs: [[i, j], ...]``) or None."""
    if value is None:
        return None
    allowed = ('every', 'pairs') if job else ('every',)
    if not isinstance(value, Mapping) or 'every' not in value:
        return f'must be a mapping with every (steps between exchange attempts), got {value!r}'
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        return f'unknown key {unknown[0]!r}{suggest(unknown[0], allowed)} (allowed: {", ".join(allowed)})'
    every = value['every']
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        return f'every must be an integer >= 1 (steps), got {every!r}'
    if job:
        pairs = value.get('pairs')
        ok = (
            isinstance(pairs, list | tuple)
            and pairs
            and all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(i, int) and i >= 0 for i in p)
                for p in pairs
            )
        )
        if not ok:
            return f'pairs must be a non-empty list of [i, j] replica indices, got {pairs!r}'
    return None


MD = Schema(
    {
        'ensemble': Option(
            'langevin', kind='choice', choices=('nve', 'langevin', 'npt'), help='npt: Langevin + cell rescaling'
        ),
        'timestep': Option(0.5, 'fs', low=0, low_open=True, high=MAX_TIMESTEP_FS),
        'steps': Option(1000, kind='integer', low=0),
        'temperature': Option(300.0, 'K', kind='any', check=_temperatures_problem, help='one value or one per replica'),
        'friction': Option(0.01, '1/fs', low=0, low_open=True),
        'pressure': Option(1.0, 'bar', help='npt: target pressure of the stochastic cell-rescaling barostat'),
        'compressibility': Option(
            4.5e-5, '1/bar', low=0, low_open=True, help='npt: compressibility guess, sets the volume relaxation rate'
        ),
        'tau_p': Option(1000.0, 'fs', low=0, low_open=True, help='npt: barostat relaxation time'),
        'barostat_mode': Option(
            'isotropic',
            kind='choice',
            choices=('isotropic', 'anisotropic'),
            help='npt: scale the volume only, or each Cartesian axis on its own (diagonal; no shear)',
        ),
        'stride': Option(10, 'steps', kind='integer', low=1),
        'seed': SEED,
        'device': DEVICE,
        'dtype': DTYPE,
        'max_force_deviation': Option(None, 'eV/Å', low=0, low_open=True, nullable=True),
        'min_distance': Option(0.5, 'Å', low=0, help='closer atoms stop a replica (blown up)'),
        'max_energy_jump': Option(1.0, 'eV/atom', low=0, low_open=True, help='between frames: a replica blew up'),
        'biases': Option([], kind='any', help='harmonic biases, one centre per replica'),
        'colvars': Option([], kind='any', help='extra CVs to record'),
        'exchange': Option(
            None,
            kind='any',
            nullable=True,
            check=lambda v: _exchange_problem(v, job=True),
            help='replica exchange: {every: steps, pairs: [[i, j], ...]}',
        ),
        'max_time': Option(None, 's', low=0, low_open=True, nullable=True),
        'checkpoint_every': Option(1000, 'steps', kind='integer', low=1),
        'steer_steps': Option(
            0, 'steps', kind='integer', low=0, help='pull each replica to its bias centre from its neighbour first'
        ),
    }
)

#: the MD options an umbrella window or an exploration replica takes from the MD schema
_WINDOW_MD = (
    'ensemble',
    'pressure',
    'compressibility',
    'tau_p',
    'barostat_mode',
    'timestep',
    'friction',
    'stride',
    'dtype',
    'device',
    'min_distance',
    'max_energy_jump',
)


def _windows_problem(windows: Any) -> str | None:
    if not isinstance(windows, Mapping):
        return f'must be a mapping with centers, or start, stop and count, got {windows!r}'
    unknown = sorted(set(windows) - {'centers', 'start', 'stop', 'count'})
    if unknown:
        return f'unknown key {unknown[0]!r}{suggest(unknown[0], ("centers", "start", "stop", "count"))}'
    if 'centers' in windows:
        if set(windows) & {'start', 'stop', 'count'}:
            return 'give either centers, or start, stop and count, not both'
        centers = windows['centers']
        if Option(None, kind='numbers')._numbers_problem(centers):
            return f'centers must be a list of numbers, got {centers!r}'
        if len(centers) < 2:
            return f'umbrella sampling needs at least 2 windows, got {len(centers)} centre(s)'
        if len(set(centers)) != len(centers):
            return f'centers must be distinct, got {centers!r}'
        return None
    if not {'start', 'stop', 'count'} <= set(windows):
        return f'needs start, stop and count (or centers), got {sorted(windows)}'
    for key in ('start', 'stop'):
        if Option(None)._number_problem(windows[key]):
            return f'{key} must be a number, got {windows[key]!r}'
    if Option(None, kind='integer', low=2)._number_problem(windows['count']):
        return f'count must be an integer >= 2, got {windows["count"]!r}'
    if windows['start'] == windows['stop']:
        return f'start and stop are equal ({windows["start"]}): the windows need a range'
    return None


UMBRELLA = Schema(
    {
        'windows': Option(
            None, 'CV file unit', kind='any', nullable=True, check=_windows_problem, help='centers or start/stop/count'
        ),
        'kappa': Option(
            None,
            'eV/Å^2 or eV/rad^2',
            low=0,
            low_open=True,
            nullable=True,
            help='force constant per internal CV unit squared; none: 3 kT / spacing^2 (neighbours overlap)',
        ),
        'windows2': Option(
            None,
            'CV file unit',
            kind='any',
            nullable=True,
            check=_windows_problem,
            help='windows along a second CV (cv2): a 2-D grid of windows; centers or start/stop/count',
        ),
        'kappa2': Option(
            None,
            'eV/Å^2 or eV/rad^2',
            low=0,
            low_open=True,
            nullable=True,
            help='force constant of the second CV; none: 3 kT / spacing^2',
        ),
        'temperature': Option(300.0, 'K', low=0, low_open=True),
        'equilibration_steps': Option(1000, kind='integer', low=0),
        'production_steps': Option(10000, kind='integer', low=1),
        'steer_steps': Option(200, 'steps', kind='integer', low=0, help='pull each window from its neighbour first'),
        **{key: MD[key] for key in _WINDOW_MD},
        'friction': Option(0.02, '1/fs', low=0, low_open=True),
        'seed': SEED,
        'mode': Option('batched', kind='choice', choices=('batched', 'parallel')),
        'exchange': Option(
            None,
            kind='any',
            nullable=True,
            check=_exchange_problem,
            help='replica exchange between neighbouring windows (REUS): {every: steps}; none: independent windows',
        ),
        'estimator': Option(
            'wham', kind='choice', choices=('wham', 'mbar'), help='WHAM (binned, numpy) or MBAR (pymbar, per sample)'
        ),
        'bins': Option(72, kind='integer', low=4),
        'bootstrap': Option(50, kind='integer', low=0),
        'min_overlap': Option(0.03, low=0, high=1),
        'max_refinements': Option(2, kind='integer', low=0),
        'max_reruns': Option(2, kind='integer', low=0),
    },
    checks=[
        lambda v: (
            [('exchange', "needs mode 'batched': windows exchange inside one batch")]
            if v['exchange'] is not None and v['mode'] != 'batched'
            else []
        )
    ],
)


def _per_cv_problem(value: Any, what: str) -> str | None:
    """None, a number, or a list of one or two numbers (one per CV)."""
    if value is None:
        return None
    values = value if isinstance(value, list | tuple) else [value]
    if not 1 <= len(values) <= 2 or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return f'must be a number or a list of one number per CV (1 or 2), got {value!r}'
    if any(v <= 0 for v in values):
        return f'{what} must be positive, got {value!r}'
    return None


def _ranges_problem(value: Any) -> str | None:
    """None, [lo, hi], or a list of [lo, hi] per CV."""
    if value is None:
        return None
    ranges = value if value and isinstance(value[0], list | tuple) else [value]
    for r in ranges:
        if (
            not isinstance(r, list | tuple)
            or len(r) != 2
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in r)
        ):
            return f'must be [lower, upper] or one [lower, upper] per CV, got {value!r}'
        if not r[0] < r[1]:
            return f'lower must be below upper, got {list(r)}'
    return None


METADYNAMICS = Schema(
    {
        'walkers': Option(8, kind='integer', low=1, help='walkers in one batch, all adding hills to one bias'),
        'height': Option(None, 'eV', low=0, low_open=True, nullable=True, help='initial hill height; none: kT / 2'),
        'width': Option(
            None,
            'CV file unit',
            kind='any',
            check=lambda v: _per_cv_problem(v, 'width'),
            help='Gaussian sigma per CV; none: 1/30 of the range (periodic: of the period)',
        ),
        'pace': Option(100, 'steps', kind='integer', low=1, help='steps between hills'),
        'bias_factor': Option(10.0, low=1, low_open=True, nullable=True, help='well-tempered gamma; none: plain'),
        'range': Option(
            None,
            'CV file unit',
            kind='any',
            check=_ranges_problem,
            help='[lower, upper] per CV: the grid (walls beyond it); needed for non-periodic CVs',
        ),
        'grid_spacing': Option(0.2, low=0, low_open=True, high=1, help='grid spacing as a fraction of the width'),
        'wall': Option(
            1.0,
            'kT / width^2',
            low=0,
            help='harmonic wall beyond the grid (3 widths past a non-periodic range); 0: none',
        ),
        'temperature': Option(300.0, 'K', low=0, low_open=True),
        'steps': Option(50000, kind='integer', low=1, help='steps per walker'),
        'discard_fraction': Option(0.2, low=0, high=1, high_open=True, help='of the frames, before reweighting'),
        'blocks': Option(5, kind='integer', low=2, help='blocks for the error of the reweighted free energy'),
        'bins': Option(72, kind='integer', low=4, help='histogram bins per CV of the reweighted free energy'),
        **{key: MD[key] for key in _WINDOW_MD},
        'friction': Option(0.02, '1/fs', low=0, low_open=True),
        'seed': SEED,
    }
)


def _trust_checks(values: dict) -> list[tuple[str, str]]:
    if values['trust_lower'] >= values['trust_upper']:
        return [('trust_lower', f'must be below trust_upper ({values["trust_lower"]} >= {values["trust_upper"]} eV/Å)')]
    return []


EXPLORE = Schema(
    {
        'temperatures': Option([300.0, 600.0], 'K', kind='numbers', low=0, low_open=True, nonempty=True),
        'replicas_per_temperature': Option(2, kind='integer', low=1),
        'steps': Option(2000, kind='integer', low=1),
        **{key: MD[key] for key in _WINDOW_MD},
        'friction': Option(0.02, '1/fs', low=0, low_open=True),
        'stride': Option(20, 'steps', kind='integer', low=1),
    }
)

ACTIVE_LEARNING = Schema(
    {
        'max_iterations': Option(5, kind='integer', low=1),
        'max_candidates': Option(16, kind='integer', low=1, help='labels per iteration'),
        'trust_lower': Option(0.10, 'eV/Å', low=0, low_open=True, help='below: a frame is accurate'),
        'trust_upper': Option(0.40, 'eV/Å', low=0, low_open=True, help='at or above: a frame has failed'),
        'stop_rule': Schema(
            {
                'accurate_fraction': Option(0.95, low=0, low_open=True, high=1),
                'consecutive': Option(2, kind='integer', low=1),
            }
        ),
        'max_failed_label_fraction': Option(0.25, low=0, high=1),
        'max_failed_exploration_fraction': Option(0.5, low=0, high=1),
        'committee': Option(4, kind='integer', low=2, help='members: at least 2 for an uncertainty'),
        'explore': EXPLORE,
        'umbrella_windows': Option(0, kind='integer', low=0, help='also explore in this many windows along the CV'),
        'metadynamics_walkers': Option(
            0,
            kind='integer',
            low=0,
            help='also explore with this many metadynamics walkers along the CV (bias from the metadynamics options)',
        ),
        'seed': SEED,
    },
    checks=[_trust_checks],
)

CONVERGENCE = Schema(
    {
        'barrier_error_kcal_mol': Option(
            0.3,
            'kcal/mol',
            low=0,
            low_open=True,
            help='at most this 95 % half-width (1.96 sigma: bootstrap (+) committee spread) for every named barrier',
        ),
        'untrusted_fraction': Option(
            0.10,
            low=0,
            high=1,
            help='at most this fraction of umbrella production frames with a calibrated deviation >= trust_upper',
        ),
        'pmf_change_kcal_mol': Option(
            0.3,
            'kcal/mol',
            low=0,
            low_open=True,
            help='RMS change of the PMF between the last two rounds (below the highest barrier top + 1 kcal/mol)',
        ),
        'label_budget': Option(
            None,
            'labels',
            kind='integer',
            low=1,
            nullable=True,
            help='pw.x labels in all (initial, active learning, refits; not the check); none: no limit',
        ),
        'max_rounds': Option(
            4, kind='integer', low=1, help='umbrella rounds at most (a refit before each after the first)'
        ),
        'trust_quantile': Option(
            0.9, low=0, low_open=True, high=1, help="a window is judged on this quantile of its frames' deviations"
        ),
        'cv_bins': Option(12, kind='integer', low=1, help='refit labels are spread over this many bins along the CV'),
        'max_sampling_factor': Option(
            4,
            kind='integer',
            low=1,
            help='production per window may double up to this multiple when the sampling error dominates a barrier',
        ),
    }
)


def _magnetization_problem(value: Mapping) -> str | None:
    """Problems of ``starting_magnetization``: chemical symbols mapped to numbers in [-1, 1]."""
    from ase.data import chemical_symbols

    for element, polarisation in value.items():
        if element not in chemical_symbols[1:]:
            return f'{element!r} is not a chemical element{suggest(element, chemical_symbols[1:])}'
        if isinstance(polarisation, bool) or not isinstance(polarisation, int | float) or not -1 <= polarisation <= 1:
            return f'{element}: must be a number in [-1, 1] (the starting spin polarisation), got {polarisation!r}'
    return None


def _spin_checks(values: dict) -> list[tuple[str, str]]:
    """Spin options that contradict each other (pw.x would stop, or silently run unpolarised)."""
    if values['nspin'] == 1:
        return [
            (key, f'needs nspin = 2 (spin-polarised), but nspin = 1; got {values[key]!r}')
            for key in ('starting_magnetization', 'tot_magnetization')
            if values[key] not in (None, {})
        ]
    if not values['starting_magnetization'] and values['tot_magnetization'] is None:
        return [('nspin', 'nspin = 2 needs starting_magnetization (per element) or tot_magnetization')]
    return []


LABEL = Schema(
    {
        'max_concurrent': Option(4, kind='integer', low=1, help='pw.x jobs running at once'),
        'max_failure_fraction': Option(0.1, low=0, high=1, help='of labels that may fail before the step fails'),
        'min_distance': Option(0.5, 'Å', low=0, help='closer atoms stop the step before any DFT'),
        'pseudo_family': Option('mlff/espresso-deb/PBE', kind='any', help='label of an aiida-pseudo family'),
        'conv_thr_per_atom': Option(1e-9, 'Ry/atom', low=0, low_open=True, help='SCF threshold per atom'),
        'tot_charge': Option(0.0, 'e', help='total charge of every structure (pw.x tot_charge): +1, one electron less'),
        'nspin': Option(1, kind='integer', low=1, high=2, help='1: spin-unpolarised, 2: spin-polarised (pw.x nspin)'),
        'starting_magnetization': Option(
            {},
            kind='mapping',
            check=_magnetization_problem,
            help='element -> starting spin polarisation in [-1, 1] (pw.x starting_magnetization; nspin 2)',
        ),
        'tot_magnetization': Option(
            None,
            'Bohr magneton',
            low=0,
            nullable=True,
            help='fixed n_up - n_down (pw.x tot_magnetization; nspin 2; needed with fixed occupations)',
        ),
        'kpoints_distance': Option(
            0.3,
            '1/Å',
            low=0,
            low_open=True,
            help='k-point spacing of periodic cells (the mesh of PwBaseWorkChain, 2 pi/a per 1/Å along a lattice '
            'vector of length a); molecules in boxes use the Gamma point. 2.0 gives the Gamma point (1x1x1) for '
            'every cell vector of 3.2 Å and longer, as usual for liquid boxes',
        ),
        'molecule_vacuum': Option(
            5.0,
            'Å',
            low=0,
            low_open=True,
            help='periodic structures with this much vacuum in every periodic direction are molecules in a box: '
            'Gamma point and no stress',
        ),
    },
    checks=[_spin_checks],
)
